"""Turn a model spec string into a LangChain runnable, so the same chain can run with any model swapped in.

Specs:

* ``default``: the default stack (:meth:`FSLMChain.default`: the shipped trained one) on the embedded base;
* ``stack:DIR`` or a stack folder path: a saved FSLM stack (:meth:`FSLMChain.from_pretrained`);
* ``base`` or ``hf:SOURCE``: the bare base model (``base`` = the embedded SmolLM2-135M-Instruct, or any
  source :func:`~langchain_fslm.models.load_base_model` takes) as a langchain-huggingface
  ``ChatHuggingFace`` over a ``HuggingFacePipeline`` (a plain ``HuggingFacePipeline`` LLM when the
  tokenizer has no chat template), greedy;
* ``openai:MODEL``: ``langchain_openai.ChatOpenAI(model=MODEL, temperature=0)`` (needs the ``remote``
  extra and ``OPENAI_API_KEY``);
* ``module:attr``: any importable LangChain chat model / LLM / Runnable, or a zero-argument factory of one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable

from langchain_fslm.errors import FSLMError
from langchain_fslm.models import EMBEDDED_DEFAULT, BaseModelRef


class ModelSpecError(FSLMError):
    """A model spec cannot be resolved into a model."""


@dataclass
class ResolvedSpec:
    """A model ready to drop into a chain.

    Attributes:
        spec: The spec as given.
        label: Short name for tables and plots.
        model: The LangChain runnable (chat model, LLM, or FSLM stack).
        local: Whether it runs in this process (peak memory is meaningful).
        tokenizer: A tokenizer to count tokens with when the model reports no usage.
    """

    spec: str
    label: str
    model: Runnable[Any, Any]
    local: bool
    tokenizer: Any = None


def huggingface_model(
    source: str = EMBEDDED_DEFAULT, max_new_tokens: int = 64
) -> tuple[Runnable[Any, Any], Any]:
    """The bare base model as a langchain-huggingface model (its own copy, no adapters), greedy.

    Returns:
        The LangChain model and its tokenizer.
    """
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import pipeline

    from langchain_fslm.models import load_base_model

    model, tokenizer = load_base_model(BaseModelRef(source=source))
    generator = pipeline(
        "text-generation",
        model=model,
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        repetition_penalty=1.1,
        return_full_text=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    llm = HuggingFacePipeline(pipeline=generator)
    if getattr(tokenizer, "chat_template", None):
        return ChatHuggingFace(llm=llm, tokenizer=tokenizer), tokenizer
    return llm, tokenizer


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelSpecError(f"Model spec {spec!r}: cannot import module {module_name!r} ({err})") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSpecError(f"Model spec {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Runnable) and callable(obj):
        obj = obj()
    if not isinstance(obj, Runnable):
        raise ModelSpecError(f"Model spec {spec!r} is a {type(obj).__name__}, not a LangChain Runnable/model")
    return obj


def resolve_spec(spec: str, *, max_new_tokens: int = 64) -> ResolvedSpec:
    """Resolve a model spec (see the module docs).

    Args:
        spec: The spec.
        max_new_tokens: Answer budget for the local models built here (the stack's last stage, the
            bare base model).

    Raises:
        ModelSpecError: If the spec matches no form, or its target cannot be loaded.
    """
    from langchain_fslm.chain import FSLMChain

    if spec == "default":
        chain = FSLMChain.default(engine="torch").with_generation(max_new_tokens=max_new_tokens)
        engine = chain.stages[-1].engine
        return ResolvedSpec(spec, "fslm-default", chain, True, getattr(engine, "tokenizer", None))
    if spec.startswith("stack:") or Path(spec).is_dir():
        folder = Path(spec.removeprefix("stack:"))
        if not folder.is_dir():
            raise ModelSpecError(f"Stack folder not found: {folder}")
        chain = FSLMChain.from_pretrained(folder, engine="torch").with_generation(
            max_new_tokens=max_new_tokens
        )
        engine = chain.stages[-1].engine
        return ResolvedSpec(spec, folder.name, chain, True, getattr(engine, "tokenizer", None))
    if spec == "base" or spec.startswith("hf:"):
        source = EMBEDDED_DEFAULT if spec == "base" else spec.removeprefix("hf:")
        model, tokenizer = huggingface_model(source, max_new_tokens)
        label = "base (zero-shot)" if spec == "base" else f"hf:{Path(source).name}"
        return ResolvedSpec(spec, label, model, True, tokenizer)
    if spec.startswith("openai:"):
        try:
            from langchain_openai import ChatOpenAI
        except ImportError as err:
            raise ModelSpecError("openai:<model> needs langchain-openai (pip install '.[remote]')") from err
        return ResolvedSpec(spec, spec, ChatOpenAI(model=spec.removeprefix("openai:"), temperature=0), False)
    if ":" in spec:
        return ResolvedSpec(spec, spec.rpartition(":")[2], _import(spec), False)
    raise ModelSpecError(
        f"Unknown model spec {spec!r}: use default, base, hf:SOURCE, stack:DIR (or a stack folder), "
        "openai:MODEL or module:attr"
    )


__all__ = ["ModelSpecError", "ResolvedSpec", "huggingface_model", "resolve_spec"]
