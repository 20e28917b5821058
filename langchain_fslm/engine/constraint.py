"""What a generation may write: the constraint an engine enforces while decoding.

A stage's output type declares one (see :meth:`langchain_fslm.outputs.StageOutput.constraint`); the stage
sends it with each :class:`~langchain_fslm.engine.base.GenerationRequest`, and an engine that can constrain
(``capabilities().constrained``) lets the model sample only tokens that keep the text inside it. Engines
translate it to their own form: a logits mask on the local engine, ``json_schema`` / ``grammar`` for
llama.cpp, ``structured_outputs`` for vLLM. Without constraining, the output type's validator still rejects
what does not match.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ConstraintKind = Literal["json_schema", "regex", "lark"]


class OutputConstraint(BaseModel):
    """One constraint on generated text: a JSON schema, a regular expression or a lark grammar.

    Frozen and hashable, so engines cache compiled grammars by it.

    Attributes:
        kind: ``json_schema`` (the text is one JSON value of the schema), ``regex`` (the whole text matches
            the pattern) or ``lark`` (the text is a sentence of the grammar, llguidance's lark dialect).
        value: The pattern or grammar; for ``json_schema`` the schema as compact JSON in its own key order
            (a constrained model writes properties in that order, and a small model writes them best in
            the order their schema declares them).
        name: What the constraint is for (a type or schema title), for error messages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ConstraintKind
    value: str
    name: str | None = None

    @classmethod
    def from_json_schema(
        cls, schema: dict[str, Any], name: str | None = None, *, sort_keys: bool = False
    ) -> OutputConstraint:
        """A constraint to one JSON value of ``schema``.

        Args:
            schema: The JSON schema.
            name: What it is for (default: its ``title``).
            sort_keys: Store the schema with sorted keys (then equal schemas written in another order are
                equal constraints). Default False, the declared order: a decoding library writes an
                object's properties in the order of ``properties``, and a small model fills a form best in
                the order its author wrote it.
        """
        title = name or schema.get("title")
        return cls(
            kind="json_schema",
            value=json.dumps(schema, sort_keys=sort_keys, separators=(",", ":")),
            name=title,
        )

    @classmethod
    def from_regex(cls, pattern: str, name: str | None = None) -> OutputConstraint:
        """A constraint to text matching ``pattern`` as a whole."""
        return cls(kind="regex", value=pattern, name=name)

    @classmethod
    def from_lark(cls, grammar: str, name: str | None = None) -> OutputConstraint:
        """A constraint to sentences of a lark grammar (start rule ``start``)."""
        return cls(kind="lark", value=grammar, name=name)

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema (only for ``kind="json_schema"``).

        Raises:
            ValueError: For a regex or grammar constraint.
        """
        if self.kind != "json_schema":
            raise ValueError(f"a {self.kind} constraint has no JSON schema")
        return dict(json.loads(self.value))

    def describe(self) -> str:
        """A short label for messages: the name, else the kind and the start of the value."""
        if self.name:
            return f"{self.kind} {self.name!r}"
        short = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return f"{self.kind} {short!r}"

    def shortest_text(self) -> tuple[int, frozenset[str] | None] | None:
        r"""The fewest characters a text of this constraint has, and the characters it can contain.

        Known for regular expressions that Python's own parser reads (llguidance's syntax is close to it);
        the character set is None where it is too large to list (``.``, ``[^...]``, ``\w``). None for
        grammars, JSON schemas and patterns Python cannot parse: no claim is made about them.
        """
        if self.kind != "regex":
            return None
        try:
            parsed = re._parser.parse(self.value)  # type: ignore[attr-defined]
            low, _ = parsed.getwidth()
        except (re.error, RecursionError, OverflowError, ValueError):
            return None
        folded = bool(parsed.state.flags & re.IGNORECASE)
        return int(low), None if folded else _alphabet(parsed)


def _alphabet(items: Any) -> frozenset[str] | None:
    """Every character a text of parsed pattern ``items`` can contain; None: too many to list."""
    from re import _constants as c  # type: ignore[attr-defined]

    chars: set[str] = set()
    for op, arg in items:
        if op is c.LITERAL:
            chars.add(chr(arg))
        elif op is c.IN:
            for inner, value in arg:
                if inner is c.LITERAL:
                    chars.add(chr(value))
                elif inner is c.RANGE and value[1] - value[0] <= 1024:
                    chars.update(map(chr, range(value[0], value[1] + 1)))
                elif inner is c.CATEGORY and value is c.CATEGORY_DIGIT:
                    chars.update("0123456789")
                else:  # a negated set, \w, \s, a huge range
                    return None
        elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            continue  # consumes nothing: the characters come from the rest
        else:
            subs: list[Any]
            if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
                subs = [arg[2]]
            elif op is c.SUBPATTERN and not arg[1] & re.IGNORECASE:
                subs = [arg[3]]
            elif op is c.ATOMIC_GROUP:
                subs = [arg]
            elif op is c.BRANCH:
                subs = list(arg[1])
            else:  # ANY, NOT_LITERAL, group references, case-folded groups
                return None
            for sub in subs:
                found = _alphabet(sub)
                if found is None:
                    return None
                chars |= found
    return frozenset(chars)


def check_budget(constraint: OutputConstraint, max_new_tokens: int, engine: Any, stage: str | None) -> None:
    """Refuse a constraint that can never end within ``max_new_tokens`` tokens, before any generation.

    Sound, and loose on purpose: a text of ``n`` tokens has at most ``n * longest`` characters, where
    ``longest`` is the engine's longest token made only of characters the pattern can contain (see
    ``longest_token_chars``), so a pattern whose shortest text is longer can never be finished (it would
    always be cut, and a cut constrained text is refused after the whole budget was spent). Budgets
    between that bound and the real minimum pass; the cut text is then refused by the stage.

    Args:
        constraint: The stage's constraint.
        max_new_tokens: The stage's token budget.
        engine: The engine; one without ``longest_token_chars`` (or that answers None) is not checked.
        stage: The stage, for the message.

    Raises:
        ConstraintError: Naming the stage, the constraint, the shortest text and the budget.
    """
    from langchain_fslm.errors import ConstraintError

    bounds = constraint.shortest_text()
    measure = getattr(engine, "longest_token_chars", None)
    # a token that writes anything writes at least one character: a shortest text of at most
    # max_new_tokens characters always fits, and the vocabulary need not be read (the default stages)
    if bounds is None or bounds[0] <= max_new_tokens or not callable(measure):
        return
    low, alphabet = bounds
    longest = measure(alphabet)
    if not longest or low <= max_new_tokens * longest:
        return
    where = f"stage {stage!r}" if stage else "the request"
    raise ConstraintError(
        f"{where}: {constraint.describe()} needs at least {low} characters, more than "
        f"max_new_tokens={max_new_tokens} tokens can hold (at most {longest} characters each of the "
        "tokens it may use): "
        "raise the budget or shorten the pattern"
    )
