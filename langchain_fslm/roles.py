"""The default roles of a stack (see docs/stack.md for the evidence behind them).

The default is two stages, ``intent -> answer``: one sentence saying what the request asks for, then the
answer to the request with that sentence as a note. :func:`four_stage_specs` keeps the paper-shaped layout
(``intent -> key_points -> draft -> answer``), which measured worse than the bare base model zero-shot.
Each later prompt may use any earlier field and ``{input}``.
"""

from __future__ import annotations

from langchain_fslm.engine.base import GenerationConfig
from langchain_fslm.manifest import StageSpec

INTENT_PROMPT = (
    "Read the request and say in one sentence what it asks for and what kind of answer it needs. "
    "Do not answer it.\n\nRequest: {input}"
)
# the request comes last and alone, as the base model sees it without a stack: the answer stage answers
# the request (its habit) with the intent as a note; longer notes (key points, a draft to rewrite) were
# followed into worse answers zero-shot (docs/stack.md)
ANSWER_PROMPT = "({intent})\n\n{input}"

KEY_POINTS_PROMPT = (
    "Request: {input}\n"
    "What is asked: {intent}\n\n"
    "List the two to four key points a good answer must cover, one per line, each starting with '- '."
)
DRAFT_PROMPT = (
    "Request: {input}\n"
    "Key points:\n{key_points}\n\n"
    "Write an answer to the request that covers the key points."
)
REWRITE_PROMPT = (
    "Request: {input}\n"
    "Draft answer: {draft}\n\n"
    "Rewrite the draft as the final answer to the request: correct, clear and to the point. "
    "Reply with the answer only."
)


def _gen(tokens: int, override: int | None, stop: list[str] | None = None) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=override or tokens, repetition_penalty=1.1, stop=stop or [])


def _upstream(name: str, prompt: str, tokens: int, stop: str, override: int | None) -> StageSpec:
    # a constrained upstream stage fails only when the budget cuts its text: a retry would cost a
    # generation and rarely fit better, so the unfinished handoff is handed on raw and flagged and the
    # answer still comes (the answer stage is free text)
    return StageSpec(
        name=name,
        prompt=prompt,
        output_type=name,
        generation=_gen(tokens, override, [stop]),
        parse_retries=0,
        on_parse_error="pass_raw",
    )


def _intent(override: int | None) -> StageSpec:
    return _upstream("intent", INTENT_PROMPT, 44, "\n", override)


def default_stage_specs(max_new_tokens: int | None = None) -> list[StageSpec]:
    """The default stages, ``intent -> answer`` (no adapters: zero-shot until trained).

    Args:
        max_new_tokens: Override every stage's generation budget (e.g. small for tests).

    Returns:
        Stage specs in order.
    """
    return [
        _intent(max_new_tokens),
        StageSpec(
            name="answer", prompt=ANSWER_PROMPT, output_type="answer", generation=_gen(128, max_new_tokens)
        ),
    ]


def four_stage_specs(max_new_tokens: int | None = None) -> list[StageSpec]:
    """The paper-shaped four stages, ``intent -> key_points -> draft -> answer`` (the default before 2026-12).

    Kept for comparison and for stacks that want a written draft: on the held-out set its zero-shot
    answers scored below the bare base model (docs/results.md).

    Args:
        max_new_tokens: Override every stage's generation budget.

    Returns:
        Stage specs in order.
    """
    return [
        _intent(max_new_tokens),
        _upstream("key_points", KEY_POINTS_PROMPT, 144, "\n\n", max_new_tokens),
        StageSpec(
            name="draft", prompt=DRAFT_PROMPT, output_type="draft", generation=_gen(128, max_new_tokens)
        ),
        StageSpec(
            name="answer", prompt=REWRITE_PROMPT, output_type="answer", generation=_gen(128, max_new_tokens)
        ),
    ]


def specs_for(names: set[str] | list[str], max_new_tokens: int | None = None) -> list[StageSpec]:
    """The built-in layout that has every stage in ``names`` (the default first, then the four stages).

    Records distilled with either layout train without naming it; a set neither covers gets the default
    (and the caller's check names the stages it lacks).
    """
    for layout in (default_stage_specs, four_stage_specs):
        specs = layout(max_new_tokens)
        if set(names) <= {s.name for s in specs}:
            return specs
    return default_stage_specs(max_new_tokens)
