"""Serve a saved stack over HTTP with llama.cpp's own server (the ``xllamacpp`` wheel, no compile step).

The server holds the stack's GGUF base and one GGUF LoRA adapter per stage (converted from the peft
adapters once, cached), all loaded at scale 0; a request applies its stage's adapter with llama.cpp's
per-request ``lora`` field. It speaks the OpenAI API (``/v1/completions``, ``/v1/chat/completions``,
``/v1/models``) and llama.cpp's own (``/lora-adapters``), so any client reaches it; a stack reaches it
through the remote engine, which finds each stage's adapter by the served file's name (``intent.gguf``)::

    served = serve_stack("my-stack", port=8080)  # or: fslm serve my-stack --port 8080
    stack = FSLMChain.from_pretrained("my-stack", backend="remote", remote=served.remote_settings())
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_fslm.engine.llamacpp import LlamaCppEngine
from langchain_fslm.engine.llamacpp_server import server_params
from langchain_fslm.engine.remote_http import RemoteSettings
from langchain_fslm.errors import FSLMError
from langchain_fslm.models.refs import cache_dir
from langchain_fslm.persistence import load_stack_manifest


@dataclass
class ServedStack:
    """A running llama.cpp server for one stack.

    Attributes:
        server: The ``xllamacpp.Server`` (it stops when this object is closed or collected).
        address: The listener's root, e.g. ``http://127.0.0.1:8080``.
        adapters: Stage name -> the GGUF LoRA file served for it (its file name is the stage's).
        base_model: The GGUF base file.
    """

    server: Any
    address: str
    adapters: dict[str, Path] = field(default_factory=dict)
    base_model: Path | None = None

    def remote_settings(self, **overrides: Any) -> RemoteSettings:
        """Remote-engine settings for this server (``server="llamacpp"``, its GGUF's chat template)."""
        return RemoteSettings(**{"base_url": f"{self.address}/v1", "server": "llamacpp", **overrides})

    def close(self) -> None:
        """Stop the server (requests in flight are answered first)."""
        self.server = None


def serve_stack(
    folder: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    n_parallel: int = 4,
    n_ctx: int | None = None,
    n_threads: int | None = None,
) -> ServedStack:
    """Start llama.cpp's HTTP server on a saved stack's GGUF base with one LoRA adapter per stage.

    Args:
        folder: The stack folder (``save_pretrained`` / ``fslm train`` output).
        host: Address to listen on (loopback by default; the server has no authentication).
        port: Port; 0 picks a free one (see ``ServedStack.address``).
        n_parallel: Slots: requests decoded together.
        n_ctx: Context tokens per slot (default: :class:`LlamaCppEngine`'s).
        n_threads: CPU threads (default: :class:`LlamaCppEngine`'s, one per core).

    Raises:
        ManifestError: If the stack folder or its manifest is wrong.
        ModelNotFoundError: If the stack's base is not a GGUF file.
        AdapterError: If an adapter cannot be converted for llama.cpp (the reason is named).
        FSLMError: If llama.cpp does not start.
    """
    import xllamacpp

    folder = Path(folder)
    manifest = load_stack_manifest(folder)
    # the in-process engine (its server never started) checks the base, sets the defaults and converts
    # each adapter as it does for a stack, with errors naming the stage
    engine = LlamaCppEngine(manifest.base_model, n_threads=n_threads, n_parallel=n_parallel, n_ctx=n_ctx)
    # llama.cpp lists each adapter by its path; the remote engine finds a stage's by the file name
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    served_dir = cache_dir() / "served-lora" / f"{key}-{os.getpid()}"
    served_dir.mkdir(parents=True, exist_ok=True)
    adapters: dict[str, Path] = {}
    for stage in manifest.stages:
        if stage.adapter is not None:
            engine.load_adapter(stage.name, folder / stage.adapter)
            target = served_dir / f"{stage.name}.gguf"
            target.unlink(missing_ok=True)
            try:
                target.symlink_to(engine.adapter_files[stage.name])
            except OSError:  # no symlinks here (some Windows setups): a copy
                shutil.copyfile(engine.adapter_files[stage.name], target)
            adapters[stage.name] = target
    base = engine.gguf
    params = server_params(
        base.path,
        n_parallel=engine.n_parallel,
        n_ctx=engine.n_ctx,
        n_threads=engine.n_threads,
        loras=list(adapters.values()),
    )
    params.hostnames = [host]
    params.port = port
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as err:
        raise FSLMError(f"llama.cpp could not start on {base.path} ({host}:{port}): {err}") from err
    return ServedStack(server, str(server.listening_address).rstrip("/"), adapters, base.path)


__all__ = ["ServedStack", "serve_stack"]
