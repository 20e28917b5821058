"""The default four roles of a stack, after the paper's four small models (see docs/stack.md).

intent -> key_points -> draft -> answer. Each later prompt may use any earlier field and ``{input}``.
"""

from __future__ import annotations

from langchain_fslm.engine.base import GenerationConfig
from langchain_fslm.manifest import StageSpec

INTENT_PROMPT = (
    "Read the request and say in one sentence what it asks for and what kind of answer it needs. "
    "Do not answer it.\n\nRequest: {input}"
)
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
ANSWER_PROMPT = (
    "Request: {input}\n"
    "Draft answer: {draft}\n\n"
    "Rewrite the draft as the final answer to the request: correct, clear and to the point. "
    "Reply with the answer only."
)


def default_stage_specs(max_new_tokens: int | None = None) -> list[StageSpec]:
    """The four default stages (no adapters: zero-shot until trained).

    Args:
        max_new_tokens: Override every stage's generation budget (e.g. small for tests).

    Returns:
        Stage specs in order.
    """

    def gen(tokens: int, stop: list[str] | None = None) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=max_new_tokens or tokens, repetition_penalty=1.1, stop=stop or []
        )

    return [
        # constrained upstream stages fail only when the budget cuts their text: a retry would cost a
        # generation and rarely fits better, so the unfinished handoff is handed on raw and flagged and the
        # answer still comes (the answer stage is free text)
        StageSpec(
            name="intent",
            prompt=INTENT_PROMPT,
            output_type="intent",
            generation=gen(44, ["\n"]),
            parse_retries=0,
            on_parse_error="pass_raw",
        ),
        StageSpec(
            name="key_points",
            prompt=KEY_POINTS_PROMPT,
            output_type="key_points",
            generation=gen(144, ["\n\n"]),
            parse_retries=0,
            on_parse_error="pass_raw",
        ),
        StageSpec(name="draft", prompt=DRAFT_PROMPT, output_type="draft", generation=gen(128)),
        StageSpec(name="answer", prompt=ANSWER_PROMPT, output_type="answer", generation=gen(128)),
    ]
