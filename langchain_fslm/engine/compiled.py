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
   on every core, where the BLAS matrix-vector kernels use about one core's share of the bandwidth.
   A model on ``sdpa`` attention runs :func:`decode_attention` for the call (:func:`packed_attention`):
   the compiled step attends with plain matrix products over the grouped key/value heads, which
   inductor fuses into the layer's kernel, instead of an SDPA call per layer on key/value heads
   copied out to the query heads' count;
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
# ... and batched matmuls of up to this many matrices: a decode step's attention, one per key/value head
BMM_MAX_BATCH = 64
# the name :func:`decode_attention` is registered under with transformers' ``AttentionInterface``
DECODE_ATTENTION = "fslm_decode"


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
    matmul whose left side has few rows into a multiply and a sum that inductor generates code for,
    vectorised and split over the cores. Matrices of up to :data:`GEMV_MAX_DIM` on each side qualify,
    and batched matmuls of up to :data:`BMM_MAX_BATCH` matrices (the attention of a decode step); the
    same setting lets a left side of up to that many rows through, but a compiled decode step has one.
    The option and the limits are put back afterwards. Graphs on GPUs are not affected (the
    pass's GPU rule is for long, thin matrices, not decode steps). The config is process-wide: the
    caller holds the engine's lock, and compiles elsewhere in the process during the call see it too.
    """
    from torch._inductor import config
    from torch._inductor.fx_passes import decompose_mem_bound_mm as decompose

    limits = {
        "cpu_max_other_dimension_decomposition": GEMV_MAX_DIM,
        "cpu_max_first_dimension_decomposition": BMM_MAX_BATCH,
    }
    options = dict(config.post_grad_fusion_options)
    options["decompose_mm_pass"] = limits
    # torch copies the limits from the option when it first imports the pass module, so set those
    # copies too; they are private names: should a torch release drop them, the option alone still
    # decomposes the products within torch's default limits (2,048 per side, no batches)
    previous = {name: getattr(decompose, name) for name in limits if hasattr(decompose, name)}
    for name in previous:
        setattr(decompose, name, limits[name])
    try:
        with config.patch(post_grad_fusion_options=options):
            yield
    finally:
        for name, value in previous.items():
            setattr(decompose, name, value)


def decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention of one new token, written as matrix products that inductor fuses (transformers' interface).

    In a compiled step with one query token and a boolean mask, the query heads that share a key/value
    head are stacked as rows of one product with that head (no copies of the cache), and the scores
    are masked and softmaxed in float32. Everything else (prefill, eager calls, dropout, position
    biases) goes to transformers' ``sdpa_attention_forward`` unchanged.

    Args:
        module: The attention layer.
        query: ``(batch, heads, query_len, head_dim)``.
        key: ``(batch, kv_heads, kv_len, head_dim)``.
        value: ``(batch, kv_heads, kv_len, head_dim)``.
        attention_mask: Boolean mask ``(batch, 1, query_len, kv_len)``, True where a position is seen
            (any other mask goes to SDPA).
        dropout: Dropout probability (only 0 takes this path).
        scaling: Score scale; ``head_dim ** -0.5`` if None.
        is_causal: Passed on to SDPA.
        position_bias: Passed on to SDPA.
        **kwargs: Passed on to SDPA.

    Returns:
        The output ``(batch, query_len, heads, head_dim)`` and no attention weights.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    mask = attention_mask
    if not (
        torch.compiler.is_compiling()
        and length == 1
        and mask is not None
        and mask.dtype == torch.bool
        and mask.shape[1] == 1  # one mask for every head, as SDPA's mask function makes
        and dropout == 0.0
        and position_bias is None
        and not kwargs.get("softcap")
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            position_bias=position_bias,
            **kwargs,
        )
    kv_heads = key.shape[1]
    scale = dim**-0.5 if scaling is None else scaling
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = (grouped @ key.transpose(-1, -2)).float() * scale
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(value.dtype)
    out = (probs @ value).reshape(batch, heads, 1, dim)
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Within the block, a model on ``sdpa`` attention runs :func:`decode_attention` instead.

    Registers it with transformers' ``AttentionInterface`` (and SDPA's mask function under the same
    name) and switches the model over with ``set_attn_implementation``, back afterwards. Models on
    another implementation are left as they are.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        yield
        return
    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    model.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


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
        """One compiled ``generate`` call: ``adapter`` merged, matmuls as reductions, packed attention."""
        with gemv_as_reduction(), packed_attention(model), self.merged(model, adapter):
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
