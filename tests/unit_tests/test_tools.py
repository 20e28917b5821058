"""ChatFSLM.bind_tools: the tools reach the last stage, the reply is constrained to a call, parsed into
``AIMessage.tool_calls``; tool histories render (a scripted engine that says it constrains decoding)."""

from __future__ import annotations

import json
import re

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_fslm import ChatFSLM, FSLMChain, StageOutputError, StageSpec
from langchain_fslm.errors import ConstraintError
from langchain_fslm.schemas import check_text
from tests.unit_tests.fake_engines import ConstrainedFake


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return "sunny"


ADD_CALL = '{"name": "add", "arguments": {"a": 2, "b": 3}}'


def chat_of(engine, stages: int = 1) -> ChatFSLM:
    specs = [StageSpec(name=f"s{i}", prompt="Request: {input}") for i in range(stages - 1)]
    specs.append(StageSpec(name="answer", prompt="Request: {input}", output_type="answer"))
    return ChatFSLM(stack=FSLMChain.from_specs(specs, engine=engine))


def test_a_forced_call_is_constrained_and_parsed():
    engine = ConstrainedFake(["an intent", ADD_CALL])
    reply = chat_of(engine, stages=2).bind_tools([add, get_weather], tool_choice="any").invoke("2 + 3?")
    assert reply.content == "" and len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert (call["name"], call["args"], call["type"]) == ("add", {"a": 2, "b": 3}, "tool_call")
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert reply.response_metadata["stages"] == ["s0", "answer"]
    first, last = engine.requests
    assert first.constraint is None and "add" not in (first.system or "")
    schema = last.constraint.json_schema()
    assert last.constraint.kind == "json_schema"
    assert [b["properties"]["name"]["const"] for b in schema["anyOf"]] == ["add", "get_weather"]
    assert list(schema["anyOf"][0]["properties"]["arguments"]["properties"]) == ["a", "b"]
    assert schema["anyOf"][0]["properties"]["arguments"]["additionalProperties"] is False
    assert '- add: Add two integers. Arguments: {"a": <integer>, "b": <integer>}' in last.system
    assert "Reply with a tool call." in last.system


def test_required_and_true_mean_any_and_a_name_allows_only_that_tool():
    for choice in ("required", True, {"type": "function", "function": {"name": "get_weather"}}):
        engine = ConstrainedFake(['{"name": "get_weather", "arguments": {"city": "Paris"}}'])
        reply = chat_of(engine).bind_tools([add, get_weather], tool_choice=choice).invoke("weather?")
        assert reply.tool_calls[0]["args"] == {"city": "Paris"}
    engine = ConstrainedFake(['{"name": "get_weather", "arguments": {"city": "Oslo"}}'])
    chat = chat_of(engine).bind_tools([add, get_weather], tool_choice="get_weather")
    assert chat.invoke("weather in Oslo?").tool_calls[0]["name"] == "get_weather"
    constraint = engine.last.constraint
    assert constraint.json_schema()["properties"]["name"] == {"const": "get_weather"}
    with pytest.raises(ValueError, match="does not match"):
        check_text(constraint, ADD_CALL)  # the grammar allows only the named tool


def test_auto_is_a_grammar_of_text_or_a_call():
    engine = ConstrainedFake(["It is 5."])
    reply = chat_of(engine).bind_tools([add]).invoke("2 + 3?")
    assert reply.content == "It is 5." and reply.tool_calls == []
    constraint = engine.last.constraint
    assert constraint.kind == "lark" and "%json" in constraint.value
    check_text(constraint, "It is 5.")
    check_text(constraint, ADD_CALL)
    with pytest.raises(ValueError, match="does not match"):
        check_text(constraint, '{"name": "sub", "arguments": {}}')
    engine = ConstrainedFake([ADD_CALL])
    assert (
        chat_of(engine).bind_tools([add], tool_choice="auto").invoke("2 + 3?").tool_calls[0]["name"] == "add"
    )


def test_none_is_plain_text_without_the_tools():
    engine = ConstrainedFake(["Five."])
    reply = chat_of(engine).bind_tools([add], tool_choice="none").invoke("2 + 3?")
    assert reply.content == "Five." and not reply.tool_calls
    assert engine.last.constraint is None and engine.last.system is None


def test_a_cut_off_or_wrong_call_is_an_error_not_a_call():
    engine = ConstrainedFake(['{"name": "add", "arguments": {"a": 2'])
    with pytest.raises(StageOutputError, match="unfinished"):
        chat_of(engine).bind_tools([add], tool_choice="any").invoke("2 + 3?")
    engine = ConstrainedFake(['{"name": "sub", "arguments": {}}'])
    with pytest.raises(StageOutputError, match="unknown tool 'sub'"):
        chat_of(engine).bind_tools([add], tool_choice="any").invoke("x")
    engine = ConstrainedFake(["just text"])
    with pytest.raises(StageOutputError, match="expected a tool call"):
        chat_of(engine).bind_tools([add], tool_choice="add").invoke("x")


def test_streaming_a_call_gives_one_chunk_with_the_call():
    engine = ConstrainedFake([ADD_CALL])
    chunks = list(chat_of(engine).bind_tools([add], tool_choice="any").stream("2 + 3?"))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert full.tool_calls[0]["name"] == "add" and full.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert full.usage_metadata["output_tokens"] > 0


async def test_async_invoke_and_stream():
    engine = ConstrainedFake([ADD_CALL])
    chat = chat_of(engine).bind_tools([add], tool_choice="any")
    assert (await chat.ainvoke("2 + 3?")).tool_calls[0]["args"] == {"a": 2, "b": 3}
    chunks = [c async for c in chat.astream("2 + 3?")]
    assert chunks[-1].tool_call_chunks[0]["name"] == "add"


def test_tool_history_renders_into_the_transcript():
    engine = ConstrainedFake(["The sum is 5."])
    history = [
        HumanMessage("What is 2 + 3?"),
        AIMessage(
            [
                {"type": "text", "text": "Let me add."},
                {"type": "tool_use", "id": "c1", "name": "add", "input": {}},
            ],
            tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1", "type": "tool_call"}],
        ),
        ToolMessage("5", tool_call_id="c1", name="add"),
        ToolMessage("boom", tool_call_id="c2", name="add", status="error"),
    ]
    reply = chat_of(engine).bind_tools([add]).invoke(history)
    assert reply.content == "The sum is 5."
    prompt = engine.last.prompt
    assert "Human: What is 2 + 3?" in prompt
    assert f"AI: Let me add.\n{ADD_CALL}" in prompt
    assert "Tool result (add): 5" in prompt and "Tool error (add): boom" in prompt


def test_pydantic_and_dict_tools_and_no_argument_tools():
    class Lookup(BaseModel):
        """Look a word up."""

        word: str

    @tool
    def now() -> str:
        """The time."""
        return "noon"

    raw = {"name": "ping", "description": "Ping.", "parameters": {"type": "object", "properties": {}}}
    engine = ConstrainedFake(['{"name": "now", "arguments": {}}'])
    reply = chat_of(engine).bind_tools([Lookup, raw, now], tool_choice="now").invoke("time?")
    assert reply.tool_calls[0]["args"] == {}
    assert '- Lookup: Look a word up. Arguments: {"word": <string>}' in engine.last.system


def test_bad_tools_and_choices_are_named_before_generation():
    engine = ConstrainedFake(["x"])
    chat = chat_of(engine)
    with pytest.raises(ConstraintError, match="'broken' has no argument schema"):
        chat.bind_tools([{"name": "broken", "description": "no parameters"}])
    with pytest.raises(ValueError, match="tool_choice 'multiply'"):
        chat.bind_tools([add], tool_choice="multiply")
    assert chat.bind_tools([add, add]).kwargs["tool_choice"] == "auto"  # the same tool twice counts once
    other_add = {"name": "add", "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}
    with pytest.raises(ValueError, match="distinct names"):
        chat.bind_tools([add, other_add])
    odd = {"name": "odd", "parameters": {"type": "object", "if": {}}}
    with pytest.raises(ConstraintError, match="Unimplemented keys"):
        chat.bind_tools([odd])

    class Tree(BaseModel):
        """A tree."""

        kids: list[Tree] = []

    with pytest.raises(ConstraintError, match="recursive"):
        chat.bind_tools([{"name": "grow", "parameters": Tree.model_json_schema()}])
    assert engine.requests == []


def test_bound_tools_reach_the_call_as_openai_tools():
    bound = chat_of(ConstrainedFake(["x"])).bind_tools([add], tool_choice="required")
    assert bound.kwargs["tool_choice"] == "any"
    assert bound.kwargs["tools"][0]["function"]["name"] == "add"
    assert json.loads(json.dumps(bound.kwargs["tools"]))  # plain data, as LangGraph inspects it


def test_the_example_agent_runs_a_tool_call_through_langgraph():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "agent.py"
    spec = importlib.util.spec_from_file_location("example_agent", path)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)

    def reply(request):
        if "Tool result (get_weather): sunny" in request.prompt:
            return "It is sunny, 21 °C in Paris."
        return '{"name": "get_weather", "arguments": {"city": "Paris"}}'

    engine = ConstrainedFake(reply)
    specs = [StageSpec(name="answer", prompt="Request: {input}", output_type="answer")]
    graph = agent.build_agent(stack=FSLMChain.from_specs(specs, engine=engine))
    messages = graph.invoke({"messages": [("user", "Weather in Paris?")]})["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"]
    assert messages[1].tool_calls[0]["args"] == {"city": "Paris"}
    assert (
        messages[2].content == "sunny, 21 °C" and messages[2].tool_call_id == messages[1].tool_calls[0]["id"]
    )
    assert messages[3].content == "It is sunny, 21 °C in Paris."
    assert engine.requests[0].constraint.kind == "json_schema"  # the first turn must call (tool_choice any)
    assert engine.requests[1].constraint is None  # after the result: plain text
