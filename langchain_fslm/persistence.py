"""Writing and reading a stack folder: the one place that knows what goes into it and in what order.

```
my-stack/
  fslm_stack.json             # the manifest (format: langchain_fslm.manifest)
  adapters/<stage>/           # one peft adapter per stage that has one
  training_log.json           # extra files, e.g. the log `fslm train` writes
```

:func:`save_stack` is used by :meth:`FSLMChain.save_pretrained` (adapters from the engine) and by
training (adapters copied from the work folder); :func:`load_stack_manifest` by
:meth:`FSLMChain.from_pretrained`. A save builds the whole folder beside the destination and renames it
into place (:func:`~langchain_fslm.stack_swap.write_stack_atomically`), so a crash leaves the old stack or
nothing, never a half-written one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from langchain_fslm.errors import ManifestError
from langchain_fslm.manifest import (
    MANIFEST_FILE,
    StackManifest,
    StageSpec,
    dump_manifest,
    load_manifest,
)
from langchain_fslm.models import BaseModelRef
from langchain_fslm.stack_swap import write_stack_atomically

if TYPE_CHECKING:
    from langchain_fslm.chain import FSLMChain

ADAPTERS_DIR = "adapters"
"""The folder of a stack that holds one adapter folder per stage."""

WriteAdapter = Callable[[StageSpec, Path], None]
"""Writes the adapter of a stage (its spec) into the folder it is given (which does not exist yet)."""


def stage_adapter_path(stage: str) -> str:
    """Where a stage's adapter goes, relative to the stack folder (the value of ``StageSpec.adapter``)."""
    return f"{ADAPTERS_DIR}/{stage}"


def save_stack(
    folder: str | Path,
    manifest: StackManifest,
    write_adapter: WriteAdapter,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write a stack folder atomically: each stage's adapter, the extra files, then the manifest.

    Args:
        folder: The stack folder; an existing stack there is replaced only once the new one is complete.
        manifest: The manifest; each stage with an ``adapter`` gets that folder written.
        write_adapter: Called once per adapter folder the manifest names, with the stage's spec and the
            folder (inside the temporary copy) to write the peft adapter into.
        extra_files: Files to write beside the manifest, by path relative to the stack folder (``str``
            content is written as UTF-8).

    Returns:
        The stack folder (absolute).

    Raises:
        ValueError: If an extra file would leave the folder or overwrite the manifest or an adapter.
        ManifestError: If ``write_adapter`` did not write a folder the manifest names (checked before the
            old stack is replaced, so a stack that cannot load is never saved over a good one), or the
            destination is not a stack folder (see :func:`write_stack_atomically`).
    """
    extras = dict(extra_files or {})
    adapters = [s.adapter for s in manifest.stages if s.adapter is not None]
    for name in extras:
        _check_extra_name(name, adapters)
    dest = Path(folder).expanduser()

    def fill(tmp: Path) -> None:
        written: set[str] = set()
        for spec in manifest.stages:
            if spec.adapter is None or spec.adapter in written:  # stages may share one adapter folder
                continue
            target = tmp / spec.adapter
            target.parent.mkdir(parents=True, exist_ok=True)
            write_adapter(spec, target)
            _portable_base(target, manifest.base_model.source)
            if not target.is_dir():
                raise ManifestError(
                    f"{dest}: the adapter of stage {spec.name!r} was not written (no folder {spec.adapter})"
                )
            written.add(spec.adapter)
        for name, content in extras.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        dump_manifest(manifest, tmp)  # last, as before the split: a folder with a manifest is complete

    return write_stack_atomically(dest, fill)


def _portable_base(adapter: Path, source: str) -> None:
    """Record the manifest's base reference in the adapter's config, not the saving machine's path.

    peft writes where the base was loaded from, often a cache folder under the home of the machine that
    trained it; the manifest's source (``embedded:...``, a hub id) means the same model everywhere.
    """
    config = adapter / "adapter_config.json"
    if not config.is_file():
        return  # the adapter check reports it when the stack is loaded
    data = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(data, dict) and data.get("base_model_name_or_path") != source:
        data["base_model_name_or_path"] = source
        config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_stack_manifest(folder: str | Path) -> StackManifest:
    """Read and validate a stack folder's manifest, checking every adapter folder it names exists.

    Raises:
        ManifestError: Naming the file and the field, if anything is missing or wrong.
    """
    return load_manifest(folder)


def _check_extra_name(name: str, adapters: list[str]) -> None:
    """Refuse an extra file outside the folder or on top of what the stack itself holds."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not path.parts or path.is_absolute() or ".." in path.parts or path.parts[0][:1] == "~" or ":" in name:
        raise ValueError(f"extra file {name!r} must be a relative path inside the stack folder")
    if str(path) == MANIFEST_FILE:
        raise ValueError(f"extra file {name!r} would overwrite the manifest")
    for adapter in adapters:
        if path.is_relative_to(PurePosixPath(adapter)):
            raise ValueError(f"extra file {name!r} would be written inside the adapter folder {adapter}")


__all__ = ["ADAPTERS_DIR", "WriteAdapter", "load_stack_manifest", "save_stack", "stage_adapter_path"]


def base_model_for(
    manifest: StackManifest, folder: Path, base_model: BaseModelRef | str | None, trust_remote_code: bool
) -> BaseModelRef:
    """The base model a saved stack loads on: the manifest's, or ``base_model`` instead.

    A str replaces only the manifest's source (its dtype and revision stay).

    Raises:
        ManifestError: If the base model would run code from its repository and that was not allowed.
    """
    base = manifest.base_model
    if isinstance(base_model, str):
        base = BaseModelRef.model_validate({**base.model_dump(), "source": base_model})
    elif base_model is not None:
        base = base_model
    if base.trust_remote_code and not trust_remote_code:
        raise ManifestError(
            f"{Path(folder) / MANIFEST_FILE}: base_model.trust_remote_code is true; loading it "
            "would run code from the model repository. Pass trust_remote_code=True (fslm run: "
            "--trust-remote-code) if you trust it."
        )
    return base


def stack_manifest(stack: FSLMChain, adapter_dir: str = ADAPTERS_DIR) -> StackManifest:
    """The manifest of a stack: each stage's spec, its adapter at ``adapter_dir/<stage>``, its engine kind."""
    from langchain_fslm.engine.registry import engine_choice_of, kind_of

    specs = [
        s.spec.model_copy(
            update={
                "output_type": s.output_type.type_name,
                "adapter": f"{adapter_dir}/{s.spec.name}" if s.adapter else None,
                "backend": "remote" if kind_of(s.engine) == "remote" else "local",
            }
        )
        for s in stack.stages
    ]
    return StackManifest(
        name=stack.name or "fslm-stack",
        base_model=(stack.base_model or BaseModelRef()).absolute(),
        stages=specs,
        description=stack.description,
        engine=engine_choice_of(s.engine for s in stack.stages),
    )
