"""The adapter registry of :class:`~langchain_fslm.engine.remote.RemoteEngine`: what the server serves.

The server loads its own copy of each adapter; the engine keeps the local path of each, counted per load,
so a stack on the server can be saved again. vLLM serves each adapter as a model of its own
(``--lora-modules name=PATH``); llama.cpp's server loads adapter files (``--lora intent.gguf``, or
``fslm serve``) and applies one per request through its ``lora`` field, found by the file's name.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import threading
import urllib.request
from pathlib import Path, PurePath
from typing import Any

from langchain_fslm.errors import AdapterError, FSLMError


class RemoteAdapters:
    """A mixin of :class:`~langchain_fslm.engine.remote.RemoteEngine`, which sets the attributes below.

    Attributes:
        adapter_paths: Adapter name -> its local folder.
        adapter_users: Adapter name -> loads not yet released.
    """

    adapter_paths: dict[str, str]
    adapter_users: dict[str, int]
    settings: Any  # RemoteSettings
    _lock: threading.RLock
    _llamacpp_loras: dict[str, int] | None = None

    def lora_field(self, adapter: str | None) -> list[dict[str, Any]]:
        """llama.cpp server's per-request ``lora`` list: ``adapter`` at scale 1, every other file at 0.

        Raises:
            AdapterError: If the server serves no adapter file named after the adapter's model name.
        """
        served = self._llamacpp_adapters()
        name = None if adapter is None else self.settings.adapter_models.get(adapter, adapter)
        if name is not None and name not in served:
            raise AdapterError(
                f"Adapter {adapter!r}: the llama.cpp server at {self.settings.base_url} serves no LoRA file "
                f"named {name}.gguf (it serves {sorted(served) or 'none'}). Start it on the stack with "
                f"`fslm serve STACK`, or with `--lora {name}.gguf --lora-init-without-apply`."
            )
        return [{"id": i, "scale": 1.0 if n == name else 0.0} for n, i in sorted(served.items())]

    def _llamacpp_adapters(self) -> dict[str, int]:
        """File stem -> id of the adapters the llama.cpp server lists under ``/lora-adapters`` (once)."""
        if self._llamacpp_loras is None:
            root = self.settings.base_url.rstrip("/").removesuffix("/v1")
            try:
                with urllib.request.urlopen(f"{root}/lora-adapters", timeout=self.settings.timeout) as reply:  # noqa: S310 - the configured server
                    listed = json.loads(reply.read())
                loras = {PurePath(str(a["path"])).stem: int(a["id"]) for a in listed}
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise FSLMError(
                    f"Could not read the LoRA adapters of the llama.cpp server at {root}/lora-adapters "
                    f"({type(err).__name__}: {err})."
                ) from err
            self._llamacpp_loras = loras
        return self._llamacpp_loras

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Register the local copy of an adapter the server serves as model ``name``.

        The server loads its own copy (``--lora-modules name=PATH``); the local one is kept so the stack
        can be saved again.

        Raises:
            AdapterError: If the adapter files are missing.
        """
        path = Path(path)
        for required in ("adapter_config.json", "adapter_model.safetensors"):
            if not (path / required).is_file():
                raise AdapterError(f"Adapter {name!r}: {path / required} is missing.")
        with self._lock:
            self._register(name, path)

    def _register(self, name: str, path: Path) -> None:
        known = self.adapter_paths.get(name)
        if known is not None and not _same_adapter(Path(known), path):
            # the server serves one model per name: two stacks cannot both call theirs 'intent'
            raise AdapterError(
                f"Adapter {name!r}: {self!r} already serves model {name!r} from {known}, and {path} holds "
                "a different adapter. Use one RemoteEngine (and one server) per stack, or map the names "
                "apart with adapter_models."
            )
        self.adapter_paths[name] = str(path)
        self.adapter_users[name] = self.adapter_users.get(name, 0) + 1

    def release_adapter(self, name: str) -> None:
        """Give back one :meth:`load_adapter`; the last one forgets the registration.

        The server keeps serving its own copy; only this engine stops knowing the local one.

        Raises:
            AdapterError: If no adapter of that name is registered.
        """
        with self._lock:
            if name not in self.adapter_paths:
                raise AdapterError(f"No adapter named {name!r} is registered with {self!r}.")
            users = self.adapter_users.get(name, 1) - 1
            if users > 0:
                self.adapter_users[name] = users
            else:
                self.adapter_paths.pop(name, None)
                self.adapter_users.pop(name, None)

    def has_adapter(self, name: str) -> bool:
        """Whether an adapter of that name was registered (the server is not asked)."""
        return name in self.adapter_paths

    def save_adapter(self, name: str, folder: str | Path) -> None:
        """Copy a registered adapter's files to ``folder``."""
        if name not in self.adapter_paths:
            raise AdapterError(f"No adapter named {name!r} is registered with {self!r}.")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(self.adapter_paths[name]) / file, folder / file)


def _same_adapter(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    files = ("adapter_config.json", "adapter_model.safetensors")
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)
