"""Local generation with transformers + peft: one base model in memory, many LoRA adapters.

Rows of one batch may use different adapters (peft ``adapter_names=``), so every stage of a stack and
every concurrent caller share one model object. A lock serialises access to the model, and a
:class:`~langchain_fslm.engine.batcher.MicroBatcher` merges greedy requests that arrive together (from
threads, ``ainvoke`` or different stages) into one ``generate`` call instead of queueing them.

Prompts that do not fit the context window are refused with :class:`PromptTooLongError` (default) or,
with ``GenerationConfig(on_too_long="truncate_left")``, cut from the left with a
:class:`PromptTruncatedWarning`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_fslm.engine.adapter_check import check_adapter
from langchain_fslm.engine.base import (
    Generation,
    GenerationConfig,
    GenerationRequest,
    cut_at_stop,
    stream_until_stop,
)
from langchain_fslm.engine.batcher import MicroBatcher
from langchain_fslm.engine.compiled import CompiledDecode
from langchain_fslm.errors import AdapterError, PromptTooLongError, PromptTruncatedWarning
from langchain_fslm.models import BaseModelRef, load_base_model

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" inside a mixed batch

_ENGINES: dict[str, LocalEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(ref: BaseModelRef) -> LocalEngine:
    """Return the process-wide engine for a base model, loading it on first use.

    Stacks (and stages) on the same base share one model object this way.
    """
    key = ref.key()
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = LocalEngine.from_ref(ref)
            _ENGINES[key] = engine
        return engine


def _strip_lora_layers(model: Any) -> None:
    """Undo a failed first ``PeftModel.from_pretrained`` on a plain model (it injects in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(model):
            delattr(model, attr)


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


class LocalEngine:
    """A transformers causal LM plus its LoRA adapters, shared by every stage on that base.

    Args:
        model: A causal LM (plain or already a ``PeftModel``).
        tokenizer: Its tokenizer.
        base_ref: Where the model came from (kept for saving stacks).
        use_chat_template: Wrap prompts in the tokenizer's chat template. Default: when it has one.
        batch_window_ms: How long a caller waits for concurrent greedy requests to join its
            ``generate`` call, and again while more keep arriving (at most 10 windows in all; 0: only
            requests already waiting join). ``None`` turns micro-batching off.
        max_batch_size: Most rows per ``generate`` call: requests merged from concurrent callers, and
            a single caller's larger batch, which runs in chunks of this size.
        num_threads: Torch intra-op threads (process-wide; default: torch's choice, one per core).
        compile_decode: Run single-row calls with their adapter merged into the base weights, a
            static KV cache and ``torch.compile``, one-row matmuls compiled as inductor reductions and
            the attention fused into the layer kernels (:mod:`~langchain_fslm.engine.compiled`):
            about 2.4x faster decoding on a CPU once compiled, at the price of a compile on first use.
            Off by default.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        base_ref: BaseModelRef | None = None,
        use_chat_template: bool | None = None,
        batch_window_ms: float | None = 2.0,
        max_batch_size: int = 32,
        num_threads: int | None = None,
        compile_decode: bool = False,
    ) -> None:
        from langchain_fslm.models import prepare_tokenizer

        if num_threads is not None:
            import torch

            torch.set_num_threads(num_threads)

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.base_ref = base_ref
        if use_chat_template is None:
            use_chat_template = getattr(tokenizer, "chat_template", None) is not None
        self.use_chat_template = use_chat_template
        self.adapter_paths: dict[str, str] = {}
        self.adapter_users: dict[str, int] = {}  # adapter -> loads not yet released
        self.lock = threading.RLock()
        self.tokenizer_lock = threading.RLock()
        self.compiled = CompiledDecode() if compile_decode else None
        self.batcher: MicroBatcher[tuple[GenerationRequest, str], Generation] | None = None
        if batch_window_ms is not None:
            self.batcher = MicroBatcher(
                self._generate_prepared,
                lock=self.lock,
                window_s=batch_window_ms / 1000,
                max_items=max_batch_size,
            )

    @classmethod
    def from_ref(cls, ref: BaseModelRef | str | None = None, **kwargs: Any) -> LocalEngine:
        """Load the base model of a reference (see :func:`langchain_fslm.models.load_base_model`).

        Args:
            ref: The base model (default: the embedded SmolLM2 default).
            **kwargs: Engine settings (``batch_window_ms``, ``compile_decode``, ...), see the class.
        """
        ref = BaseModelRef(source=ref) if isinstance(ref, str) else (ref or BaseModelRef())
        model, tokenizer = load_base_model(ref)
        return cls(model, tokenizer, base_ref=ref, **kwargs)

    def enable_compile_decode(self) -> None:
        """Turn compiled decoding on (see ``compile_decode``), for every stack that shares this engine.

        Nothing compiles until the next single-row call. Calling it again changes nothing.
        """
        with self.lock:
            if self.compiled is None:
                self.compiled = CompiledDecode()

    # ----------------------------------------------------------------------------- adapters
    @property
    def is_peft(self) -> bool:
        """Whether at least one adapter is loaded (the model is wrapped by peft)."""
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @property
    def plain_model(self) -> Any:
        """The transformers model under peft's wrapper (the model itself while no adapter is loaded)."""
        return self.model.get_base_model() if self.is_peft else self.model

    def has_adapter(self, name: str) -> bool:
        """Whether an adapter of that name is loaded."""
        return self.is_peft and name in self.model.peft_config

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter saved in peft format under a name.

        Loading the same folder under the same name again only counts one more user: each load is
        given back with :meth:`release_adapter`. Another folder under a loaded name replaces it.

        Args:
            name: Name to use for the adapter (usually the stage name).
            path: Folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

        Raises:
            AdapterError: If the files are missing, broken, or do not fit this base model.
        """
        from peft import PeftModel

        path = Path(path)
        with self.lock:
            users = self.adapter_users.get(name, 0) + 1
            if self.has_adapter(name):
                known = self.adapter_paths.get(name)
                if known is not None and Path(known).resolve() == path.resolve():
                    self.adapter_users[name] = users
                    return
                self._drop_adapter(name)  # its users now share the new weights
            try:
                check_adapter(path, self.plain_model)
            except AdapterError as err:
                raise AdapterError(f"Adapter {name!r}: {err}") from None
            wrapped = self.is_peft
            try:
                if wrapped:
                    self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
                else:
                    self.model = PeftModel.from_pretrained(
                        self.model, str(path), adapter_name=name, is_trainable=False
                    )
            except Exception as err:  # peft raises many types; name the file, keep the cause
                # never keep a half-loaded adapter under that name
                if wrapped and self.has_adapter(name):
                    self.model.delete_adapter(name)
                elif not wrapped:  # peft injected its layers into the plain model before failing
                    _strip_lora_layers(self.model)
                raise AdapterError(
                    f"Adapter {name!r} at {path} could not be loaded on this base model: {err}"
                ) from err
            self.model.eval()
            self.adapter_paths[name] = str(path)
            self.adapter_users[name] = users

    def release_adapter(self, name: str) -> None:
        """Give back one :meth:`load_adapter` of an adapter; the last one frees its weights.

        When no adapter is left, the model is the plain base model again.

        Raises:
            AdapterError: If no adapter of that name is loaded.
        """
        with self.lock:  # waits for calls in flight
            if not self.has_adapter(name):
                raise AdapterError(f"No adapter named {name!r} is loaded.")
            users = self.adapter_users.get(name, 1) - 1
            if users > 0:
                self.adapter_users[name] = users
            else:
                self._drop_adapter(name)

    def _drop_adapter(self, name: str) -> None:
        if list(self.model.peft_config) == [name]:
            self.model = self.model.unload()  # peft cannot delete its last adapter cleanly
        else:
            with warnings.catch_warnings():  # calls name their adapters, the active one is unused
                warnings.filterwarnings("ignore", message=".*was active which is now deleted")
                self.model.delete_adapter(name)
        self.adapter_paths.pop(name, None)
        self.adapter_users.pop(name, None)

    def save_adapter(self, name: str, folder: str | Path) -> None:
        """Write one loaded adapter to ``folder`` in peft format (safetensors)."""
        import shutil
        import tempfile

        if not self.has_adapter(name):
            raise AdapterError(f"No adapter named {name!r} is loaded.")
        folder = Path(folder)
        with self.lock, tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True)
            saved = Path(tmp) / name if name != "default" else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            for file in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(saved / file, folder / file)

    # ----------------------------------------------------------------------------- prompts
    @property
    def context_length(self) -> int:
        """Maximum number of tokens (prompt + generation) the model accepts."""
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        return 2048

    @property
    def _takes_position_ids(self) -> bool:
        """Whether the model's forward takes ``position_ids`` (transformers' generate asks the same)."""
        return "position_ids" in inspect.signature(self.plain_model.forward).parameters

    def render(self, prompt: str, system: str | None = None) -> str:
        """The exact text the model sees for a stage prompt (chat template applied where used)."""
        if not self.use_chat_template:
            return f"{system}\n\n{prompt}" if system else prompt
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(rendered)

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added); safe to call from several threads."""
        # Same padding setting as batch encoding (a no-op for one text): a fast tokenizer whose
        # settings change while another thread uses it fails with "Already borrowed". Not verbose: a
        # text longer than the model takes is ours to report (PromptTooLongError), not transformers'.
        with self.tokenizer_lock:
            encoded = self.tokenizer(text, add_special_tokens=False, padding=True, verbose=False)
        ids: list[int] = encoded["input_ids"]
        return ids

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens added)."""
        return len(self.token_ids(text))

    # ----------------------------------------------------------------------------- generation
    def _adapter_kwargs(self, adapters: Sequence[str | None]) -> dict[str, Any]:
        if not self.is_peft:
            missing = sorted({a for a in adapters if a})
            if missing:
                raise AdapterError(
                    f"Adapter(s) {missing} requested but none are loaded (was the stack released?)."
                )
            return {}
        for a in adapters:
            if a and not self.has_adapter(a):
                raise AdapterError(f"Adapter {a!r} is not loaded (was its stack released?).")
        return {"adapter_names": [a or BASE_ADAPTER for a in adapters]}

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

    def fit(self, request: GenerationRequest) -> str:
        """The rendered prompt of a request, made to fit the context window per its policy.

        Args:
            request: The request; ``request.config.on_too_long`` is ``"raise"`` (default) or
                ``"truncate_left"`` (drop the oldest prompt tokens, warn: :class:`PromptTruncatedWarning`).

        Returns:
            The exact text the model will see.

        Raises:
            PromptTooLongError: If the prompt does not fit and may not be cut, or cannot be cut enough.
        """
        config = request.config
        text = self.render(request.prompt, request.system)
        budget = self.context_length - config.max_new_tokens
        n = self.count_tokens(text)
        if n <= budget:
            return text
        where = f"The prompt has {n} tokens; with max_new_tokens={config.max_new_tokens} the model accepts"
        limit = f"at most {budget} (context length {self.context_length})"
        if config.on_too_long == "raise":
            raise PromptTooLongError(
                f"{where} {limit}. Shorten the input, lower max_new_tokens, or set "
                "on_too_long='truncate_left'."
            )
        ids = self.token_ids(request.prompt)
        keep = budget - (n - len(ids))  # room left once the template and system message are in
        while keep > 0:
            with self.tokenizer_lock:
                kept = str(self.tokenizer.decode(ids[-keep:]))
            text = self.render(kept, request.system)
            fitted = self.count_tokens(text)
            if fitted <= budget:
                warnings.warn(
                    f"Prompt truncated from the left: {n} -> {fitted} tokens, to fit {limit} with "
                    f"max_new_tokens={config.max_new_tokens}.",
                    PromptTruncatedWarning,
                    stacklevel=2,
                )
                return text
            keep -= fitted - budget
        raise PromptTooLongError(f"{where} {limit}, and the system message and template alone do not fit.")

    def _encode(self, texts: list[str], max_new_tokens: int) -> Any:
        with self.tokenizer_lock:
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        budget = self.context_length - max_new_tokens
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        for i, n in enumerate(lengths):
            if n > budget:
                raise PromptTooLongError(
                    f"Prompt {i} has {n} tokens; with max_new_tokens={max_new_tokens} the model "
                    f"accepts at most {budget} (context length {self.context_length})."
                )
        return encoded

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Complete requests, one ``generate`` call per group of identical settings.

        Rows with different adapters share a call (peft ``adapter_names=``). Greedy requests from
        concurrent callers are merged into the same calls by the micro-batcher; sampled requests run
        on their own, so a seed gives the same text whoever else is calling.

        Args:
            requests: Prompts with their adapter and settings.

        Returns:
            One :class:`Generation` per request, in order.

        Raises:
            PromptTooLongError: If a prompt does not fit (see :meth:`fit`).
            AdapterError: If a request names an adapter that is not loaded.
        """
        prepared = [(r, self.fit(r)) for r in requests]
        self._adapter_kwargs([r.adapter for r in requests])  # fail fast, in the caller's thread
        if self.batcher is None or any(r.config.temperature > 0 for r in requests):
            with self.lock:
                return self._generate_prepared(prepared)
        return self.batcher.submit(prepared)

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
        if config.stop:
            kwargs["stopping_criteria"] = [
                _stopping_criteria(self.tokenizer, [list(config.stop)], encoded["input_ids"].shape[1])
            ]
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
            if not ended:  # stopped early (stop string or consumer left): let the worker finish
                for _ in streamer:
                    pass
            worker.join()
        if errors:
            raise errors[0]

    # ----------------------------------------------------------------------------- scoring
    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], adapter: str | None = None, batch_size: int = 8
    ) -> list[tuple[float, bool, int]]:
        """Log-probability of each continuation given its context.

        Contexts are used as given (call :meth:`render` first to score through the chat template).

        Args:
            pairs: ``(context, continuation)`` texts.
            adapter: Adapter to score with, or None for the base model.
            batch_size: Rows per forward pass.

        Returns:
            Per pair: summed log-probability, whether the continuation is the greedy one, and its
            number of tokens.
        """
        import torch

        results: list[tuple[float, bool, int]] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            rows: list[list[int]] = []
            cont_lens: list[int] = []
            for context, continuation in chunk:
                ctx = self.token_ids(context)
                whole = self.token_ids(context + continuation)
                # tokenise jointly, then split where the context's tokens stop matching
                split = len(ctx)
                while split > 0 and whole[:split] != ctx[:split]:
                    split -= 1
                split = max(1, split)
                ids = whole[-self.context_length :]
                n_cont = max(1, min(len(whole) - split, len(ids) - 1))
                rows.append(ids)
                cont_lens.append(n_cont)
            width = max(len(r) for r in rows)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            kwargs = self._adapter_kwargs([adapter] * len(rows))
            if self._takes_position_ids:  # a left-padded row starts at position 0, as in generate
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            with self.lock, torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask, **kwargs).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, n in enumerate(cont_lens):
                target = input_ids[i, width - n :]
                pred = logprobs[i, width - n - 1 : width - 1]
                token_lp = pred.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                greedy = bool((pred.argmax(-1) == target).all())
                results.append((float(token_lp.sum()), greedy, n))
        return results
