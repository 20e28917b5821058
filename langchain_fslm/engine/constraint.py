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
