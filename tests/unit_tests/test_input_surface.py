"""Inputs a stack and an engine must refuse clearly (issue 26, class 9), and property tests of the surface."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from pydantic import ValidationError

from langchain_fslm import FSLMError, GenerationConfig, GenerationRequest, InvalidInputError
from langchain_fslm.inputs import input_to_text

INVISIBLE = ["\u200b", "\ufeff", "\u200b\u200c\u200d", " \u2060\n\t\u00ad ", "\ufeff\u200b \u200e\u200f"]


@pytest.mark.parametrize("text", INVISIBLE)
def test_text_of_only_invisible_characters_is_not_a_request(text):
    with pytest.raises(InvalidInputError, match="invisible characters"):
        input_to_text(text)
    with pytest.raises(InvalidInputError, match="invisible characters"):
        input_to_text([HumanMessage(content=text)])


@pytest.mark.parametrize("text", ["\ufeffHello", "\U0001f468\u200d\U0001f469", "a\u200bb"])
def test_invisible_characters_beside_text_are_kept(text):
    assert input_to_text(text) == text


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text"}],
        [{"type": "text", "text": None}],
        [{"type": "text", "text": 3}],
        ["ok", {"type": "text"}],
    ],
)
def test_a_text_block_without_text_is_named(content):
    with pytest.raises(InvalidInputError, match="text block without a 'text' string"):
        input_to_text([HumanMessage(content=content)])


def _nested(depth: int, leaf, wrap):
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


@pytest.mark.parametrize(
    "value",
    [
        _nested(3000, "hi", lambda v: {"input": v}),
        _nested(3000, "hi", lambda v: [v]),
    ],
    ids=["mapping", "list"],
)
def test_deeply_nested_input_is_an_input_error_not_a_recursion_error(value):
    with pytest.raises(InvalidInputError):
        input_to_text(value)


leaves = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\u200b", "\ufeff", "<|im_end|>", "{input}", "\x00", "\ud800"]),
    st.integers(),
    st.none(),
    st.binary(max_size=4),
)
inputs = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["input", "role", "content", "type", "text"]), inner, max_size=3)
        | st.tuples(st.sampled_from(["human", "ai", "system", "tool"]), inner)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(inputs)
def test_any_input_is_text_or_an_input_error(value):
    try:
        text = input_to_text(value)
    except InvalidInputError:
        return
    assert isinstance(text, str) and text.strip()


configs = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.integers(-2, 10_000),
        "temperature": st.one_of(st.floats(-1, 6), st.just(float("nan"))),
        "top_p": st.floats(-0.5, 1.5),
        "repetition_penalty": st.floats(0, 6),
        "stop": st.one_of(
            st.none(), st.text(max_size=3), st.lists(st.text(max_size=3), max_size=18), st.integers()
        ),
        "seed": st.one_of(st.none(), st.integers(-5, 2**65)),
        "on_too_long": st.sampled_from(["raise", "truncate_left", "wrap"]),
    },
)


@settings(max_examples=300, deadline=None)
@given(configs)
def test_any_generation_config_is_valid_or_a_validation_error(config):
    try:
        checked = GenerationConfig(**config)
    except ValidationError:
        return
    assert 1 <= checked.max_new_tokens <= 8192 and all(checked.stop)
    assert checked.seed is None or 0 <= checked.seed < 2**32


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.one_of(
        st.text(max_size=40),  # empty too: a model without a chat template starts from its start token
        st.sampled_from(["", "<|endoftext|>" * 3, "\x00\x01", "\ud7ff" * 5]),
    ),
    max_new_tokens=st.integers(1, 4),
    stop=st.lists(st.text(min_size=1, max_size=2), max_size=2),
)
def test_the_engine_answers_any_prompt_or_raises_its_own_error(tiny_engine, prompt, max_new_tokens, stop):
    request = GenerationRequest(
        prompt=prompt, config=GenerationConfig(max_new_tokens=max_new_tokens, stop=stop)
    )
    try:
        [generation] = tiny_engine.generate([request])
    except FSLMError:
        return
    assert isinstance(generation.text, str) and generation.completion_tokens <= max_new_tokens


def test_leaving_a_local_stream_stops_generation_within_a_token_or_two(tiny_engine):
    """Issue 26, class 4: breaking out of a stream ended the generation only at its budget (the model lock
    held meanwhile); now a cancel flag ends it at the next token."""
    from langchain_fslm.engine.base import GenerationConfig, GenerationRequest

    steps = []
    hook = tiny_engine.plain_model.register_forward_hook(lambda *_: steps.append(1))
    try:
        request = GenerationRequest(
            prompt="Tell me a long story.", config=GenerationConfig(max_new_tokens=200)
        )
        stream = tiny_engine.stream(request)
        consumed = [next(stream) for _ in range(3)]
        stream.close()
        assert all(consumed)
        assert len(steps) < 3 + 8  # about one forward per piece, then at most a step or two more
        steps.clear()
        (other,) = tiny_engine.generate(
            [GenerationRequest(prompt="hi", config=GenerationConfig(max_new_tokens=5))]
        )
        assert 0 < len(steps) <= 6  # the next caller ran at once, its own five steps
    finally:
        hook.remove()


def test_control_token_strings_in_a_prompt_stay_text(tiny_engine):
    """Issue 26, class 6: user text holding a control token's string was tokenised as that token."""
    eos = tiny_engine.tokenizer.eos_token  # "<|endoftext|>", id 0 for the Pythia tokenizer
    eos_id = tiny_engine.tokenizer.convert_tokens_to_ids(eos)
    assert eos_id in tiny_engine.token_ids(f"a {eos} b")  # what the tokenizer does with raw text
    for system in (None, f"sys {eos}"):
        ids = tiny_engine.token_ids(tiny_engine.render(f"Hi {eos}\nNew turn {eos}", system))
        assert eos_id not in ids
    assert tiny_engine.render(f"x{eos}").replace("\u2060", "") == f"x{eos}"  # the same characters
