"""Grammar-constrained decoding on the local engine (llguidance), on a tiny *random* model.

A random model writes noise; under a constraint it can still write only text of the declared type, which
is the strongest check that the mask, not the model, makes the text valid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from langchain_fslm import (
    ConstraintError,
    GenerationConfig,
    OutputConstraint,
    SLMRunnable,
    StageOutputError,
)
from langchain_fslm.engine.base import GenerationRequest
from langchain_fslm.engine.local import LocalEngine
from langchain_fslm.models import BaseModelRef
from langchain_fslm.outputs import INTENT_PATTERN, KEY_POINTS_PATTERN, Intent, KeyPoints, Text


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=130)


PERSON = OutputConstraint.from_json_schema(Person.model_json_schema())
WORD = OutputConstraint.from_regex(r"[a-z]{3,8}", name="word")
PROMPTS = ["Who is Ann?", "Tell me about Bob.", "Describe Carla", "x", "A person, please"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tiny_adapters: dict[str, Path]) -> LocalEngine:
    engine = LocalEngine.from_ref(BaseModelRef(source=str(tiny_model_dir)), batch_window_ms=None)
    engine.load_adapter("a", tiny_adapters["a"])
    engine.load_adapter("b", tiny_adapters["b"])
    return engine


def _req(
    prompt: str, constraint: OutputConstraint | None, adapter: str | None = None, tokens: int = 48
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, adapter=adapter, constraint=constraint, config=GenerationConfig(max_new_tokens=tokens)
    )


def test_the_engine_says_it_constrains(engine: LocalEngine) -> None:
    assert engine.capabilities().constrained


def test_a_random_model_writes_only_valid_json_under_a_schema(engine: LocalEngine) -> None:
    free = engine.generate([_req(p, None) for p in PROMPTS])
    assert not any(_is_person(g.text) for g in free)  # the mask, not the model, makes it valid
    out = engine.generate([_req(p, PERSON) for p in PROMPTS])
    for generation in out:
        assert _is_person(generation.text), generation.text
        assert generation.finish_reason == "stop"
        assert ", " in generation.text and '": ' in generation.text  # the spaced separators


def test_each_row_of_a_mixed_adapter_batch_keeps_its_own_grammar(engine: LocalEngine) -> None:
    requests = [
        _req("Who is Ann?", PERSON, "a"),
        _req("A word:", WORD, "b"),
        _req("Anything", None, "a"),
        _req("A word again", WORD, None),
    ]
    batched = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert _is_person(batched[0].text)
    assert re.fullmatch(r"[a-z]{3,8}", batched[1].text) and re.fullmatch(r"[a-z]{3,8}", batched[3].text)
    assert batched[1].finish_reason == batched[3].finish_reason == "stop"


def test_streaming_under_a_grammar_joins_to_the_generated_text(engine: LocalEngine) -> None:
    request = _req("Who is Bob?", PERSON, "b")
    pieces = list(engine.stream(request))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate([request])[0].text
    assert _is_person("".join(pieces))


def test_a_budget_too_small_is_length_never_a_finished_text(engine: LocalEngine) -> None:
    (cut,) = engine.generate([_req("Who is Ann?", PERSON, tokens=4)])
    assert cut.finish_reason == "length"
    assert not _is_person(cut.text)


def test_built_in_types_on_a_random_model_are_their_type(engine: LocalEngine) -> None:
    out = engine.generate(
        [
            _req("Say what this asks for.", Intent.constraint(), tokens=150),
            _req("Key points?", KeyPoints.constraint(), "a", tokens=200),
        ]
    )
    assert re.fullmatch(INTENT_PATTERN, out[0].text), out[0].text
    Intent.from_text(out[0].text)
    assert re.fullmatch(KEY_POINTS_PATTERN, out[1].text + "\n") or re.fullmatch(
        KEY_POINTS_PATTERN, out[1].text
    )
    points = KeyPoints.from_text(out[1].text)
    assert 2 <= len(points.points) <= 4


def test_a_stage_sends_its_type_and_refuses_a_cut_text(engine: LocalEngine) -> None:
    stage = SLMRunnable(
        name="intent",
        prompt="Request: {input}",
        output_type="intent",
        engine=engine,
        parse_retries=0,
        generation=GenerationConfig(max_new_tokens=150),
    )
    assert stage.constraint == Intent.constraint()
    assert stage.invoke("Why is the sky blue?").value is not None
    short = stage.with_generation(max_new_tokens=3)
    with pytest.raises(StageOutputError, match="token budget"):
        short.invoke("Why is the sky blue?")


def test_constrained_false_sends_no_constraint(engine: LocalEngine) -> None:
    stage = SLMRunnable(
        name="intent",
        prompt="{input}",
        output_type="intent",
        engine=engine,
        constrained=False,
        parse_retries=0,
        generation=GenerationConfig(max_new_tokens=8),
    )
    assert stage.constraint is None
    with pytest.raises(
        StageOutputError, match="intent"
    ):  # random free text is no sentence: the validator says so
        stage.invoke("Why is the sky blue?")


@pytest.mark.parametrize(
    ("constraint", "reason"),
    [
        (OutputConstraint.from_regex("([a-z]", name="broken"), "broken"),
        (OutputConstraint.from_lark("start: nothing_defined", name="bad grammar"), "bad grammar"),
        (OutputConstraint(kind="json_schema", value="[1, 2]", name="not a schema"), "not a schema"),
    ],
)
def test_a_bad_constraint_fails_before_generation_naming_stage_and_constraint(
    engine: LocalEngine, constraint: OutputConstraint, reason: str
) -> None:
    with pytest.raises(ConstraintError, match=rf"stage 'extract'.*{reason}"):
        engine.check_constraint(constraint, "extract")
    with pytest.raises(ConstraintError, match=reason):
        engine.generate([GenerationRequest(prompt="x", constraint=constraint, stage="extract")])


def _is_person(text: str) -> bool:
    try:
        Person.model_validate(json.loads(text))
    except ValueError:
        return False
    return True


class Code(Text):
    """A code of exactly 400 capital letters: no small budget can finish it."""

    output_constraint = OutputConstraint.from_regex(r"[A-Z]{400}", name="code")


def test_a_pattern_that_cannot_end_within_the_budget_fails_before_generation(engine: LocalEngine) -> None:
    capitals = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    longest = engine.longest_token_chars(capitals)
    assert 1 <= longest < engine.longest_token_chars() and longest < 400
    budget = 400 // longest - 1 or 1  # fewer tokens than the shortest text needs, whatever they are
    with pytest.raises(ConstraintError, match=r"stage 'code'.*at least 400 characters.*max_new_tokens="):
        SLMRunnable(
            name="code",
            prompt="{input}",
            output_type=Code,
            engine=engine,
            generation=GenerationConfig(max_new_tokens=budget),
        )
    stage = SLMRunnable(  # a budget that could hold it is accepted (the bound is loose, never wrong)
        name="code",
        prompt="{input}",
        output_type=Code,
        engine=engine,
        generation=GenerationConfig(max_new_tokens=400),
    )
    assert stage.constraint == Code.output_constraint


@pytest.mark.parametrize(
    ("pattern", "shortest"),
    [
        (r"[A-Z]{400}", (400, frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))),
        (r"(ab|c)\d{2}", (3, frozenset("abc0123456789"))),
        (KEY_POINTS_PATTERN, (len("- abc\n- abc"), None)),  # [^\n]: too many characters to list
        (r"(?i)ab", (2, None)),  # case-folded: the set is not the literal's
        ("([a-z]", None),  # Python cannot parse it: no claim
    ],
)
def test_shortest_texts_of_patterns(pattern: str, shortest: object) -> None:
    assert OutputConstraint.from_regex(pattern).shortest_text() == shortest
    assert PERSON.shortest_text() is None
