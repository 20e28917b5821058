"""The pieces of :class:`~langchain_fslm.engine.llamacpp.LlamaCppEngine` that speak to llama.cpp.

Its server's settings, the loopback HTTP calls (tokenizer, chat template), the gate that lets requests run
together but a restart alone, error mapping, and constraints as llguidance grammars.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.engine.llamacpp_lora import BaseGGUF
from langchain_fslm.errors import AdapterError, ConstraintError, FSLMError, PromptTooLongError

__all__ = [
    "LlamaCppError",
    "LlamaCppServer",
    "RequestGate",
    "grammar_of",
    "post_json",
    "server_error",
]


class LlamaCppError(FSLMError):
    """llama.cpp could not start on a model, or answered a request with an error."""


def grammar_of(constraint: OutputConstraint, stage: str | None = None) -> str:
    """The ``grammar`` llama.cpp takes for a constraint: llguidance's lark, checked by llguidance.

    Raises:
        ConstraintError: Naming the stage and the constraint, if llguidance cannot compile it.
    """
    from llguidance import LLMatcher

    from langchain_fslm.engine.local_constraints import grammar_of as llguidance_grammar

    where = f"Stage {stage!r}: " if stage else ""
    try:  # the same grammar (and JSON separators) as the local engine's
        grammar = llguidance_grammar(constraint)
    except ConstraintError as err:
        raise ConstraintError(f"{where}{err}") from None
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise ConstraintError(f"{where}{constraint.describe()} cannot be compiled: {problem.strip()}")
    (spec,) = json.loads(grammar)["grammars"]
    lark = spec.get("lark_grammar") or "start: %json " + json.dumps(spec["json_schema"])
    return "%llguidance {}\n" + lark


class RequestGate:
    """Requests run together; a restart of the server runs alone (it waits for them, new ones wait for it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closing = False

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold the server for one request (waits while a restart is under way)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._closing)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Hold the server alone: wait for the requests in flight; new ones wait until the block ends."""
        with self._cond:
            self._cond.wait_for(lambda: not self._closing)
            self._closing = True
            self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            with self._cond:
                self._closing = False
                self._cond.notify_all()


def server_params(
    model: Path, *, n_parallel: int, n_ctx: int, n_threads: int, loras: Sequence[Path] = ()
) -> Any:
    """``xllamacpp.CommonParams`` for a server on ``model`` with ``loras`` loaded at scale 0.

    Args:
        model: The GGUF base.
        n_parallel: Slots (requests decoded together).
        n_ctx: Context tokens of each slot (prompt + generation of one request).
        n_threads: CPU threads for decoding and prompt processing.
        loras: GGUF LoRA files; request ``lora`` ids are positions in this list.
    """
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.n_parallel = n_parallel
    # One cache per slot: a cache shared by the slots (kv_unified) makes a greedy row depend on the other
    # rows decoded with it (measured: 4 equal prompts, 2 different texts); per-slot caches give each row
    # the text it gets alone. The price is memory: n_ctx * n_parallel cache cells (about 23 KB each here).
    params.n_ctx = n_ctx * n_parallel
    params.kv_unified = False
    params.cache_ram_mib = 0  # the host prompt cache ignores adapters (it restores other adapters' state)
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    params.warmup = False
    params.verbosity = 0
    params.endpoint_metrics = False
    params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(p), 0.0) for p in loras]
    params.lora_init_without_apply = True  # start-up scale 0: only a request's own list applies one
    return params


def post_json(address: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to the server's loopback listener (the tokenizer and template endpoints)."""
    request = urllib.request.Request(
        address + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310 - our own loopback server
        answer: dict[str, Any] = json.loads(reply.read())
    return answer


def server_error(error: Any, stage: str | None) -> FSLMError:
    """Our error for an error object of a llama.cpp reply (a prompt over the context: PromptTooLongError)."""
    where = f"stage {stage!r}" if stage else "a request"
    info = error if isinstance(error, dict) else {"message": str(error)}
    message = str(info.get("message", info))
    if info.get("type") == "exceed_context_size_error":
        return PromptTooLongError(f"llama.cpp refused {where}: {message}")
    return LlamaCppError(f"llama.cpp failed on {where}: {message}")


class LlamaCppServer:
    """The server of :class:`~langchain_fslm.engine.llamacpp.LlamaCppEngine`: start, restart, requests.

    Attributes:
        gguf: The base model file's metadata.
        n_parallel: Server slots.
        n_ctx: Context tokens per slot.
        n_threads: CPU threads.
        adapter_files: Loaded adapter name -> its GGUF LoRA file.
    """

    gguf: BaseGGUF
    n_parallel: int
    n_ctx: int
    n_threads: int
    adapter_files: dict[str, Path]
    _server: Any
    _served: list[str | None]  # lora id -> adapter name (None: released since the start)
    _lock: threading.RLock
    _gate: RequestGate

    def _start(self) -> None:
        """(Re)start the server with every loaded adapter; called with the gate held alone."""
        import xllamacpp

        names = sorted(self.adapter_files)
        self._server = None  # the old server shuts down before the new one loads the model
        try:
            loras = [self.adapter_files[n] for n in names]
            self._server = xllamacpp.Server(
                server_params(
                    self.gguf.path,
                    n_parallel=self.n_parallel,
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    loras=loras,
                )
            )
        except RuntimeError as err:  # llama.cpp says only "Failed to init server" (its log has why)
            files = ", ".join(str(self.adapter_files[n]) for n in names) or "none"
            raise LlamaCppError(
                f"llama.cpp could not start on {self.gguf.path} (adapters: {files}): {err}"
            ) from err
        self._served = list(names)

    def _ensure(self, adapters: Sequence[str | None]) -> None:
        """Start the server, or restart it where a wanted adapter was loaded after the start."""
        wanted = {a for a in adapters if a}
        with self._lock:
            missing = sorted(a for a in wanted if a not in self.adapter_files)
            if missing:
                raise AdapterError(
                    f"Adapter(s) {missing} requested but not loaded (was the stack released?)."
                )
            if self._server is not None and wanted <= set(self._served):
                return
        with self._gate.alone(), self._lock:
            if self._server is None or not wanted <= set(self._served):
                self._start()

    def release(self) -> None:
        """Shut the server down (after the requests in flight); a later call starts it again."""
        with self._gate.alone(), self._lock:
            self._server = None
            self._served = []

    close = release

    def _http(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the server's loopback listener (tokenizer and template endpoints)."""
        while True:
            self._ensure([])
            with self._gate.request():
                server = self._server
                if server is not None:  # else released in between: start again
                    return post_json(server.listening_address, path, body)

    def _submit(self, body: dict[str, Any], adapter: str | None, callback: Any = None) -> Any:
        """Send a completion with the full adapter list (``adapter`` at scale 1), restarting if needed."""
        while True:
            self._ensure([adapter])
            with self._gate.request():
                with self._lock:
                    served, server = list(self._served), self._server
                if server is None or (adapter and adapter not in served):
                    continue  # released or restarted in between: start again
                loras = [{"id": i, "scale": 1.0 if n == adapter and n else 0.0} for i, n in enumerate(served)]
                sent = {**body, "lora": loras}
                if callback is None:
                    return server.handle_completions({**sent, "stream": False})
                return server.handle_completions(sent, callback)
