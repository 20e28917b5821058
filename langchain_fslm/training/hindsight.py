"""Hindsight distillation: the teacher writes each handoff seeing the request *and* its reference answer.

Planning blind is hard for a small teacher: asked for the intent of a request it answers it, asked for key
points it repeats one. Shown the answer the stack should reach (Alpaca's reference, written by a much
larger model), it only has to say which intent that answer serves, which points it makes, and write a draft
close to it. The trained stages still see only the request: each record keeps the stage's own prompt as
the training prompt; only the teacher's prompt differs. See docs/training.md.

A stage can also be *derived* from the reference without a teacher: ``key_points`` as bullets made from
the reference's first sentences (:func:`derive`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from langchain_fslm.manifest import StageSpec

HINDSIGHT_PROMPTS: dict[str, str] = {
    "intent": (
        "Here is a request and the answer it should get.\n\n"
        "Request: {input}\n"
        "Answer: {reference}\n\n"
        "In one sentence, say what the request asks for and what kind of answer it needs. "
        "Describe the request; do not answer it."
    ),
    "key_points": (
        "Request: {input}\n"
        "What is asked: {intent}\n"
        "A good answer: {reference}\n\n"
        "List the two to four key points this answer makes, one per line, each starting with '- '."
    ),
    "draft": (
        "Request: {input}\n"
        "Key points:\n{key_points}\n"
        "A good answer: {reference}\n\n"
        "Write a first draft of an answer to the request that covers the key points, close to the good "
        "answer in content."
    ),
}
"""Teacher prompts per default role; ``{reference}`` is the row's reference answer."""

GENERIC_SUFFIX = (
    "\n\nThe final answer this should lead to: {reference}\n"
    "Write your reply so that it leads to that answer; do not copy the answer."
)
"""Added to the stage's own prompt for stages without a hindsight prompt of their own."""

DERIVABLE = ("key_points",)
"""Stages :func:`derive` can write from the reference alone."""

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSE = re.compile(r"[,;]\s+|\s+and\s+")
_MAX_POINT = 90


def teacher_prompt(spec: StageSpec, fields: Mapping[str, Any], reference: str) -> str:
    """The prompt the teacher gets for one stage in hindsight mode.

    Args:
        spec: The stage.
        fields: The state so far (``input`` and earlier stages' texts).
        reference: The row's reference answer.
    """
    template = HINDSIGHT_PROMPTS.get(spec.name, spec.prompt + GENERIC_SUFFIX)
    values = {k: str(v) for k, v in fields.items() if not k.startswith("_")}
    return template.format_map(_Fields({**values, "reference": reference.strip()}))


def derive(stage: str, reference: str) -> str | None:
    """A stage's target written from the reference alone, or None where it cannot be.

    ``key_points``: the reference's first two to four sentences (or lines), each cut to 90 characters
    (what the key_points constraint allows), as ``- `` bullets. A reference of one sentence is split at
    its clauses instead (commas, semicolons, `` and ``; more than four clauses are grouped into four),
    because a small teacher asked for the points of a one-sentence answer writes points about the
    request; a reference with a single clause gives None (the teacher writes that record's points).

    Raises:
        ValueError: For a stage that is not in :data:`DERIVABLE`.
    """
    if stage != "key_points":
        raise ValueError(f"stage {stage!r} cannot be derived from the reference; derivable: {DERIVABLE}")
    sentences = [s.strip(" -*\t") for s in _SENTENCE.split(reference.strip())]
    sentences = [s for s in sentences if len(s) >= 3]
    if len(sentences) == 1:
        sentences = _clauses(sentences[0])
    if len(sentences) < 2:
        return None
    return "\n".join(f"- {_shorten(p)}" for p in sentences[:4])


def _clauses(sentence: str) -> list[str]:
    """A sentence's clauses, grouped into at most four points, in order."""
    parts = [c.strip(" ,;") for c in _CLAUSE.split(sentence) if len(c.strip(" ,;")) >= 3]
    if len(parts) <= 4:
        return parts
    size = -(-len(parts) // 4)  # ceil: four groups or fewer
    return [", ".join(parts[i : i + size]) for i in range(0, len(parts), size)]


def _shorten(sentence: str) -> str:
    sentence = " ".join(sentence.split())
    if len(sentence) <= _MAX_POINT:
        return sentence
    cut = sentence[: _MAX_POINT - 3].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "..."


class _Fields(dict[str, str]):
    """Format values that leave a field the state lacks empty (a custom stage may read a later one)."""

    def __missing__(self, key: str) -> str:
        return ""
