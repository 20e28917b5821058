"""Generation with llama.cpp (the ``xllamacpp`` wheel) on a GGUF base, one LoRA adapter per request.

The engine runs llama.cpp's own server inside this process (``xllamacpp.Server``): the quantised weights
as they are in the file, ``n_parallel`` slots decoded together (continuous batching), so concurrent
callers and the rows of one ``generate`` call overlap. Every loaded adapter is converted once to a GGUF
LoRA file (:mod:`~langchain_fslm.engine.llamacpp_lora`) and loaded at server start with scale 0; each
request sends the whole adapter list with its own adapter at scale 1 and every other at 0 (a request
without the list would keep the scales of the slot's previous request). An adapter loaded after the start
restarts the server with the longer list at its first use, while no request is in flight.

Prompts go through the GGUF's own chat template (llama.cpp's ``/apply-template``) and tokenizer
(``/tokenize``, on the server's loopback listener), are fitted to the context like the local engine does
(:class:`~langchain_fslm.engine.prompt_fit.PromptFit`), and are sent as token ids. Constraints are sent as
llguidance grammars (``%llguidance``), checked with llguidance first: llama.cpp silently ignores a grammar
it cannot parse. Training and log-likelihood scoring stay on the torch engine.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from langchain_fslm.engine.base import (
    Engine,
    EngineCapabilities,
    Generation,
    GenerationRequest,
    cut_at_stop,
    stream_until_stop,
)
from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.engine.llamacpp_lora import BaseGGUF, GGUFAdapters, read_base_gguf
from langchain_fslm.engine.llamacpp_server import (
    LlamaCppError,
    LlamaCppServer,
    RequestGate,
    grammar_of,
    server_error,
)
from langchain_fslm.engine.prompt_fit import PromptFit, as_plain_text_anywhere
from langchain_fslm.engine.token_texts import gguf_token_texts, longest_of
from langchain_fslm.models.refs import BaseModelRef, ModelNotFoundError, resolve

__all__ = ["LlamaCppEngine", "LlamaCppError", "get_llamacpp_engine", "grammar_of"]


class _Detokenizer:
    """The ``tokenizer.decode`` :class:`PromptFit` calls to cut a prompt from the left."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine = engine

    def decode(self, ids: list[int]) -> str:
        return str(self.engine._http("/detokenize", {"tokens": list(ids)})["content"])


class LlamaCppEngine(PromptFit, GGUFAdapters, LlamaCppServer, Engine):
    """A GGUF base model on llama.cpp, with the LoRA adapters of every stack on it.

    Args:
        base: The base model; it must resolve to a GGUF file (the embedded default does).
        n_threads: CPU threads for decoding and prompt processing (default: one per core).
        n_parallel: Requests decoded together (server slots).
        n_ctx: Context window of one request in tokens (default: the model's, at most 2048). Each slot
            has its own cache of this size (memory: ``n_ctx * n_parallel`` cache cells), so that a row
            gets the same text whatever else is decoded with it.
        use_chat_template: Wrap prompts in the GGUF's chat template. Default: when the file has one.

    Raises:
        ModelNotFoundError: If the base is not a GGUF file, or the file cannot be read.
    """

    kind: ClassVar[str] = "local"

    def __init__(
        self,
        base: BaseModelRef | str | None = None,
        *,
        n_threads: int | None = None,
        n_parallel: int = 4,
        n_ctx: int | None = None,
        use_chat_template: bool | None = None,
    ) -> None:
        ref = BaseModelRef(source=base) if isinstance(base, str) else (base or BaseModelRef())
        resolved = resolve(ref)
        if not resolved.gguf_file:
            raise ModelNotFoundError(
                f"llama.cpp runs GGUF files; base model {ref.source!r} has none (run it on torch: "
                "engine='torch'; serve it with vLLM: fslm export vllm; or use a .gguf base)."
            )
        if n_parallel < 1:
            raise ValueError(f"n_parallel must be at least 1, got {n_parallel}")
        self.base_ref = ref
        self.gguf: BaseGGUF = read_base_gguf(Path(resolved.path) / resolved.gguf_file)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx or min(self.gguf.context_length, 2048)
        if use_chat_template is None:
            use_chat_template = self.gguf.chat_template is not None
        self.use_chat_template = use_chat_template
        self.tokenizer = _Detokenizer(self)
        self.tokenizer_lock = threading.RLock()
        self.adapter_paths: dict[str, str] = {}
        self.adapter_users: dict[str, int] = {}
        self.adapter_files: dict[str, Path] = {}  # name -> its GGUF LoRA file
        self._server: Any = None
        self._served: list[str | None] = []  # lora id -> adapter name (None: released since the start)
        self._lock = threading.RLock()  # the adapter registry and the server's adapter list
        self._gate = RequestGate()
        self._token_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._grammars: dict[OutputConstraint, str] = {}
        self._token_texts: list[str] | None = None

    def __repr__(self) -> str:
        return f"LlamaCppEngine({str(self.gguf.path)!r}, n_parallel={self.n_parallel})"

    def capabilities(self) -> EngineCapabilities:
        """Adapters held in this process, the model's own tokenizer, constrained decoding; no scoring."""
        return EngineCapabilities(local_adapters=True, token_counts_exact=True, constrained=True)

    @property
    def context_length(self) -> int:
        """Tokens (prompt + generation) one request may use: the server's context."""
        return self.n_ctx

    def __enter__(self) -> LlamaCppEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ----------------------------------------------------------------------------- prompts and tokens
    def render(self, prompt: str, system: str | None = None) -> str:
        """The exact text the model sees: the GGUF's chat template applied by llama.cpp, where used.

        Control-token strings in the prompt and system message stay text (``as_plain_text_anywhere``).
        """
        prompt = as_plain_text_anywhere(prompt)
        system = as_plain_text_anywhere(system) if system else system
        if not self.use_chat_template:
            return f"{system}\n\n{prompt}" if system else prompt
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return str(self._http("/apply-template", {"messages": messages})["prompt"])

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the GGUF's tokenizer (special tokens in the text parsed, none added)."""
        with self.tokenizer_lock:
            known = self._token_cache.get(text)
            if known is not None:
                self._token_cache.move_to_end(text)
                return list(known)
        reply = self._http("/tokenize", {"content": text, "add_special": False, "parse_special": True})
        ids = [int(t) for t in reply["tokens"]]
        with self.tokenizer_lock:
            self._token_cache[text] = ids
            while len(self._token_cache) > 256:
                self._token_cache.popitem(last=False)
        return list(ids)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens added)."""
        return len(self.token_ids(text))

    # ----------------------------------------------------------------------------- generation
    def check_constraint(self, constraint: OutputConstraint, stage: str | None = None) -> None:
        """Compile ``constraint`` now (and cache it), so a bad one fails before any generation.

        Raises:
            ConstraintError: Naming the stage and the constraint.
        """
        self._grammar(constraint, stage)

    def longest_token_chars(self, alphabet: frozenset[str] | None = None) -> int | None:
        """Characters of the longest vocabulary token made only of ``alphabet`` (None: the file has none)."""
        if self._token_texts is None:
            self._token_texts = gguf_token_texts(self.gguf.tokens, self.gguf.tokenizer_model)
        return longest_of(self._token_texts, alphabet) or None

    def _grammar(self, constraint: OutputConstraint, stage: str | None) -> str:
        grammar = self._grammars.get(constraint)
        if grammar is None:
            grammar = self._grammars[constraint] = grammar_of(constraint, stage)
        return grammar

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        """The completion request of a stage request: its fitted prompt as token ids, its settings."""
        config = request.config
        ids = self.token_ids(self.fit(request))
        body: dict[str, Any] = {
            "prompt": ids,
            "n_predict": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": 0,  # plain nucleus sampling, as the settings say (no llama.cpp top-k / min-p)
            "min_p": 0.0,
            "repeat_penalty": config.repetition_penalty,
            "repeat_last_n": self.n_ctx,  # the whole context, like transformers' repetition_penalty
            "stream": True,  # streamed even inside generate: a stop sequence cancels the rest
            "cache_prompt": False,  # a reused prefix is re-evaluated in another batch shape: other logits
        }
        if config.seed is not None:
            body["seed"] = config.seed
        if request.constraint is not None:
            body["grammar"] = self._grammar(request.constraint, request.stage)
        return body

    def _complete(
        self,
        request: GenerationRequest,
        body: dict[str, Any],
        on_piece: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Run one completion; each piece goes to ``on_piece``; a stop sequence or ``cancel`` ends it."""
        stops = request.config.stop
        state: dict[str, Any] = {"text": "", "n": 0, "finish": "length", "usage": None, "error": None}

        def callback(chunk: dict[str, Any]) -> bool:
            if "error" in chunk:
                state["error"] = chunk["error"]
                return True
            choice = (chunk.get("choices") or [{}])[0]
            piece = choice.get("text") or ""
            state["usage"] = chunk.get("usage") or state["usage"]
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]
            else:
                state["n"] += 1
            state["text"] += piece
            if piece and on_piece is not None:
                on_piece(piece)
            hit = bool(stops) and cut_at_stop(state["text"].lstrip(), stops)[1]
            return hit or (cancel is not None and cancel.is_set())

        reply = self._submit(body, request.adapter, callback)
        error = state["error"]
        if error is None and isinstance(reply, dict):
            error = reply.get("error")
        if error:
            raise server_error(error, request.stage)
        text, hit = cut_at_stop(state["text"].lstrip(), stops)
        usage = state["usage"] or {}
        return Generation(
            text=text,
            prompt_tokens=len(body["prompt"]),
            completion_tokens=int(usage.get("completion_tokens", state["n"])),
            finish_reason="stop" if hit else str(state["finish"]),
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Complete every request, up to ``n_parallel`` at once (decoded together by the server), in order.

        Raises:
            PromptTooLongError: If a prompt does not fit (see :meth:`fit`).
            AdapterError: If a request names an adapter that is not loaded.
            ConstraintError: If a request's constraint cannot be compiled.
        """
        self._ensure([r.adapter for r in requests])  # fail fast, and one restart for the whole batch
        bodies = [self._body(r) for r in requests]
        if len(requests) <= 1:
            return [self._complete(r, b) for r, b in zip(requests, bodies, strict=True)]
        workers = min(self.n_parallel, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fslm-llamacpp") as pool:
            return list(pool.map(self._complete, requests, bodies))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the completion of one request as llama.cpp decodes it, honouring stop sequences.

        Text that could be the start of a stop sequence is held back until it is known not to be; a
        consumer that stops reading cancels the rest of the generation.
        """
        self._ensure([request.adapter])
        body = self._body(request)
        pieces: queue.Queue[Any] = queue.Queue()
        cancel = threading.Event()
        end = object()

        def work() -> None:
            try:
                self._complete(request, body, on_piece=pieces.put, cancel=cancel)
            except BaseException as err:  # surfaced in the consumer's thread below
                pieces.put(err)
            finally:
                pieces.put(end)

        worker = threading.Thread(target=work, daemon=True, name="fslm-llamacpp-stream")
        worker.start()

        def received() -> Iterator[str]:
            while (item := pieces.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                yield item

        try:
            yield from stream_until_stop(received(), request.config.stop)
        finally:
            cancel.set()
            worker.join()


_ENGINES: dict[str, LlamaCppEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_llamacpp_engine(ref: BaseModelRef, **settings: Any) -> LlamaCppEngine:
    """The process-wide llama.cpp engine of a base model and settings, made on first use.

    Stacks on the same GGUF base share one server (and its adapter list) this way.
    """
    key = json.dumps([ref.key(), sorted(settings.items())], default=str)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = LlamaCppEngine(ref, **settings)
        return engine
