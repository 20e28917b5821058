"""Compiled batch-1 decoding: the stage's adapter merged into the base weights, static cache, torch.compile.

Opt-in through ``LocalEngine(compile_decode=True)``. A single-row call (the latency path: one
``invoke`` of a stack runs its stages one row at a time) is run as follows:

1. the row's LoRA adapter is added into the base weights (``W += B @ A * scale``, peft's
   ``get_delta_weight``), and peft's adapters are switched off for the call (``disable_adapter``), so
   the model the compiler sees is the same plain model for every adapter and for none: it compiles
   once, not once per adapter;
2. ``generate`` runs with a static KV cache and transformers' ``CompileConfig`` (the decode step is
   compiled; the prefill stays eager). The cache is sized to a power of two (at least 512 tokens), and
   transformers keeps the largest size used so far, so a new prompt length does not recompile.
   Inductor's ``decompose_mm_pass`` is switched on for the call (:func:`gemv_as_reduction`): on a CPU
   it compiles each one-row matrix product into a reduction kernel of its own that reads the weights
   on every core, where the BLAS matrix-vector kernels use about one core's share of the bandwidth;
3. the base weights are restored from a copy taken before the first merge (an exact copy: subtracting
   the delta again would leave rounding errors that add up over calls).

Costs: the first compiled call compiles (tens of seconds on a small CPU, less once inductor's disk cache
holds the kernels), again for each larger cache size; the copies of the adapted base weights take
memory (for LoRA on ``q_proj``/``v_proj`` of SmolLM2-135M: 30 x (576x576 + 192x576) fp32 = 53 MB).
Calls with several rows, DoRA adapters, and streamed stages (``LocalEngine.stream``) run the eager
mixed-adapter path as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MIN_CACHE_LEN = 512
# decompose one-row matmuls up to this size on either side: every projection and output head in sight
# (vocabularies up to 262,144 tokens)
GEMV_MAX_DIM = 1 << 18


def cache_len(tokens: int, limit: int) -> int:
    """The static cache size for ``tokens`` (prompt plus new tokens): a power of two, at least 512.

    Never more than ``limit`` (the model's context length), which a fitted prompt never passes.
    """
    size = MIN_CACHE_LEN
    while size < tokens:
        size *= 2
    return min(size, limit)


@contextmanager
def gemv_as_reduction() -> Iterator[None]:
    """Within the block, inductor compiles one-row matrix products on the CPU as its own reduction kernels.

    Switches on inductor's ``decompose_mm_pass`` (``post_grad_fusion_options``), which rewrites a
    matmul whose left side has one row into a multiply and a sum that inductor generates code for,
    vectorised and split over the cores. Matrices of up to :data:`GEMV_MAX_DIM` on each side qualify;
    the option and the limit are put back afterwards. Graphs on GPUs are not affected (the
    pass's GPU rule is for long, thin matrices, not decode steps). The config is process-wide: the
    caller holds the engine's lock, and compiles elsewhere in the process during the call see it too.
    """
    from torch._inductor import config
    from torch._inductor.fx_passes import decompose_mem_bound_mm as decompose

    options = dict(config.post_grad_fusion_options)
    options["decompose_mm_pass"] = {"cpu_max_other_dimension_decomposition": GEMV_MAX_DIM}
    # torch copies the limit from the option when it first imports the pass module, so set that copy
    # too; it is a private name: should a torch release drop it, the option alone still decomposes
    # the products within torch's default limit (2,048)
    limit = "cpu_max_other_dimension_decomposition"
    previous = getattr(decompose, limit, None)
    if previous is not None:
        setattr(decompose, limit, GEMV_MAX_DIM)
    try:
        with config.patch(post_grad_fusion_options=options):
            yield
    finally:
        if previous is not None:
            setattr(decompose, limit, previous)


class CompiledDecode:
    """Merges one adapter into the base weights around a compiled ``generate`` call.

    Args:
        backend: ``torch.compile`` backend (``"inductor"``; ``"eager"`` only traces, for tests).
    """

    def __init__(self, backend: str = "inductor") -> None:
        from transformers import CompileConfig

        self.compile_config = CompileConfig(fullgraph=False, dynamic=False, backend=backend)
        # transformers compiles on accelerators only unless this flag (its own, documented in its
        # source as the switch for e.g. CPU) is set
        self.compile_config._compile_all_devices = True  # type: ignore[assignment]
        # lora layer -> its base weight before any merge
        self._originals: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def accepts(self, model: Any, adapters: list[str | None]) -> bool:
        """Whether a call with these rows' adapters can take the compiled path."""
        if len(adapters) != 1:
            return False
        adapter = adapters[0]
        if adapter is None:
            return True
        config = getattr(model, "peft_config", {}).get(adapter)
        return config is not None and not getattr(config, "use_dora", False)

    def generate_kwargs(self, tokens: int, limit: int) -> dict[str, Any]:
        """Extra ``generate`` arguments for a call of ``tokens`` (prompt plus new tokens).

        Args:
            tokens: Prompt plus new tokens of the call.
            limit: The model's context length.
        """
        return {
            "cache_implementation": "static",
            "compile_config": self.compile_config,
            "max_cache_len": cache_len(tokens, limit),
        }

    @contextmanager
    def call(self, model: Any, adapter: str | None) -> Iterator[None]:
        """The scope of one compiled ``generate`` call: ``adapter`` merged, one-row matmuls as reductions."""
        with gemv_as_reduction(), self.merged(model, adapter):
            yield

    @contextmanager
    def merged(self, model: Any, adapter: str | None) -> Iterator[None]:
        """Within the block, ``model`` computes the base model plus ``adapter`` with no LoRA layers active.

        The caller holds the engine's lock: the base weights are shared by every stage.
        """
        import torch

        if not hasattr(model, "peft_config"):  # no adapters loaded: nothing to merge or switch off
            yield
            return
        layers = [] if adapter is None else self._layers(model, adapter)
        try:
            with torch.no_grad():
                for layer in layers:
                    weight = layer.get_base_layer().weight
                    if layer not in self._originals:
                        self._originals[layer] = weight.detach().clone()
                    weight.add_(layer.get_delta_weight(adapter).to(weight.dtype))
            with model.disable_adapter():
                yield
        finally:
            with torch.no_grad():
                for layer in layers:
                    original = self._originals.get(layer)
                    if original is not None:
                        layer.get_base_layer().weight.copy_(original)

    @staticmethod
    def _layers(model: Any, adapter: str) -> list[Any]:
        from peft.tuners.lora import LoraLayer

        return [
            m
            for m in model.modules()
            if isinstance(m, LoraLayer) and (adapter in m.lora_A or adapter in m.lora_embedding_A)
        ]
