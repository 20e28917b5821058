"""The adapter registry of :class:`~langchain_fslm.engine.local.LocalEngine`: LoRA adapters loaded by name.

Adapters are counted per user: stacks that load the same folder under the same name share its weights,
and the last :meth:`LocalAdapters.release_adapter` frees them. While no adapter is loaded the model is
the plain transformers model; the first load wraps it in a ``PeftModel`` and the last release unwraps it.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_fslm.engine.adapter_check import check_adapter
from langchain_fslm.errors import AdapterError

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" inside a mixed batch


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


class LocalAdapters:
    """Load, count, release and save the LoRA adapters of one in-memory model.

    A mixin of :class:`~langchain_fslm.engine.local.LocalEngine`, which sets the attributes below.

    Attributes:
        model: The causal LM (a ``PeftModel`` while at least one adapter is loaded).
        lock: Serialises every use of the model (loads wait for calls in flight).
        adapter_paths: Adapter name -> the folder it was loaded from.
        adapter_users: Adapter name -> loads not yet released.
    """

    model: Any
    lock: threading.RLock
    adapter_paths: dict[str, str]
    adapter_users: dict[str, int]

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
