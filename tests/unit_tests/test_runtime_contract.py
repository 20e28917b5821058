"""LangChain runtime contract: early-closed streams, per-call kwargs, structured-output schema checks."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from typing_extensions import TypedDict

from langchain_fslm import ChatFSLM, FSLMChain, StageOutputError, StageSpec
from langchain_fslm.engine.base import Generation
from langchain_fslm.roles import four_stage_specs


@pytest.fixture()
def stack(tiny_engine) -> FSLMChain:
    return FSLMChain.from_specs(four_stage_specs(max_new_tokens=6), engine=tiny_engine)


async def test_astream_closed_early_releases_the_engine(stack):
    stream = stack.astream("Why is the sky blue?")
    async for _ in stream:
        break
    await stream.aclose()
    # the engine lock must not be left held by the stream's worker thread
    assert await asyncio.wait_for(stack.ainvoke("Why is the sky blue?"), 60)
    assert await asyncio.wait_for(asyncio.to_thread(stack.invoke, "Why is the sky blue?"), 60)


def test_stop_per_call_like_an_llm(stack):
    full = stack.invoke("Why is the sky blue?")
    word = full.split()[1]
    cut = stack.invoke("Why is the sky blue?", stop=[word])
    assert word not in cut and full.startswith(cut)
    assert stack.bind(stop=[word]).invoke("Why is the sky blue?") == cut
    with pytest.raises(TypeError, match="temperature"):
        stack.invoke("Why is the sky blue?", temperature=0.5)


def test_chat_refuses_n_and_unknown_kwargs(stack):
    chat = ChatFSLM(stack=stack)
    with pytest.raises(ValueError, match="n=2"):
        chat.invoke("hi", n=2)
    with pytest.raises(TypeError, match="foo"):
        chat.invoke("hi", foo=1)
    for bad in ({"max_tokens": 0}, {"temperature": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ChatFSLM(stack=stack, **bad)


class _Engine:
    def __init__(self, texts):
        self.texts = list(texts)

    def generate(self, requests):
        return [Generation(text=self.texts.pop(0)) for _ in requests]

    def stream(self, request):
        yield self.texts.pop(0)

    def render(self, prompt, system=None):
        return prompt

    def count_tokens(self, text):  # a scripted engine counts words
        return len(text.split())

    def has_adapter(self, name):
        return False


class Joke(TypedDict):
    setup: str
    punchline: str


JOKE_SCHEMA = {
    "title": "joke",
    "type": "object",
    "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
    "required": ["setup", "punchline"],
}


@pytest.mark.parametrize("schema", [Joke, JOKE_SCHEMA])
def test_structured_typeddict_and_json_schema_are_checked(schema):
    spec = StageSpec(name="answer", prompt="{input}", output_type="answer")
    chat = ChatFSLM(stack=FSLMChain.from_specs([spec], engine=_Engine(['{"foo": 1}', "42"])))
    with pytest.raises(StageOutputError, match="does not fit|schema"):
        chat.with_structured_output(schema).invoke("joke")


def test_engine_call_between_stream_chunks_does_not_corrupt_the_stream(tiny_engine, tiny_adapters):
    specs = [
        spec.model_copy(update={"adapter": str(tiny_adapters[name])})
        for spec, name in zip(four_stage_specs(max_new_tokens=16), "abcd", strict=True)
    ]
    stack = FSLMChain.from_specs(specs, engine=tiny_engine)
    reference, other = stack.invoke("Why is the sky blue?"), stack.invoke("Tell me about cats.")
    pieces, nested = [], []
    for piece in stack.stream("Why is the sky blue?"):
        pieces.append(piece)
        if len(nested) < 2:  # same thread, while the stream's generate may still be running
            nested.append(stack.invoke("Tell me about cats."))
    assert "".join(pieces) == reference
    assert nested == [other] * len(nested)


class _Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.chat_run = None
        self.parents: list = []
        self.tokens = 0

    def on_llm_new_token(self, token, **kwargs):
        self.tokens += 1

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
        if parent_run_id is None:  # the chat model's own run (each stage's SmallLM runs are nested)
            self.chat_run = run_id

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self.parents.append(parent_run_id)


@pytest.mark.parametrize("mode", ["stream", "astream", "streaming=True invoke", "streaming=True ainvoke"])
def test_a_streamed_chat_reply_keeps_the_stage_runs_and_handoffs(stack, mode):
    """langchain-core calls _stream without the run's manager: the stack's runs must still reach the
    call's callbacks, as children of the chat-model run."""
    from langchain_fslm import HandoffLogger

    runs, handoffs = _Runs(), HandoffLogger()
    config = {"callbacks": [runs, handoffs]}
    # (an explicit streaming=False would make stream() fall back to invoke)
    chat = ChatFSLM(stack=stack, **({"streaming": True} if mode.startswith("streaming") else {}))
    if mode == "stream":
        text = "".join(str(c.content) for c in chat.stream("Why?", config))
    elif mode == "astream":

        async def collect() -> str:
            return "".join([str(c.content) async for c in chat.astream("Why?", config)])

        text = asyncio.run(collect())
    elif mode.endswith(" invoke"):
        text = str(chat.invoke("Why?", config).content)
    else:
        text = str(asyncio.run(chat.ainvoke("Why?", config)).content)
    assert text == stack.invoke("Why?")
    assert len(handoffs.records) == len(stack.stages)
    assert runs.tokens > 1  # it really streamed
    assert runs.chat_run is not None and runs.chat_run in runs.parents


class _PieceEngine(_Engine):
    """Streams its reply a few characters at a time, as a tokenizer's pieces come."""

    def __init__(self, texts, size):
        super().__init__(texts)
        self.size = size

    def stream(self, request):
        text = self.texts.pop(0)
        for start in range(0, len(text), self.size):
            yield text[start : start + self.size]


@pytest.mark.parametrize("size", [1, 3, 100])
@pytest.mark.parametrize(
    "reply",
    [
        "Answer: Paris is the capital.\n\n",
        "  Final answer:\n Paris",
        "Answering is hard ",
        "Answer is 5",
        "Paris\n\nMore text.  ",
        "Draft:Paris",
    ],
)
def test_a_streamed_free_text_answer_adds_up_to_the_invoked_one(reply, size):
    spec = StageSpec(name="answer", prompt="{input}", output_type="answer")
    stack = FSLMChain.from_specs([spec], engine=_PieceEngine([reply, reply], size))
    pieces = list(stack.stream("q"))
    assert "".join(pieces) == stack.invoke("q")
    assert all(pieces)  # no empty chunks


def test_a_stage_astream_is_a_traced_run_like_stream(stack):
    stage = stack.stages[0]
    for mode in ("stream", "astream"):
        runs = _Runs()
        if mode == "stream":
            text = "".join(stage.stream("Why?", {"callbacks": [runs]}))
        else:

            async def collect(runs: _Runs = runs) -> str:
                return "".join([p async for p in stage.astream("Why?", {"callbacks": [runs]})])

            text = asyncio.run(collect())
        # one root run, the stage's own (its prompt, model and parser runs are inside it)
        assert text and runs.parents[0] is None and None not in runs.parents[1:], mode
