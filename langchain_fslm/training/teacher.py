"""Teachers: anything that writes each stage's target text from that stage's prompt.

A teacher is a LangChain chat model or LLM (``BaseLanguageModel``: ChatOllama, ChatOpenAI, a vLLM
endpoint, HuggingFacePipeline, ...) or a local base model run through our own engine. A spec string
selects common ones:

- ``hf:embedded`` or ``hf:<folder|.gguf|hub id>``: a local model through :class:`LocalEngine` (the same
  chat template and decoding settings as the stack's stages);
- ``openai:<model>`` (needs ``langchain-openai``), ``ollama:<model>`` (needs ``langchain-ollama``);
- ``module:attr``: an importable ``BaseLanguageModel`` instance or a zero-argument factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

from langchain_fslm.engine.base import GenerationRequest, cut_at_stop
from langchain_fslm.errors import InvalidInputError
from langchain_fslm.manifest import StageSpec


class Teacher(Protocol):
    """Writes one stage's texts for a batch of rendered stage prompts."""

    name: str

    def write(self, spec: StageSpec, prompts: Sequence[str]) -> list[str]:
        """Return one completion per prompt (stop sequences already cut)."""
        ...


class EngineTeacher:
    """A local model run through an engine, with each stage's own generation settings.

    Where the engine can constrain, it writes under the stage's output type (a small teacher then writes
    texts of the type).
    """

    def __init__(self, engine: Any, name: str) -> None:
        self.engine = engine
        self.name = name

    def write(self, spec: StageSpec, prompts: Sequence[str]) -> list[str]:  # noqa: D102
        from langchain_fslm.engine.registry import capabilities_of
        from langchain_fslm.outputs import output_type_by_name

        constraint = output_type_by_name(spec.output_type).constraint() if spec.constrained else None
        if not capabilities_of(self.engine).constrained:
            constraint = None
        requests = [
            GenerationRequest(
                prompt=p, config=spec.generation, system=spec.system, stage=spec.name, constraint=constraint
            )
            for p in prompts
        ]
        return [g.text for g in self.engine.generate(requests)]


class LangChainTeacher:
    """Any LangChain chat model or LLM, called with ``.batch`` on the stage prompts."""

    def __init__(self, model: Any, name: str | None = None) -> None:
        from langchain_core.language_models import BaseLanguageModel

        if not isinstance(model, BaseLanguageModel):
            raise InvalidInputError(
                f"teacher must be a LangChain chat model or LLM, not {type(model).__name__}"
            )
        self.model = model
        self.name = name or model_label(model)

    def write(self, spec: StageSpec, prompts: Sequence[str]) -> list[str]:  # noqa: D102
        from langchain_core.messages import HumanMessage, SystemMessage

        inputs: list[Any] = []
        for p in prompts:
            messages: list[Any] = [SystemMessage(spec.system)] if spec.system else []
            inputs.append([*messages, HumanMessage(p)])
        outputs = self.model.batch(inputs)
        texts = [o.text if hasattr(o, "text") and not isinstance(o, str) else str(o) for o in outputs]
        return [cut_at_stop(t.strip(), spec.generation.stop)[0] for t in texts]


def model_label(model: Any) -> str:
    """A LangChain model's class and model name, e.g. ``ChatOllama(llama3.2:3b)``."""
    for attr in ("model_name", "model", "model_id", "repo_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return f"{type(model).__name__}({value})"
    return type(model).__name__


def resolve_teacher(spec: str | Any) -> Teacher:
    """Turn a teacher spec string (or a LangChain model) into a :class:`Teacher`.

    Raises:
        InvalidInputError: On an unknown spec or a missing optional package.
    """
    if not isinstance(spec, str):
        return spec if hasattr(spec, "write") else LangChainTeacher(spec)
    kind, _, rest = spec.partition(":")
    if not rest:
        raise InvalidInputError(
            f"teacher spec {spec!r}: use hf:<model>, openai:<model>, ollama:<model> or module:attr"
        )
    if kind == "hf":
        from langchain_fslm.engine.registry import create_engine, local_engine_kind
        from langchain_fslm.models import EMBEDDED_DEFAULT, BaseModelRef

        ref = BaseModelRef(source=EMBEDDED_DEFAULT if rest == "embedded" else rest)
        # the default engine: llama.cpp on a GGUF model (several times faster), else torch
        return EngineTeacher(create_engine(local_engine_kind(None, ref), ref), name=spec)
    if kind in ("openai", "ollama"):
        module, cls = {
            "openai": ("langchain_openai", "ChatOpenAI"),
            "ollama": ("langchain_ollama", "ChatOllama"),
        }[kind]
        try:
            chat_cls = getattr(importlib.import_module(module), cls)
        except ImportError as err:
            package = module.replace("_", "-")
            raise InvalidInputError(f"teacher {spec!r} needs `pip install {package}`") from err
        return LangChainTeacher(chat_cls(model=rest, temperature=0), name=spec)
    try:
        obj = getattr(importlib.import_module(kind), rest)
    except (ImportError, AttributeError) as err:
        raise InvalidInputError(f"teacher {spec!r}: cannot import {rest!r} from {kind!r} ({err})") from err
    if callable(obj) and not hasattr(obj, "batch"):
        obj = obj()
    if hasattr(obj, "write"):
        return obj
    return LangChainTeacher(obj, name=f"{spec} = {model_label(obj)}")
