"""Log-likelihoods of many continuations with shared contexts: each context runs once, its KV cache reused.

Multiple-choice benchmarks ask for ``log P(choice | context)`` for several choices of one context (ARC,
MMLU, HellaSwag, TruthfulQA: 2-8 choices). Scoring each ``context + choice`` row from scratch runs the
context once per choice; under ``scoring="stack"`` that context is the last stage's whole rendered prompt
(the question and every handoff), so most of the work is repeated. Here the pairs are grouped by the
tokens of their context; one forward runs the distinct contexts of a batch (left-padded, as generation
pads), and one more forward runs all their continuations on the contexts' KV cache (rows repeated per
choice). The scores are those of :meth:`~langchain_fslm.engine.local.LocalEngine.loglikelihood`: the
same tokenisation (context and continuation tokenised jointly, split where the context's tokens stop
matching, the left truncated to the context window), the same positions, within float rounding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_fslm.engine.local import LocalEngine


def split_tokens(engine: LocalEngine, context: str, continuation: str) -> tuple[tuple[int, ...], list[int]]:
    """The context's and the continuation's tokens of one pair, as the engine's ``loglikelihood`` splits them.

    Returns:
        The context tokens (at least one) and the continuation tokens (at least one).
    """
    ids, n_cont = engine.pair_tokens(context, continuation)
    return tuple(ids[:-n_cont]), ids[-n_cont:]


def forward_params(engine: LocalEngine) -> set[str]:
    """Names the engine's model's ``forward`` takes (under a peft wrapper, the base model's)."""
    model = engine.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _batches(groups: list[list[int]], contexts: int) -> list[list[list[int]]]:
    """Consecutive groups, ``contexts`` of them per batch (a batch's choices all go in one forward)."""
    return [groups[start : start + contexts] for start in range(0, len(groups), contexts)]


def shared_context_loglikelihood(
    engine: LocalEngine,
    pairs: Sequence[tuple[str, str]],
    adapter: str | None = None,
    batch_size: int = 8,
) -> list[tuple[float, bool, int]]:
    """Log-probability of each continuation given its context, each distinct context run once.

    Args:
        engine: A local (transformers) engine.
        pairs: ``(context, continuation)`` texts (contexts as given: render them first for the chat
            template).
        adapter: Adapter to score with, or None for the base model.
        batch_size: Distinct contexts per forward; all their continuations run in one more forward
            (a forward of many rows costs far less per row than one of a single row, on CPU too).

    Returns:
        Per pair: summed log-probability, whether the continuation is the greedy one, and its number
        of tokens (as :meth:`~langchain_fslm.engine.local.LocalEngine.loglikelihood`).
    """
    params = forward_params(engine)
    cache_arg = next((name for name in ("cache", "past_key_values") if name in params), None)
    if cache_arg is None:  # a model that takes no KV cache: score every row from scratch
        return engine.loglikelihood(pairs, adapter=adapter, batch_size=batch_size)
    split = [split_tokens(engine, c, x) for c, x in pairs]
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (context, _) in enumerate(split):
        by_context.setdefault(context, []).append(i)
    results: list[tuple[float, bool, int] | None] = [None] * len(pairs)
    groups = sorted(by_context.values(), key=lambda g: len(split[g[0]][0]))  # little padding per batch
    for batch in _batches(groups, max(1, batch_size)):
        for i, scored in _score_batch(engine, split, batch, adapter, cache_arg, "logits_to_keep" in params):
            results[i] = scored
    return [r for r in results if r is not None]


def _score_batch(
    engine: LocalEngine,
    split: list[tuple[tuple[int, ...], list[int]]],
    groups: list[list[int]],
    adapter: str | None,
    cache_arg: str,
    keep_last: bool,
) -> list[tuple[int, tuple[float, bool, int]]]:
    """Score the pairs of some context groups: one forward for the contexts, one for the continuations."""
    import torch

    pad = engine.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    contexts = [list(split[g[0]][0]) for g in groups]
    width = max(len(c) for c in contexts)
    ctx_ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts])
    ctx_mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
    members = [i for g in groups for i in g]
    owner = torch.tensor([k for k, g in enumerate(groups) for _ in g])
    conts = [split[i][1] for i in members]
    cont_width = max(len(c) for c in conts)
    cont_ids = torch.tensor([c + [pad] * (cont_width - len(c)) for c in conts])
    cont_mask = torch.tensor([[1] * len(c) + [0] * (cont_width - len(c)) for c in conts])
    full_mask = torch.cat([ctx_mask[owner], cont_mask], dim=1)
    ctx_kwargs: dict[str, Any] = engine._adapter_kwargs([adapter] * len(groups))
    cont_kwargs: dict[str, Any] = engine._adapter_kwargs([adapter] * len(members))
    if engine._takes_position_ids:  # a left-padded row starts at position 0, as in generate and loglikelihood
        ctx_kwargs["position_ids"] = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
        cont_kwargs["position_ids"] = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
    if keep_last:  # the contexts' last logits are all that is read
        ctx_kwargs["logits_to_keep"] = 1
    with engine.lock, torch.inference_mode():
        out = engine.model(input_ids=ctx_ids, attention_mask=ctx_mask, use_cache=True, **ctx_kwargs)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)[owner]  # predicts each first token
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        cache.reorder_cache(owner)  # one cache row per continuation
        cont_kwargs[cache_arg] = cache
        logits = engine.model(input_ids=cont_ids, attention_mask=full_mask, **cont_kwargs).logits
    rest = torch.log_softmax(logits.float(), dim=-1)
    scored: list[tuple[int, tuple[float, bool, int]]] = []
    for row, i in enumerate(members):
        tokens = conts[row]
        n = len(tokens)
        target = torch.tensor(tokens)
        pred = torch.cat([first[row : row + 1], rest[row, : n - 1]], dim=0)
        token_lp = pred.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        greedy = bool((pred.argmax(-1) == target).all())
        scored.append((i, (float(token_lp.sum()), greedy, n)))
    return scored


__all__ = ["shared_context_loglikelihood", "split_tokens"]
