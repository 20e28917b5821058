"""LangChain's standard chat-model unit suite on ChatFSLM (a tiny random GPT-NeoX stack), plus the
structured-output path through the last stage's parser."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from langchain_fslm import ChatFSLM, FSLMChain, KeyPoints, StageOutputError, StageSpec
from langchain_fslm.engine.base import Generation
from langchain_fslm.roles import four_stage_specs


@pytest.fixture(scope="module")
def tiny_stack(tiny_engine) -> FSLMChain:
    return FSLMChain.from_specs(four_stage_specs(max_new_tokens=6), engine=tiny_engine)


class TestChatFSLMUnit(ChatModelUnitTests):
    """The standard suite, with tool calling (``bind_tools``) and ``with_structured_output``."""

    @pytest.fixture(autouse=True)
    def _stack(self, tiny_stack) -> None:
        type(self).stack = tiny_stack

    @property
    def chat_model_class(self) -> type[ChatFSLM]:
        return ChatFSLM

    @property
    def chat_model_params(self) -> dict:
        return {"stack": type(self).stack}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True


class JsonEngine:
    """Plumbing double: answers every request with fixed texts in turn (to drive the JSON parser path)."""

    def __init__(self, texts: list[str]):
        self.texts, self.prompts = list(texts), []

    def generate(self, requests):
        out = []
        for r in requests:
            self.prompts.append(r.prompt)
            out.append(Generation(text=self.texts.pop(0), prompt_tokens=3, completion_tokens=5))
        return out

    def stream(self, request):
        yield from self.generate([request])[0].text

    def render(self, prompt, system=None):
        return prompt

    def count_tokens(self, text):  # a scripted engine counts words
        return len(text.split())

    def has_adapter(self, name):
        return False


class Joke(BaseModel):
    setup: str
    punchline: str


def one_stage(engine) -> FSLMChain:
    spec = StageSpec(name="answer", prompt="Request: {input}", output_type="answer")
    return FSLMChain.from_specs([spec], engine=engine)


def test_standard_params_and_ls_stop(tiny_stack):
    chat = ChatFSLM(stack=tiny_stack, temperature=0.3, max_tokens=7, stop=["END"])
    params = chat._get_ls_params(stop=["X"])
    assert params["ls_provider"] == "fslm" and params["ls_model_type"] == "chat"
    assert (params["ls_temperature"], params["ls_max_tokens"], params["ls_stop"]) == (0.3, 7, ["END", "X"])
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"


def test_max_tokens_and_usage_reach_the_last_stage(tiny_stack):
    chat = ChatFSLM(stack=tiny_stack, max_tokens=3)
    reply = chat.invoke("Why is the sky blue?")
    usage = reply.usage_metadata
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert reply.response_metadata["stages"] == ["intent", "key_points", "draft", "answer"]


def test_streaming_reports_usage_of_every_stage(tiny_stack):
    chat = ChatFSLM(stack=tiny_stack, max_tokens=4)
    chunks = list(chat.stream("Why is the sky blue?"))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.content == chat.invoke("Why is the sky blue?").content
    assert full.usage_metadata["output_tokens"] > 0
    # four stages' prompts: the streamed last stage's prompt is counted too
    assert (
        full.usage_metadata["input_tokens"]
        == chat.invoke("Why is the sky blue?").usage_metadata["input_tokens"]
    )


def test_structured_output_with_a_stage_type_uses_the_stage_parser(tiny_stack):
    # a random model under the key_points constraint finishes two to four bullets within this budget
    result = ChatFSLM(stack=tiny_stack, max_tokens=150).with_structured_output(KeyPoints).invoke("Sky?")
    assert isinstance(result, KeyPoints) and result.points


def test_structured_output_pydantic_parses_json_and_retries(tmp_path):
    engine = JsonEngine(["no json here", '{"setup": "Why?", "punchline": "Because."}'])
    chat = ChatFSLM(stack=one_stage(engine))
    result = chat.with_structured_output(Joke).invoke("Tell me a joke")
    assert result == Joke(setup="Why?", punchline="Because.")
    assert len(engine.prompts) == 2  # the first reply did not parse: the stage regenerated
    assert '"setup": <string>' in engine.prompts[0]


def test_structured_output_include_raw_and_failure():
    engine = JsonEngine(['```json\n{"setup": "A", "punchline": "B"}\n```'])
    out = ChatFSLM(stack=one_stage(engine)).with_structured_output(Joke.model_json_schema(), include_raw=True)
    result = out.invoke("joke")
    assert isinstance(result["raw"], AIMessage) and result["parsing_error"] is None
    assert result["parsed"] == {"setup": "A", "punchline": "B"}
    bad = ChatFSLM(stack=one_stage(JsonEngine(["nope", "still nope"]))).with_structured_output(Joke)
    with pytest.raises(StageOutputError, match="answer") as failure:
        bad.invoke("joke")
    assert str(failure.value).count("For troubleshooting") == 1  # LangChain's link once, not twice
    engine = JsonEngine(["nope", "still nope"])
    raw = ChatFSLM(stack=one_stage(engine)).with_structured_output(Joke, include_raw=True)
    result = raw.invoke("joke")  # LangChain's contract: the error is returned, not raised
    assert len(engine.prompts) == 2  # the stage still regenerated once before giving up
    assert result["raw"].content == "still nope" and result["parsed"] is None
    assert isinstance(result["parsing_error"], Exception)


def test_json_mode_without_schema():
    engine = JsonEngine([json.dumps({"a": 1})])
    assert ChatFSLM(stack=one_stage(engine)).with_structured_output(method="json_mode").invoke("x") == {
        "a": 1
    }


def test_bad_structured_arguments_are_named(tiny_stack):
    chat = ChatFSLM(stack=tiny_stack)
    with pytest.raises(ValueError, match="method"):
        chat.with_structured_output(Joke, method="telepathy")
    with pytest.raises(ValueError, match="schema"):
        chat.with_structured_output()
