"""Generation for :class:`~langchain_fslm.engine.local.LocalEngine`: batched ``generate`` calls and streams.

Requests with identical settings share one ``model.generate`` call, rows with different adapters
included (peft ``adapter_names=``); a single row may take the compiled decoding path
(:mod:`~langchain_fslm.engine.compiled`). Stop strings end a row as soon as its text holds one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from langchain_fslm.engine.base import (
    Generation,
    GenerationConfig,
    GenerationRequest,
    cut_at_stop,
    stream_until_stop,
)
from langchain_fslm.engine.compiled import CompiledDecode
from langchain_fslm.engine.local_adapters import LocalAdapters
from langchain_fslm.engine.local_constraints import ConstrainedRows, GrammarCompiler
from langchain_fslm.engine.prompt_fit import PromptFit

if TYPE_CHECKING:
    import torch


def _stopping_criteria(tokenizer: Any, stops: list[list[str]], prompt_len: int) -> Any:
    """A criterion that marks each row done once its generated text contains one of its stops."""
    import torch
    from transformers import StoppingCriteria

    longest = max((len(s) for row in stops for s in row), default=0)
    window = max(8, longest + 4)  # tokens: enough to hold the longest stop string

    class _StopOnStrings(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for i, row_stops in enumerate(stops):
                if not row_stops:
                    continue
                start = max(prompt_len, input_ids.shape[1] - window)
                text = tokenizer.decode(input_ids[i, start:], skip_special_tokens=True)
                if start == prompt_len:  # leading whitespace never counts as a stop
                    text = text.lstrip()
                done[i] = any(s in text for s in row_stops)
            return done

    return _StopOnStrings()


def _cancel_criterion(cancel: threading.Event) -> Any:
    """A criterion that ends every row once ``cancel`` is set (a stream whose consumer left)."""
    import torch
    from transformers import StoppingCriteria

    class _Cancelled(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return _Cancelled()


class LocalGeneration(PromptFit, LocalAdapters):
    """Run prompts already fitted to the context window through ``model.generate``.

    A mixin of :class:`~langchain_fslm.engine.local.LocalEngine`, which sets the attributes below.

    Attributes:
        compiled: The compiled decoding path, or None while it is off.
        max_batch_size: Most rows per ``generate`` call.
    """

    compiled: CompiledDecode | None
    grammars: GrammarCompiler | None
    max_batch_size: int

    def _constrained(self, batch: list[GenerationRequest], prompt_len: int) -> ConstrainedRows | None:
        """The logits processor for the batch's constrained rows (None when no row has a constraint)."""
        if self.grammars is None or all(r.constraint is None for r in batch):
            return None
        matchers = [
            None if r.constraint is None else self.grammars.matcher(r.constraint, r.stage) for r in batch
        ]
        return ConstrainedRows(matchers, prompt_len, sorted(self._eos_ids()))

    def _generate_kwargs(self, config: GenerationConfig) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": config.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "repetition_penalty": config.repetition_penalty,
        }
        if config.temperature > 0:
            kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _generate_prepared(self, prepared: list[tuple[GenerationRequest, str]]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(prepared)
        groups: dict[str, list[int]] = {}
        for i, (request, _) in enumerate(prepared):
            key = request.config.model_dump_json(exclude={"stop"})
            groups.setdefault(key, []).append(i)
        for group in groups.values():
            for start in range(0, len(group), self.max_batch_size):  # bounded memory for any batch size
                indices = group[start : start + self.max_batch_size]
                batch = [prepared[i] for i in indices]
                for i, generation in zip(indices, self._generate_group(batch), strict=True):
                    results[i] = generation
        return [r for r in results if r is not None]

    def _generate_group(self, prepared: list[tuple[GenerationRequest, str]]) -> list[Generation]:
        import torch

        batch = [r for r, _ in prepared]
        texts = [t for _, t in prepared]
        config = batch[0].config
        stops = [list(r.config.stop) for r in batch]
        adapters = [r.adapter for r in batch]
        with self.lock:
            encoded = self._encode(texts, config.max_new_tokens)
            prompt_len = encoded["input_ids"].shape[1]
            kwargs = self._generate_kwargs(config)
            compiled = self.compiled
            scope: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
            if compiled is not None and compiled.accepts(self.model, adapters):
                tokens = prompt_len + config.max_new_tokens
                kwargs.update(compiled.generate_kwargs(tokens, self.context_length))
                scope = compiled.call(self.model, adapters[0])
            else:
                kwargs.update(self._adapter_kwargs(adapters))
            if any(stops):
                kwargs["stopping_criteria"] = [_stopping_criteria(self.tokenizer, stops, prompt_len)]
            constrained = self._constrained(batch, prompt_len)
            if constrained is not None:
                kwargs["logits_processor"] = [constrained]
            if config.seed is not None:
                torch.manual_seed(config.seed)
            with scope, torch.inference_mode():
                output = self.model.generate(**encoded, **kwargs)
        out: list[Generation] = []
        eos = self._eos_ids()
        for i, request in enumerate(batch):
            new = output[i, prompt_len:].tolist()
            finish = "length"
            for j, tok in enumerate(new):
                if tok in eos:
                    new, finish = new[:j], "stop"
                    break
            if request.constraint is not None and self.grammars is not None:
                # the last sampled token never reached the processor: judge the whole text afresh
                done = self.grammars.finished(request.constraint, new, ended=finish == "stop")
                finish = "stop" if done else "length"
            with self.tokenizer_lock:
                text = str(self.tokenizer.decode(new, skip_special_tokens=True)).lstrip()
            text, hit = cut_at_stop(text, request.config.stop)
            if hit:
                finish = "stop"
            out.append(
                Generation(
                    text=text,
                    prompt_tokens=int(encoded["attention_mask"][i].sum()),
                    completion_tokens=len(new),
                    finish_reason=finish,
                )
            )
        return out

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the completion of one request piece by piece, honouring stop sequences.

        Text that could be the start of a stop sequence is held back until it is known not to be.
        """
        import torch
        from transformers import TextIteratorStreamer

        config = request.config
        text = self.fit(request)
        encoded = self._encode([text], config.max_new_tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generate_kwargs(config)
        kwargs.update(self._adapter_kwargs([request.adapter]))
        # a consumer that stops reading (a stop string, break, a cancelled astream) sets this: generation
        # ends within a token and frees the model for the next caller
        cancel = threading.Event()
        kwargs["stopping_criteria"] = [_cancel_criterion(cancel)]
        if config.stop:
            kwargs["stopping_criteria"].append(
                _stopping_criteria(self.tokenizer, [list(config.stop)], encoded["input_ids"].shape[1])
            )
        constrained = self._constrained([request], encoded["input_ids"].shape[1])
        if constrained is not None:
            kwargs["logits_processor"] = [constrained]
        errors: list[BaseException] = []

        def run() -> None:
            # The generating thread holds the model lock, not the consumer: a consumer that calls
            # the engine between chunks waits for this generation instead of running beside it
            # (re-entering the lock from its own thread), and a stream dropped on another thread
            # never has to release a lock it does not own.
            try:
                with self.lock:
                    if config.seed is not None:
                        torch.manual_seed(config.seed)
                    with torch.inference_mode():
                        self.model.generate(**encoded, **kwargs, streamer=streamer)
            except BaseException as err:  # surfaced in the caller's thread below
                errors.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        ended = False

        def pieces() -> Iterator[str]:
            nonlocal ended
            yield from streamer
            ended = True

        try:
            yield from stream_until_stop(pieces(), config.stop)
        finally:
            if not ended:  # stopped early (stop string or consumer left): end the generation now
                cancel.set()
                for _ in streamer:
                    pass
            worker.join()
        if errors:
            raise errors[0]
