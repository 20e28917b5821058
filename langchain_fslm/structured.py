"""Structured output for a stack: the last stage parses into a caller's schema.

``ChatFSLM.with_structured_output(schema)`` swaps the last stage's output type for one built here, so the
schema is enforced by the stage's own parser, with the stage's ``parse_retries``. A :class:`StageOutput`
subclass is used as it is (plain-text parsing); a pydantic model, a TypedDict or a JSON schema dict is asked
for as JSON and parsed by LangChain's JSON / pydantic output parsers.
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any, ClassVar

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import BaseOutputParser, JsonOutputParser, PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from langchain_fslm.outputs import StageOutput, StageOutputParser
from langchain_fslm.stage import SLMRunnable

STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")
"""Accepted ``method`` values; a small local model has no tool calling, so all of them prompt for the
format and parse the text."""


def is_stage_output(schema: Any) -> bool:
    """Whether ``schema`` is a :class:`StageOutput` subclass (parsed from plain text, not JSON)."""
    return isinstance(schema, type) and issubclass(schema, StageOutput)


def schema_parser(schema: Any, method: str | None = None) -> BaseOutputParser[Any]:
    """The LangChain output parser that turns the last stage's text into ``schema``.

    Args:
        schema: A :class:`StageOutput` subclass, a pydantic model, a TypedDict or a JSON schema dict.
        method: ``json_schema``, ``function_calling`` or ``json_mode`` (all parse the text), or None.

    Raises:
        ValueError: For an unknown method, or ``json_mode`` without a schema.
    """
    if method is not None and method not in STRUCTURED_METHODS:
        raise ValueError(f"Unknown structured-output method {method!r}; use one of {STRUCTURED_METHODS}.")
    if schema is None:
        if method == "json_mode":
            return JsonOutputParser()
        raise ValueError("with_structured_output needs a schema (or method='json_mode').")
    if is_stage_output(schema):
        return StageOutputParser(output_type=schema)
    if is_basemodel_subclass(schema):
        return PydanticOutputParser(pydantic_object=schema)
    spec = convert_to_json_schema(schema)  # raises a clear error for anything that is not a schema
    return CheckedJsonOutputParser(check=_schema_check(schema, spec))


class CheckedJsonOutputParser(JsonOutputParser):
    """``JsonOutputParser`` that also checks a complete reply against the schema (partial chunks are not)."""

    check: Any = None

    def parse_result(self, result: Any, *, partial: bool = False) -> Any:  # noqa: D102
        value = super().parse_result(result, partial=partial)
        if not partial and self.check is not None:
            try:
                self.check(value)
            except (ValueError, TypeError) as err:
                raise OutputParserException(f"The JSON does not match the schema: {err}") from err
        return value


def _schema_check(schema: Any, spec: dict[str, Any]) -> Any:
    """A function that raises ValueError when a parsed value does not fit ``schema`` (TypedDict or dict)."""
    from typing_extensions import is_typeddict

    if is_typeddict(schema):
        from pydantic import TypeAdapter

        adapter = TypeAdapter(schema)
        return adapter.validate_python  # pydantic's ValidationError is a ValueError

    def check(value: Any) -> None:
        if spec.get("type", "object") == "object":
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {type(value).__name__}")
            missing = [k for k in spec.get("required", []) if k not in value]
            if missing:
                raise ValueError(f"missing required key(s) {missing}")

    return check


def format_instructions(schema: Any) -> str:
    """A short instruction for the last stage's prompt (small models follow short ones better)."""
    if is_stage_output(schema):
        return StageOutputParser(output_type=schema).get_format_instructions()
    if schema is None:
        return "Reply with one JSON object only."
    spec = convert_to_json_schema(schema)
    fields = []
    for key, prop in spec.get("properties", {}).items():
        kind = prop.get("type", "value")
        about = f" ({prop['description']})" if prop.get("description") else ""
        fields.append(f'"{key}": {kind}{about}')
    return "Reply with one JSON object only, with these keys: " + "; ".join(fields) + "."


def structured_output_type(parser: BaseOutputParser[Any]) -> type[StageOutput]:
    """A stage output type whose parsing is ``parser`` (the value is kept as parsed)."""

    class Structured(StageOutput):
        type_name: ClassVar[str] = "structured"
        value: Any

        @classmethod
        def from_text(cls, text: str) -> Structured:
            try:
                return cls(value=parser.parse(text))
            except OutputParserException as err:  # re-raised as one again by the stage's parser: keep
                # the message, not LangChain's troubleshooting link, which that would add a second time
                raise ValueError(str(err).split("\nFor troubleshooting")[0]) from None

        def as_text(self) -> str:
            return to_text(self.value)

    return Structured


def to_text(value: Any) -> str:
    """Write a parsed value back as text that its parser reads again (JSON or the stage format)."""
    if isinstance(value, StageOutput):
        return value.as_text()
    if hasattr(value, "model_dump_json"):
        return str(value.model_dump_json())
    if hasattr(value, "json") and hasattr(value, "dict"):  # pydantic.v1 model
        return str(value.json())
    return json.dumps(value, ensure_ascii=False)


def structured_stage(
    stage: SLMRunnable, schema: Any, parser: BaseOutputParser[Any], on_parse_error: str = "raise"
) -> SLMRunnable:
    """A copy of ``stage`` that asks for ``schema`` and parses into it.

    Once its retries are spent it raises (``on_parse_error="raise"``) or passes the raw text on
    (``"pass_raw"``, for ``include_raw=True``, where the caller's parser records the error).
    """
    output_type = schema if is_stage_output(schema) else structured_output_type(parser)
    instructions = format_instructions(schema).replace("{", "{{").replace("}", "}}")
    return SLMRunnable(
        name=stage.name,
        prompt=f"{stage.prompt}\n\n{instructions}",
        output_type=output_type,
        engine=stage.engine,
        adapter=stage.adapter,
        generation=stage.generation,
        system=stage.system,
        parse_retries=stage.parse_retries,
        on_parse_error=on_parse_error,
    )


def structured_chat(
    chat: Any, schema: Any, *, include_raw: bool, method: str | None, strict: bool | None
) -> Runnable[Any, Any]:
    """``ChatFSLM.with_structured_output``: the chat with its last stage typed as ``schema``, then its parser.

    With ``include_raw`` the reply comes as ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``
    (a reply that does not parse is handed on raw, ``parsed=None``), as LangChain's chat models do.
    """
    parser = schema_parser(schema, method)
    on_parse_error = "pass_raw" if include_raw else "raise"
    llm = chat.model_copy(update={"structured": (schema, parser, on_parse_error)}).bind(
        ls_structured_output_format={
            "kwargs": {"method": method or "json_schema", "strict": strict},
            "schema": convert_to_json_schema(schema) if schema is not None else None,
        }
    )
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    with_fallback = parsed.with_fallbacks([failed], exception_key="parsing_error")
    return RunnableMap(raw=llm) | with_fallback
