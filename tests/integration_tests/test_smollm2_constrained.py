"""Structured output and a tool call on the real default stack (SmolLM2-135M-Instruct), under constraints.

Skipped until the local engine constrains decoding (``capabilities().constrained``): unconstrained, the
zero-shot 135M model writes prose instead of JSON.
"""

from __future__ import annotations

import pytest
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_fslm import ChatFSLM, FSLMChain

pytestmark = pytest.mark.slow


class Person(BaseModel):
    name: str
    age: int


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return "sunny"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_structured_output_and_a_tool_call_are_valid_on_the_135m_stack(smollm2_engine):
    if not smollm2_engine.capabilities().constrained:
        pytest.skip("the local engine does not constrain decoding yet (capabilities().constrained is False)")
    stack = FSLMChain.default(max_new_tokens=4).with_generation(max_new_tokens=40)
    person = stack.with_structured_output(Person).invoke("Ada Lovelace is 36 years old.")
    assert isinstance(person, Person) and person.name.strip()  # valid by construction, whatever the values

    chat = ChatFSLM(stack=stack, max_tokens=40).bind_tools([get_weather, add], tool_choice="any")
    reply = chat.invoke("What is the weather in Paris?")
    assert reply.content == "" and len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert call["name"] in {"get_weather", "add"} and call["id"].startswith("call_")
    tools = {"get_weather": get_weather, "add": add}
    tools[call["name"]].args_schema.model_validate(call["args"])  # the arguments fit the tool's schema
