"""Tool calling for :class:`~langchain_fslm.ChatFSLM`: tools in the prompt, the reply constrained to a call.

``ChatFSLM.bind_tools(tools, tool_choice=...)`` binds the tools (LangChain's OpenAI format). Per call, the
stack's last stage becomes a tool stage (:meth:`ToolSetting.stage`):

- its system block lists the tools, each with a compact picture of its arguments, and says how to call one
  (small chat templates such as SmolLM2's have no ``tools=`` slot, so the block is the documented form);
- it generates under a constraint (see :meth:`ToolSetting.constraint`): for ``any``/``required`` or a tool
  name, one JSON object ``{"name": <a tool name>, "arguments": <that tool's arguments>}`` (``anyOf`` per
  tool, objects closed, properties in declared order); for ``auto`` a lark grammar: plain text (not starting
  with ``{``) or such a call; for ``none`` free text, without the tools;
- its reply is read strictly: a call must be complete and fit its tool's schema, so a cut-off call is an
  error (regenerated, then raised), never a call with missing arguments.

The reply comes back as an ``AIMessage`` with ``tool_calls`` (ids ``call_<hex>``, empty content), or with the
text. Earlier calls and ``ToolMessage`` results in the history are rendered in the transcript in the same
JSON form (see :func:`langchain_fslm.inputs.messages_to_text`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import uuid4

from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import ConstraintError
from langchain_fslm.outputs import StageOutput
from langchain_fslm.schemas import (
    check_compiles,
    check_text,
    constraint_schema,
    example_of,
    parse_json,
    unfence,
)
from langchain_fslm.stage import SLMRunnable

__all__ = ["TOOL_CHOICES", "ToolReply", "ToolSetting", "ToolSpec", "call_json", "new_call_id"]

TOOL_CHOICES = ("auto", "any", "required", "none")
"""``tool_choice`` words (``required`` is ``any``); any other string must name a bound tool."""

TEXT_RULE = r"/[^{\s][\s\S]*/"
"""The ``auto`` grammar's text branch: any text that does not start with ``{`` (a call does) or a space."""


def new_call_id() -> str:
    """A tool call id, as OpenAI-style models write them: ``call_`` and 24 hex digits."""
    return f"call_{uuid4().hex[:24]}"


def call_json(name: str, arguments: Any) -> str:
    """A tool call as the model writes it (and as earlier calls are shown to it)."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, description and argument schema (fitted: refs inlined, closed, in order)."""

    name: str
    description: str
    parameters_json: str

    @property
    def parameters(self) -> dict[str, Any]:
        """The argument schema."""
        return dict(json.loads(self.parameters_json))

    @classmethod
    def of(cls, tool: Any) -> ToolSpec:
        """Convert with LangChain's ``convert_to_openai_tool``, then fit the argument schema.

        Raises:
            ConstraintError: For a tool that cannot be converted, has no argument schema, or a recursive
                or unsupported one, naming it.
        """
        from langchain_core.utils.function_calling import convert_to_openai_tool

        label = getattr(tool, "name", None) or getattr(tool, "__name__", None) or repr(tool)[:60]
        try:
            spec = convert_to_openai_tool(tool)
        except (ValueError, TypeError, KeyError) as err:
            raise ConstraintError(f"Tool {label!r} cannot be bound: {err}") from None
        function = spec.get("function", spec) if isinstance(spec, dict) else {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ConstraintError(f"Tool {label!r} has no name.")
        params = function.get("parameters")
        if not isinstance(params, dict):
            raise ConstraintError(
                f"Tool {name!r} has no argument schema ('parameters'); a constrained call needs one "
                '(use {"type": "object", "properties": {}} for a tool without arguments).'
            )
        fitted = constraint_schema(params, name)
        fitted.setdefault("type", "object")
        return cls(name, str(function.get("description") or ""), json.dumps(fitted, ensure_ascii=False))

    def call_schema(self) -> dict[str, Any]:
        """The schema of one call of this tool: ``{"name": <this name>, "arguments": <its schema>}``."""
        return {
            "type": "object",
            "properties": {"name": {"const": self.name}, "arguments": self.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }

    def line(self) -> str:
        """The tool's line in the prompt."""
        about = f": {self.description.strip().splitlines()[0]}" if self.description.strip() else ""
        return f"- {self.name}{about} Arguments: {example_of(self.parameters)}"


class ToolReply(StageOutput):
    """A tool stage's reply: one tool call, or text.

    Attributes:
        text: The text reply (empty for a call).
        name: The called tool (None for text).
        arguments: The call's arguments.
    """

    type_name: ClassVar[str] = "tool_reply"
    # under tool_choice="auto" a text reply the budget cut is a reply; a cut call is refused by the parser
    accepts_cut: ClassVar[bool] = True
    text: str = ""
    name: str | None = None
    arguments: dict[str, Any] | None = None

    def as_text(self) -> str:  # noqa: D102
        return self.text if self.name is None else call_json(self.name, self.arguments)

    def tool_calls(self) -> list[dict[str, Any]]:
        """The reply's tool calls in LangChain's form (each with a new id); empty for text."""
        if self.name is None:
            return []
        return [
            {"name": self.name, "args": dict(self.arguments or {}), "id": new_call_id(), "type": "tool_call"}
        ]


@dataclass(frozen=True)
class ToolSetting:
    """Bound tools and a normalised ``tool_choice`` (``auto``, ``any``, ``none`` or a tool name)."""

    tools: tuple[ToolSpec, ...]
    choice: str = "auto"

    @classmethod
    def of(cls, tools: Sequence[Any], tool_choice: Any = None) -> ToolSetting:
        """Check the tools and the choice.

        Raises:
            ConstraintError: For a tool without a usable schema (see :meth:`ToolSpec.of`).
            ValueError: For different tools of one name, or a ``tool_choice`` that is no word and no tool's
                name.
        """
        unique: dict[tuple[str, str], ToolSpec] = {}
        for spec in (ToolSpec.of(t) for t in tools):  # the same tool twice (a model and its schema) is one
            unique.setdefault((spec.name, json.dumps(_untitled(spec.parameters))), spec)
        specs = tuple(unique.values())
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Tools must have distinct names; different tools are named {duplicates}")
        return cls(specs, _choice(tool_choice, names))

    @property
    def names(self) -> list[str]:
        """The tools' names, in order."""
        return [t.name for t in self.tools]

    @property
    def callable_tools(self) -> tuple[ToolSpec, ...]:
        """The tools a reply may call (the named one, for a name choice)."""
        if self.choice in TOOL_CHOICES:
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    def call_schema(self) -> dict[str, Any]:
        """The JSON schema of one call of a callable tool (``anyOf`` per tool)."""
        calls = [t.call_schema() for t in self.callable_tools]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}

    def constraint(self) -> OutputConstraint | None:
        """The reply's constraint: a call (``any``, a name), a call or text (``auto``), none (``none``)."""
        if self.choice == "none" or not self.tools:
            return None
        label = f"tool call ({', '.join(t.name for t in self.callable_tools)})"
        schema = self.call_schema()
        if self.choice != "auto":
            return OutputConstraint.from_json_schema(schema, label, sort_keys=False)
        grammar = f"start: text | call\ntext: {TEXT_RULE}\ncall: %json {json.dumps(schema)}\n"
        return OutputConstraint.from_lark(grammar, f"text or {label}")

    def prompt(self) -> str:
        """The system block that lists the tools and says how to call one."""
        if self.choice == "none" or not self.tools:
            return ""
        lines = ["You can call these tools:", *(t.line() for t in self.tools)]
        lines.append(
            'To call a tool, reply with only a JSON object: {"name": <tool name>, "arguments": {...}}.'
        )
        if self.choice == "auto":
            lines.append(
                "If no tool is needed, or a tool result already answers the request, reply with text."
            )
        elif self.choice == "any":
            lines.append("Reply with a tool call.")
        else:
            lines.append(f"Reply with a call of the tool {self.choice!r}.")
        return "\n".join(lines)

    def read(self, text: str) -> ToolReply:
        """The reply: a complete, valid call, or (``auto``, ``none``) text.

        Raises:
            ValueError: For an unfinished or invalid call, or text where a call is required.
        """
        body = text.strip()
        if self.choice == "none" or not self.tools:
            if not body:
                raise ValueError("the reply is empty")
            return ToolReply(text=body)
        if not unfence(body).startswith("{"):
            if self.choice == "auto" and body:
                return ToolReply(text=body)
            raise ValueError(
                f'expected a tool call ({{"name": ..., "arguments": {{...}}}} of {self.names}), got text'
            )
        value = parse_json(body)
        call = OutputConstraint.from_json_schema(self.call_schema(), "tool call", sort_keys=False)
        try:
            check_text(call, json.dumps(value, ensure_ascii=False))
        except ValueError as err:
            name = value.get("name") if isinstance(value, dict) else None
            if isinstance(name, str) and name not in self.names:
                raise ValueError(
                    f"the reply calls an unknown tool {name!r}; the tools are {self.names}"
                ) from None
            if isinstance(name, str) and name not in [t.name for t in self.callable_tools]:
                raise ValueError(f"the reply calls {name!r}; tool_choice asks for {self.choice!r}") from None
            raise ValueError(f"the tool call does not fit its tool's schema: {err}") from None
        return ToolReply(name=value["name"], arguments=value["arguments"])

    def output_type(self) -> type[ToolReply]:
        """The tool stage's output type: this setting's constraint and reading."""
        setting = self

        class Reply(ToolReply):
            @classmethod
            def constraint(cls) -> OutputConstraint | None:
                return setting.constraint()

            @classmethod
            def from_text(cls, text: str) -> Reply:
                return cls(**setting.read(text).model_dump())

        Reply.__name__ = Reply.__qualname__ = "ToolReply"
        return Reply

    def check(self, engine: Any = None, stage: str | None = None) -> None:
        """Compile the constraint now (llguidance, and the engine's own ``check_constraint``).

        Raises:
            ConstraintError: Naming the stage and the tools, if it cannot be used.
        """
        constraint = self.constraint()
        if constraint is None:
            return
        check_compiles(constraint)
        check = getattr(engine, "check_constraint", None)
        if callable(check):
            check(constraint, stage)

    def stage(self, stage: SLMRunnable) -> SLMRunnable:
        """A copy of ``stage`` that sees the tools and replies with a call or text, as the choice says."""
        block = self.prompt()
        if not block:
            return stage.model_copy(update={"output_type": self.output_type()})
        system = f"{stage.system}\n\n{block}" if stage.system else block
        hint = (
            "Reply with the tool call only." if self.choice != "auto" else "Or call a tool if one is needed."
        )
        self.check(stage.engine, stage.name)
        return stage.model_copy(
            update={
                "system": system,
                "prompt": f"{stage.prompt}\n\n{hint}",
                "output_type": self.output_type(),
                "generation": stage.generation.model_copy(update={"stop": []}),
            }
        )


def _untitled(node: Any) -> Any:
    """A schema without its ``title`` labels (pydantic writes them, LangChain's conversion does not)."""
    if isinstance(node, list):
        return [_untitled(n) for n in node]
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    return node


def _choice(tool_choice: Any, names: list[str]) -> str:
    """Normalise ``tool_choice``: None -> auto, True/required -> any, an OpenAI-style dict -> its name.

    Raises:
        ValueError: For a choice that is no word and no bound tool's name, naming it.
    """
    if tool_choice is None:
        return "auto"
    if tool_choice is True:
        return "any"
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function", tool_choice)
        tool_choice = function.get("name") if isinstance(function, dict) else None
        if tool_choice is None:
            raise ValueError(f"tool_choice dict names no tool: {tool_choice!r}")
    if not isinstance(tool_choice, str):
        raise ValueError(f"tool_choice must be a string, True or a dict; got {tool_choice!r}")
    if tool_choice == "required":
        return "any"
    if tool_choice in TOOL_CHOICES or tool_choice in names:
        return tool_choice
    raise ValueError(
        f"tool_choice {tool_choice!r} is neither one of {TOOL_CHOICES} nor a bound tool's name {names}"
    )
