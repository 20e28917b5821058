"""Core behaviour of stages and stacks on a tiny random GPT-NeoX with the real Pythia tokenizer."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, FunctionMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_fslm import (
    ChatFSLM,
    FSLMChain,
    GenerationConfig,
    HandoffLogger,
    InvalidInputError,
    KeyPoints,
    ManifestError,
    SLMRunnable,
    StackOutput,
    StageOutputError,
    StageSpec,
)
from langchain_fslm.roles import four_stage_specs

HANDOFF_FIELDS = {
    "from_stage",
    "to_stage",
    "text",
    "raw",
    "parsed",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
}


def tiny_specs(n_tokens: int = 6) -> list[StageSpec]:
    return four_stage_specs(max_new_tokens=n_tokens)  # the longest built-in layout: every handoff kind


@pytest.fixture()
def stack(tiny_engine) -> FSLMChain:
    return FSLMChain.from_specs(tiny_specs(), engine=tiny_engine)


class CountingEngine:
    """Wraps an engine and counts generate calls (to prove batching is one call)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, requests):
        self.calls.append(len(requests))
        return self.inner.generate(requests)

    def stream(self, request):
        return self.inner.stream(request)

    def has_adapter(self, name):
        return self.inner.has_adapter(name)

    def render(self, prompt, system=None):
        return self.inner.render(prompt, system)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)


def test_stage_invoke_keeps_raw_and_typed_value(tiny_engine):
    stage = SLMRunnable(
        name="intent",
        prompt="Request: {input}",
        engine=tiny_engine,
        generation=GenerationConfig(max_new_tokens=5),
    )
    result = stage.invoke("Why is the sky blue?")
    assert result.stage == "intent"
    assert result.value is not None and result.value.as_text() == result.raw.strip()
    assert 0 < result.completion_tokens <= 5
    assert "Request:" not in result.raw  # the prompt is not echoed
    assert result.prompt_tokens == tiny_engine.count_tokens("Request: Why is the sky blue?")


def test_stage_batch_is_batched_by_the_engine_and_equals_invokes(tiny_engine):
    """LangChain's batch calls the stage from several threads; the local engine's micro-batcher
    merges their greedy requests into fewer forward passes than rows."""
    stage = SLMRunnable(
        name="s", prompt="Q: {input}", engine=tiny_engine, generation=GenerationConfig(max_new_tokens=6)
    )
    prompts = ["one", "a longer prompt here", "three words now", "x"]
    before = tiny_engine.batcher.calls
    batched = stage.batch(prompts)
    assert tiny_engine.batcher.calls - before < len(prompts)
    singles = [stage.invoke(p) for p in prompts]
    assert [r.raw for r in batched] == [r.raw for r in singles]


def test_stage_missing_field_names_stage_and_field(tiny_engine):
    stage = SLMRunnable(name="draft", prompt="{input} {key_points}", engine=tiny_engine)
    with pytest.raises(InvalidInputError, match=r"'draft'.*key_points"):
        stage.invoke({"input": "hi"})


def test_multi_token_stop_is_honoured(tiny_engine):
    free = SLMRunnable(
        name="s", prompt="{input}", engine=tiny_engine, generation=GenerationConfig(max_new_tokens=12)
    )
    text = free.invoke("The weather today").raw
    words = text.split()
    assert len(words) >= 3, text
    stop = " ".join(words[1:3])  # a stop sequence spanning several tokens
    stopped = free.model_copy(update={"generation": GenerationConfig(max_new_tokens=12, stop=[stop])})
    result = stopped.invoke("The weather today")
    assert stop not in result.raw
    assert text.startswith(result.raw.rstrip())
    assert result.completion_tokens < 12


class ScriptedEngine:
    """Plumbing fake: returns scripted texts in order (tests the parse-failure policy only)."""

    def __init__(self, texts):
        self.texts, self.requests = list(texts), []

    def generate(self, requests):
        from langchain_fslm import Generation

        self.requests.extend(requests)
        return [Generation(text=self.texts.pop(0), completion_tokens=1) for _ in requests]

    def stream(self, request):
        yield self.texts.pop(0)

    def render(self, prompt, system=None):
        return prompt

    def count_tokens(self, text):  # a scripted engine counts words
        return len(text.split())

    def has_adapter(self, name):
        return True


def test_parse_failure_retries_then_raises_with_raw_text():
    engine = ScriptedEngine(["   ", "\n"])
    stage = SLMRunnable(name="kp", prompt="{input}", output_type=KeyPoints, engine=engine, parse_retries=1)
    with pytest.raises(StageOutputError, match="'kp'") as err:
        stage.invoke("x")
    assert err.value.raw == "\n"
    assert len(engine.requests) == 2
    assert engine.requests[1].config.temperature > 0  # the retry samples


def test_parse_failure_retry_can_succeed():
    engine = ScriptedEngine(["", "- sun\n- air"])
    result = SLMRunnable(name="kp", prompt="{input}", output_type=KeyPoints, engine=engine).invoke("x")
    assert result.value == KeyPoints(points=["sun", "air"]) and result.attempts == 2


def test_parse_failure_pass_raw_flags_the_handoff():
    engine = ScriptedEngine([" ", "fine answer"])
    specs = [
        StageSpec(
            name="kp", prompt="{input}", output_type="key_points", parse_retries=0, on_parse_error="pass_raw"
        ),
        StageSpec(name="answer", prompt="{input} {kp}"),
    ]
    logger = HandoffLogger()
    out = FSLMChain.from_specs(specs, engine=engine).invoke("x", config={"callbacks": [logger]})
    assert out == "fine answer"
    assert logger.records[0]["parse_error"] and logger.records[0]["parsed"] is None
    assert logger.records[1]["parse_error"] is None


def test_stack_invoke_returns_str_and_logs_handoffs(stack, tmp_path):
    path = tmp_path / "handoffs.jsonl"
    logger = HandoffLogger(path)
    chain = ChatPromptTemplate.from_template("Answer briefly: {question}") | stack | StrOutputParser()
    answer = chain.invoke({"question": "Why is the sky blue?"}, config={"callbacks": [logger]})
    assert isinstance(answer, str) and answer
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["from_stage"], r["to_stage"]) for r in lines] == [
        ("intent", "key_points"),
        ("key_points", "draft"),
        ("draft", "answer"),
        ("answer", "output"),
    ]
    for record in lines:
        assert HANDOFF_FIELDS <= set(record)
    assert lines[-1]["text"] == answer


def test_include_handoffs_returns_every_stage(stack):
    out = stack.with_handoffs().invoke("Name three colours.")
    assert isinstance(out, StackOutput)
    assert list(out.stages) == ["intent", "key_points", "draft", "answer"]
    assert isinstance(out.stages["key_points"], KeyPoints | str)
    assert out.output == out.results[-1].text
    assert out.usage["output_tokens"] > 0


def test_handoffs_reach_the_next_prompt(tiny_engine):
    counting = CountingEngine(tiny_engine)
    seen = []
    original = counting.generate

    def spy(requests):
        seen.extend(r.prompt for r in requests)
        return original(requests)

    counting.generate = spy
    stack = FSLMChain.from_specs(tiny_specs(), engine=counting)
    out = stack.with_handoffs().invoke("Hello there")
    assert out.results[0].text in seen[1]  # intent text is inside the key_points prompt


def test_batch_is_one_generate_per_stage_and_equals_invokes(tiny_engine):
    counting = CountingEngine(tiny_engine)
    stack = FSLMChain.from_specs(tiny_specs(), engine=counting)
    prompts = ["Why is the sky blue?", "Give me a tip.", "What is 2+2?", "Name a fruit."]
    before = tiny_engine.batcher.calls
    batched = stack.batch(prompts)
    assert len(counting.calls) == 4 * len(prompts)  # one request per row and stage, from threads
    assert tiny_engine.batcher.calls - before < len(counting.calls)  # merged by the engine
    assert batched == [stack.invoke(p) for p in prompts]


async def test_async_and_stream_match_invoke(stack):
    expected = stack.invoke("Tell me a fact.")
    assert await stack.ainvoke("Tell me a fact.") == expected
    assert "".join(stack.stream("Tell me a fact.")) == expected
    assert "".join([c async for c in stack.astream("Tell me a fact.")]) == expected
    assert await stack.abatch(["Tell me a fact."]) == [expected]


async def test_handoffs_in_astream_events(stack):
    events = [e async for e in stack.astream_events("Hi", version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == ["fslm_handoff"] * 4
    assert custom[0]["data"]["from_stage"] == "intent"
    names = {e["name"] for e in events if e["event"] == "on_chain_start"}
    assert {"intent", "key_points", "draft", "answer"} <= names


@pytest.mark.parametrize(
    "value",
    [
        [HumanMessage("Why?")],
        [SystemMessage("Be brief."), HumanMessage("Why?"), AIMessage("Because."), HumanMessage("Why?")],
        ChatPromptTemplate.from_template("{q}").invoke({"q": "Why?"}),
        {"input": "Why?"},
    ],
)
def test_accepts_what_an_llm_accepts(stack, value):
    assert isinstance(stack.invoke(value), str)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("bad \ud800 surrogate", "surrogate"),
        (42, "int"),
        ([FunctionMessage("x", name="f")], "function"),
        ({"question": "x"}, "'input' key"),
    ],
)
def test_bad_input_is_refused_clearly(stack, value, match):
    with pytest.raises(InvalidInputError, match=match):
        stack.invoke(value)


def test_save_and_load_round_trip_with_adapters(tiny_engine, tiny_adapters, tmp_path):
    specs = tiny_specs()
    for spec, name in zip(specs, ["a", "b", "c", "d"], strict=True):
        spec.adapter = name
    root = tiny_adapters["a"].parent
    stack = FSLMChain.from_specs(specs, engine=tiny_engine, adapter_root=root)
    zero_shot = FSLMChain.from_specs(tiny_specs(), engine=tiny_engine)
    prompt = "Give three tips for staying healthy."
    answer = stack.invoke(prompt)
    assert answer != zero_shot.invoke(prompt)  # the adapters change what the stages write

    folder = stack.save_pretrained(tmp_path / "my-stack")
    manifest = json.loads((folder / "fslm_stack.json").read_text())
    assert manifest["format_version"] == 1
    assert [s["adapter"] for s in manifest["stages"]] == [
        f"adapters/{n}" for n in ["intent", "key_points", "draft", "answer"]
    ]
    assert (folder / "adapters/intent/adapter_model.safetensors").is_file()
    again = FSLMChain.from_pretrained(folder, engine=tiny_engine)
    assert again.invoke(prompt) == answer
    assert stack.batch([prompt, "Hi"]) == [answer, stack.invoke("Hi")]  # mixed adapters in one batch


def test_broken_manifest_names_file_and_field(tmp_path, stack):
    folder = stack.save_pretrained(tmp_path / "s")
    path = folder / "fslm_stack.json"
    data = json.loads(path.read_text())
    data["stages"][1]["output_type"] = "nope"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"fslm_stack.json.*stages\[\w+\]\.output_type"):
        FSLMChain.from_pretrained(folder)
    data["stages"][1]["output_type"] = "text"
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="format_version"):
        FSLMChain.from_pretrained(folder)


def test_chat_model_face(stack):
    chat = ChatFSLM(stack=stack, max_tokens=4)
    message = chat.invoke("Why is the sky blue?")
    assert isinstance(message.content, str) and message.content
    assert message.usage_metadata["output_tokens"] > 0
    assert message.usage_metadata["input_tokens"] > 0
    chunks = list(chat.stream("Why is the sky blue?"))
    assert "".join(c.content for c in chunks) == message.content
