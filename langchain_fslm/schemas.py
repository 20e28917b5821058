"""JSON schemas as decoding constraints, and the strict checks of what a model wrote under one.

Structured output and tool calls constrain the last stage to a JSON schema. A schema from a pydantic model,
a TypedDict or a dict is made fit for a small model first (:func:`constraint_schema`): ``$ref`` inlined,
every object with ``properties`` closed (``additionalProperties: false``, so the grammar cannot wander into
extra keys) and properties kept in their declared order (a decoding library writes them in that order).
A recursive or unsupported schema is a :class:`~langchain_fslm.errors.ConstraintError` naming it, raised
before any generation: llguidance (the grammar library of the local engine, llama.cpp and vLLM) compiles it.

The text a model wrote is read strictly: :func:`parse_json` refuses unfinished JSON (a budget that ran out
is an error, never a truncated object returned as valid), and :func:`check_text` checks text against the
very grammar an engine enforces, on engines that could not enforce it.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import ConstraintError

__all__ = [
    "check_text",
    "constraint_schema",
    "example_of",
    "json_constraint",
    "parse_json",
    "schema_name",
    "unfence",
]

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)
_DEFS = ("$defs", "definitions")


def schema_name(schema: Any) -> str:
    """A name for messages: a class's name, a schema's ``title``, else ``"schema"``."""
    if isinstance(schema, dict):
        return str(schema.get("title") or schema.get("name") or "schema")
    return str(getattr(schema, "__name__", None) or type(schema).__name__)


def to_json_schema(schema: Any) -> dict[str, Any]:
    """The JSON schema of a pydantic model, TypedDict or JSON-schema dict.

    A JSON-schema dict is taken as it is; a pydantic model gives its own schema (``$ref`` kept: LangChain's
    conversion drops a recursive one, which would let the grammar write anything there); a TypedDict or an
    OpenAI function dict goes through LangChain's conversion (descriptions from ``Annotated``), a TypedDict
    after its recursion is checked on pydantic's schema.

    Raises:
        ConstraintError: Naming the schema, if it is none of these, or recursive.
    """
    from langchain_core.utils.function_calling import convert_to_json_schema
    from langchain_core.utils.pydantic import is_basemodel_subclass
    from typing_extensions import is_typeddict

    if isinstance(schema, dict) and not {"parameters", "function"} & set(schema):
        return dict(schema)  # a JSON schema already (LangChain's conversion would drop keys it does not know)
    try:
        if is_basemodel_subclass(schema):
            dump = getattr(schema, "model_json_schema", None) or schema.schema
            return dict(dump())
        if is_typeddict(schema):
            from pydantic import TypeAdapter

            constraint_schema(TypeAdapter(schema).json_schema(), schema_name(schema))  # recursion check
        return dict(convert_to_json_schema(schema))
    except (ValueError, TypeError, KeyError) as err:
        raise ConstraintError(f"Schema {schema_name(schema)!r} is not a usable JSON schema: {err}") from None


def constraint_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """``schema`` made fit for constrained decoding: refs inlined, objects closed, order kept.

    Raises:
        ConstraintError: If the schema is recursive or refers to a definition it lacks, naming it.
    """
    defs: dict[str, Any] = {}
    for key in _DEFS:
        defs.update(schema.get(key) or {})
    root = {k: v for k, v in schema.items() if k not in _DEFS}

    def resolve(node: Any, trail: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, trail) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = "#" if ref == "#" else ref.rsplit("/", 1)[-1]
            if target in trail:
                path = " -> ".join(name if t == "#" else t for t in (*trail, target))
                raise ConstraintError(
                    f"Schema {name!r} is recursive ({path}); a constrained reply needs a finite schema "
                    "(give the nesting a fixed depth)."
                )
            if target != "#" and target not in defs:
                raise ConstraintError(f"Schema {name!r} refers to {ref!r}, which it does not define.")
            body = root if target == "#" else defs[target]
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**body, **extra}, (*trail, target))
        out = {k: resolve(v, trail) for k, v in node.items() if k not in _DEFS}
        if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
            if "patternProperties" not in out:
                out["additionalProperties"] = False
        return out

    resolved = resolve(root, ("#",))
    if not isinstance(resolved, dict):
        raise ConstraintError(f"Schema {name!r} is not a JSON object schema: {schema!r:.80}")
    return resolved


def json_constraint(schema: Any, name: str | None = None) -> OutputConstraint:
    """The decoding constraint for a schema (pydantic model, TypedDict or dict), checked to compile.

    Raises:
        ConstraintError: Naming the schema, if it is recursive, unsupported or not a schema.
    """
    name = name or schema_name(schema)
    fitted = constraint_schema(to_json_schema(schema), name)
    constraint = OutputConstraint.from_json_schema(fitted, name, sort_keys=False)
    check_compiles(constraint)
    return constraint


# ----------------------------------------------------------------------------- llguidance
def _grammar(constraint: OutputConstraint) -> str:
    from llguidance import LLMatcher

    if constraint.kind == "json_schema":
        return str(LLMatcher.grammar_from_json_schema(constraint.value))
    if constraint.kind == "regex":
        return str(LLMatcher.grammar_from_regex(constraint.value))
    return str(LLMatcher.grammar_from_lark(constraint.value))


class _Bytes:
    """A tokenizer of single bytes: lets llguidance check a text byte by byte, without a model."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids = [256]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@lru_cache(maxsize=1)
def _byte_tokenizer() -> Any:
    from llguidance import LLTokenizer, TokenizerWrapper

    return LLTokenizer(TokenizerWrapper(_Bytes()), slices=[])


@lru_cache(maxsize=256)
def _compiled(constraint: OutputConstraint) -> str:
    """The llguidance grammar of a constraint, checked (cached per constraint).

    Raises:
        ConstraintError: With llguidance's reason, naming the constraint.
    """
    from llguidance import LLMatcher

    grammar = _grammar(constraint)
    error = LLMatcher.validate_grammar(grammar, _byte_tokenizer())
    if error and not error.startswith("WARNING"):
        raise ConstraintError(f"The {constraint.describe()} cannot be used as a decoding constraint: {error}")
    return grammar


def check_compiles(constraint: OutputConstraint) -> None:
    """Compile ``constraint`` with llguidance now (cached), so a bad one fails before generation.

    Raises:
        ConstraintError: Naming the constraint and llguidance's reason.
    """
    _compiled(constraint)


def check_text(constraint: OutputConstraint, text: str) -> None:
    """Check that ``text`` is a complete sentence of ``constraint``, as a constraining engine would write it.

    Raises:
        ValueError: Saying where the text leaves the constraint, or that it is unfinished.
    """
    from llguidance import LLMatcher

    matcher = LLMatcher(_byte_tokenizer(), _compiled(constraint), log_level=0)
    data = text.encode("utf-8")
    fits = matcher.validate_tokens(list(data))
    if fits < len(data):
        at = len(data[:fits].decode("utf-8", errors="ignore"))
        raise ValueError(
            f"it does not match the {constraint.describe()} at character {at} "
            f"({text[max(0, at - 20) : at]!r} then {text[at : at + 20]!r})"
        )
    matcher.consume_tokens(list(data))
    if not matcher.is_accepting():
        raise ValueError(
            f"it is unfinished: the {constraint.describe()} needs more after {text[-30:]!r} "
            "(the token budget ran out? raise max_tokens)"
        )


# ----------------------------------------------------------------------------- reading JSON
def unfence(text: str) -> str:
    """The text stripped, and the inside of a markdown code fence if it is one."""
    body = text.strip()
    fenced = _FENCE.match(body)
    return fenced.group(1).strip() if fenced else body


def parse_json(text: str) -> Any:
    """One JSON value: the whole text (or the inside of one markdown code fence), parsed strictly.

    Unlike LangChain's lenient JSON parsing, an unfinished value is not completed.

    Raises:
        ValueError: For text that is not one complete JSON value, saying which (unfinished, trailing text).
    """
    body = unfence(text)
    if not body:
        raise ValueError("the reply is empty (expected JSON)")
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        if _unfinished(body):
            raise ValueError(
                f"the JSON is unfinished: it stops after {len(body)} characters before the value is closed "
                f"(...{body[-30:]!r}); the token budget may be too small (raise max_tokens)"
            ) from None
        if err.msg == "Extra data":
            raise ValueError(f"the JSON value is followed by other text at character {err.pos}") from None
        raise ValueError(f"not valid JSON ({err.msg} at character {err.pos})") from None


def _unfinished(body: str) -> bool:
    """Whether JSON text stops inside a string or an open object/array (a cut-off reply)."""
    depth, in_string, escaped = 0, False, False
    for char in body:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return in_string or depth > 0 or body.rstrip().endswith((":", ","))


# ----------------------------------------------------------------------------- prompts
def example_of(schema: dict[str, Any], depth: int = 0) -> str:
    """A compact picture of the JSON a schema wants, for the prompt: ``{"name": <string>, "age": <integer>}``.

    Values are placeholders (``<type: description>``), so a small model copies the form, not the values.
    """
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"][:6])
    for key in ("anyOf", "oneOf"):
        branches = [b for b in schema.get(key, []) if b.get("type") != "null"]
        if branches:
            if all("const" in b or "enum" in b for b in branches) or depth > 0:
                return " | ".join(example_of(b, depth + 1) for b in branches[:4])
            return example_of(branches[0], depth + 1)
    props = schema.get("properties")
    if isinstance(props, dict):
        inner = ", ".join(f"{json.dumps(k)}: {example_of(v, depth + 1)}" for k, v in props.items())
        return "{" + inner + "}"
    kind = schema.get("type", "value")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return "[" + example_of(schema["items"], depth + 1) + ", ...]"
    if isinstance(kind, list):
        kind = "|".join(str(k) for k in kind)
    about = schema.get("description")
    return f"<{kind}: {about}>" if about and depth > 0 else f"<{kind}>"
