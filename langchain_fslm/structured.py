"""Structured output for a stack: the last stage generates under the schema and parses into it.

``FSLMChain.with_structured_output(schema)`` and ``ChatFSLM.with_structured_output(schema)`` swap the last
stage's output type for one built here. Its :meth:`~langchain_fslm.outputs.StageOutput.constraint` is the
schema as a JSON-schema constraint (declared order, closed objects: see :mod:`langchain_fslm.schemas`), so an
engine that constrains decoding can only write a valid object; its parser reads the reply strictly
(unfinished JSON is an error) and validates it, so on an engine that cannot constrain a reply that does not
fit is regenerated (the stage's ``parse_retries``) and then raises. The prompt also names the form, with a
compact example: the model must know what to write, not only be kept from writing anything else.

A :class:`StageOutput` subclass is used as it is (its own text format and constraint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, ClassVar

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.pydantic import is_basemodel_subclass

from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import InvalidInputError
from langchain_fslm.outputs import StageOutput, StageOutputParser
from langchain_fslm.schemas import check_text, example_of, json_constraint, parse_json, schema_name
from langchain_fslm.stage import SLMRunnable

STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")
"""Accepted ``method`` values. All three constrain the last stage to the schema (a stack has no separate
tool-calling or JSON mode for structured output); ``json_mode`` without a schema to any JSON object."""

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def is_stage_output(schema: Any) -> bool:
    """Whether ``schema`` is a :class:`StageOutput` subclass (parsed from plain text, not JSON)."""
    return isinstance(schema, type) and issubclass(schema, StageOutput)


@dataclass(frozen=True, eq=False)
class SchemaReader:
    """Reads a reply into one schema: strict JSON, then the schema's own validation.

    Attributes:
        schema: The caller's schema (pydantic model, TypedDict, JSON-schema dict, or None: any object).
        name: The schema's name, for messages.
        constraint: The decoding constraint built from it.
    """

    schema: Any
    name: str
    constraint: OutputConstraint

    @classmethod
    def of(cls, schema: Any) -> SchemaReader:
        """The reader of ``schema`` (None: any JSON object).

        Raises:
            ConstraintError: For a recursive, unsupported or unreadable schema, naming it.
        """
        name = "JSON object" if schema is None else schema_name(schema)
        return cls(schema, name, json_constraint(ANY_OBJECT if schema is None else schema, name))

    def read(self, text: str) -> Any:
        """The parsed, validated value of ``text`` (a pydantic object, or a dict).

        Raises:
            ValueError: If the text is not complete JSON, or does not fit the schema (the message says why).
        """
        value = parse_json(text)
        schema = self.schema
        if is_basemodel_subclass(schema):
            validate = getattr(schema, "model_validate", None) or schema.parse_obj
            try:
                return validate(value)
            except ValueError as err:  # pydantic's ValidationError (v1 and v2) is a ValueError
                raise ValueError(f"the JSON does not fit {self.name}: {_short(err)}") from None
        from typing_extensions import is_typeddict

        if is_typeddict(schema):
            from pydantic import TypeAdapter

            try:
                return TypeAdapter(schema).validate_python(value)
            except ValueError as err:
                raise ValueError(f"the JSON does not fit {self.name}: {_short(err)}") from None
        try:  # a JSON-schema dict: the grammar itself is the validator
            check_text(self.constraint, json.dumps(value, ensure_ascii=False))
        except ValueError as err:
            raise ValueError(f"the JSON does not fit {self.name}: {err}") from None
        return value

    def instructions(self) -> str:
        """The prompt's format line, with a compact example of the object."""
        return f"Reply with JSON only, in this form: {example_of(self.constraint.json_schema())}"


def _short(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if "errors.pydantic.dev" not in line]
    return " ".join(line.strip() for line in lines)[:300]


class SchemaParser(BaseOutputParser[Any]):
    """LangChain output parser of a reply into a schema (see :class:`SchemaReader`)."""

    reader: Any

    def parse(self, text: str) -> Any:
        """Parse and validate.

        Raises:
            OutputParserException: If the text does not hold the schema (``llm_output`` is the text).
        """
        try:
            return self.reader.read(text)
        except ValueError as err:
            message = f"Could not parse {self.reader.name}: {err}"
            raise OutputParserException(message, llm_output=text) from err

    @property
    def _type(self) -> str:
        return "fslm_schema"

    def get_format_instructions(self) -> str:
        """The prompt's format line."""
        return str(self.reader.instructions())


def structured_output_type(reader: SchemaReader) -> type[StageOutput]:
    """A stage output type for ``reader``'s schema: its constraint, its strict parsing."""

    class Structured(StageOutput):
        type_name: ClassVar[str] = "structured"
        value: Any

        @classmethod
        def constraint(cls) -> OutputConstraint:
            return reader.constraint

        @classmethod
        def from_text(cls, text: str) -> Structured:
            return cls(value=reader.read(text))

        def as_text(self) -> str:
            return to_text(self.value)

    Structured.__name__ = Structured.__qualname__ = f"Structured[{reader.name}]"
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


@dataclass(frozen=True, eq=False)
class Structured:
    """A structured-output setting: what the last stage becomes (one per ``with_structured_output`` call).

    Attributes:
        schema: The caller's schema.
        parser: Parses the reply text into the schema's value.
        output_type: The last stage's output type.
        instructions: The format line added to the last stage's prompt.
        on_parse_error: ``raise`` or ``pass_raw`` (``include_raw``: the caller records the error).
    """

    schema: Any
    parser: BaseOutputParser[Any]
    output_type: type[StageOutput]
    instructions: str
    on_parse_error: str = "raise"

    @classmethod
    def of(cls, schema: Any, method: str | None = None, include_raw: bool = False) -> Structured:
        """The setting for ``schema``; checked now, so a bad schema fails before any generation.

        Raises:
            ValueError: For an unknown method, or no schema without ``json_mode``.
            ConstraintError: For a recursive or unsupported schema, naming it.
        """
        if method is not None and method not in STRUCTURED_METHODS:
            raise ValueError(f"Unknown structured-output method {method!r}; use one of {STRUCTURED_METHODS}.")
        if schema is None and method != "json_mode":
            raise ValueError("with_structured_output needs a schema (or method='json_mode').")
        on_parse_error = "pass_raw" if include_raw else "raise"
        if is_stage_output(schema):
            parser: BaseOutputParser[Any] = StageOutputParser(output_type=schema)
            return cls(schema, parser, schema, parser.get_format_instructions(), on_parse_error)
        reader = SchemaReader.of(schema)
        output_type = structured_output_type(reader)
        return cls(schema, SchemaParser(reader=reader), output_type, reader.instructions(), on_parse_error)

    def stage(self, stage: SLMRunnable) -> SLMRunnable:
        """A copy of ``stage`` that asks for the schema, generates under its constraint and parses into it.

        The stage's own stop sequences are dropped for a JSON schema (a JSON value may hold them; a stop
        would cut it); the engine is asked to compile the constraint now (``check_constraint``).
        """
        template_safe = self.instructions.replace("{", "{{").replace("}", "}}")
        updates: dict[str, Any] = {
            "prompt": f"{stage.prompt}\n\n{template_safe}",
            "output_type": self.output_type,
            "on_parse_error": self.on_parse_error,
        }
        if not is_stage_output(self.schema):
            updates["generation"] = stage.generation.model_copy(update={"stop": []})
        typed = stage.model_copy(update=updates)
        constraint = self.output_type.constraint()
        check = getattr(stage.engine, "check_constraint", None)
        if constraint is not None and callable(check):
            check(constraint, stage.name)
        return typed


def structured_chat(
    chat: Any, schema: Any, *, include_raw: bool, method: str | None, strict: bool | None
) -> Runnable[Any, Any]:
    """``ChatFSLM.with_structured_output``: the chat with its last stage typed as ``schema``, then its parser.

    With ``include_raw`` the reply comes as ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``
    (a reply that does not parse is handed on raw, ``parsed=None``), as LangChain's chat models do.
    """
    setting = Structured.of(schema, method, include_raw)
    setting.stage(chat.stack.stages[-1])  # checks the constraint with the engine now, before any call
    output_schema = None
    if schema is not None and not is_stage_output(schema):
        output_schema = setting.output_type.constraint().json_schema()  # type: ignore[union-attr]
    llm = chat.model_copy(update={"structured": setting}).bind(
        ls_structured_output_format={
            "kwargs": {"method": method or "json_schema", "strict": strict},
            "schema": output_schema,
        }
    )
    parser = setting.parser
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    with_fallback = parsed.with_fallbacks([failed], exception_key="parsing_error")
    return RunnableMap(raw=llm) | with_fallback


def structured_stack(stack: Any, schema: Any, *, include_raw: bool) -> Runnable[Any, Any]:
    """``FSLMChain.with_structured_output``: the stack with its last stage typed as ``schema``; its value.

    With ``include_raw`` it returns ``{"raw": str, "parsed": ..., "parsing_error": ...}``: ``raw`` is the
    last stage's text as the model wrote it; a reply that does not parse gives ``parsed=None`` and the
    :class:`~langchain_fslm.errors.StageOutputError` as ``parsing_error``.
    """
    if schema is None:
        raise InvalidInputError("FSLMChain.with_structured_output needs a schema.")
    setting = Structured.of(schema, include_raw=include_raw)
    typed = setting.stage(stack.stages[-1])
    variant = stack.model_copy(update={"stages": [*stack.stages[:-1], typed], "include_handoffs": True})

    def value_of(output: Any) -> Any:
        from langchain_fslm.errors import StageOutputError

        result = output.results[-1]
        parsed = result.value
        if parsed is not None and not is_stage_output(schema):
            parsed = parsed.value  # type: ignore[attr-defined]
        if not include_raw:
            return parsed
        error = None
        if result.value is None:
            error = StageOutputError(result.stage, result.raw, result.parse_error or "did not parse")
        return {"raw": result.raw, "parsed": parsed, "parsing_error": error}

    return variant | RunnableLambda(value_of, name="structured_output")
