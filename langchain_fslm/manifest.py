"""The on-disk stack format: ``fslm_stack.json`` (pydantic-validated) plus one peft adapter per stage.

```
my-stack/
  fslm_stack.json             # StackManifest
  adapters/<stage>/adapter_config.json
  adapters/<stage>/adapter_model.safetensors
```
Paths inside the manifest are relative to the stack folder and may not leave it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from langchain_fslm.engine.base import GenerationConfig
from langchain_fslm.errors import ManifestError
from langchain_fslm.models import BaseModelRef
from langchain_fslm.outputs import OUTPUT_TYPES
from langchain_fslm.stack_swap import MANIFEST_FILE, recover
from langchain_fslm.templates import template_fields

FORMAT_VERSION = 1
_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
RESERVED_FIELDS = frozenset({"input", "output"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StageSpec(BaseModel):
    """One stage as written in a manifest.

    Attributes:
        name: Stage name; also the state field its output is stored under.
        prompt: f-string template over fields of the stack state (``{input}``, earlier stage names).
        output_type: Registered output type name (see :mod:`langchain_fslm.outputs`).
        adapter: Adapter folder relative to the stack folder, or None for the bare base model.
        generation: Generation settings.
        system: Optional system message.
        backend: ``local`` (transformers + peft) or ``remote`` (an OpenAI-compatible server).
        parse_retries: How many times to regenerate (sampling) when the output does not parse.
        on_parse_error: After the retries, ``raise`` a :class:`StageOutputError`, or ``pass_raw``:
            hand the raw text on and flag it in the handoff event.
        constrained: Generate under the output type's constraint where the engine can (default); False
            generates free text, which the type's validator then checks.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    prompt: str = Field(min_length=1)
    output_type: str = "text"
    adapter: str | None = None
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    system: str | None = None
    backend: Literal["local", "remote"] = "local"
    parse_retries: int = Field(default=1, ge=0, le=10)
    on_parse_error: Literal["raise", "pass_raw"] = "raise"
    constrained: bool = True

    @field_validator("prompt")
    @classmethod
    def _plain_fields(cls, value: str) -> str:
        template_fields(value)  # raises ValueError naming the bad field
        return value

    @field_validator("output_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in OUTPUT_TYPES:
            raise ValueError(f"unknown output type {value!r}; known: {sorted(OUTPUT_TYPES)}")
        return value

    @field_validator("adapter")
    @classmethod
    def _inside_stack(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if _CONTROL.search(value):
            raise ValueError(f"adapter path {value!r} holds a control character (NUL, newline...)")
        path = PurePosixPath(value.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"adapter path {value!r} must be a relative path inside the stack")
        return str(path)

    def with_budget(self, max_new_tokens: int | None) -> StageSpec:
        """This stage with another generation budget (None: unchanged)."""
        if not max_new_tokens:
            return self
        generation = self.generation.model_copy(update={"max_new_tokens": max_new_tokens})
        return self.model_copy(update={"generation": generation})


class StackManifest(BaseModel):
    """A whole stack: base model reference and ordered stages."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = "fslm-stack"
    base_model: BaseModelRef = Field(default_factory=BaseModelRef)
    stages: list[StageSpec] = Field(min_length=1)
    description: str = ""
    # which in-process engine runs the local stages: torch, llamacpp (GGUF bases), auto; None: the default
    engine: Literal["auto", "llamacpp", "torch"] | None = None

    @field_validator("format_version")
    @classmethod
    def _supported_version(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(
                f"unsupported stack format version {value}; this langchain-fslm reads version "
                f"{FORMAT_VERSION}"
            )
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> StackManifest:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {dupes}")
        reserved = sorted(set(names) & RESERVED_FIELDS)
        if reserved:
            raise ValueError(f"stage names {reserved} are reserved for the stack; rename them")
        known = {"input"}
        for stage in self.stages:  # a prompt reads the request and the stages before it, nothing else
            unknown = [f for f in template_fields(stage.prompt) if f not in known]
            if unknown:
                raise ValueError(
                    f"stage {stage.name!r}: its prompt reads {unknown}, which the stack does not have at "
                    f"that point (available: {sorted(known)})"
                )
            known.add(stage.name)
        return self


def _describe(err: ValidationError, data: object = None) -> str:
    """Each error as ``field.path: message``, a stage named by its name (``stages[intent].prompt``)."""
    stages = data.get("stages") if isinstance(data, dict) else None
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if len(loc) > 1 and loc[0] == "stages" and isinstance(stages, list) and loc[1].isdigit():
            stage = stages[int(loc[1])] if int(loc[1]) < len(stages) else None
            name = stage.get("name") if isinstance(stage, dict) else None
            loc[:2] = [f"stages[{name}]" if isinstance(name, str) else f"stages[{loc[1]}]"]
        parts.append(f"{'.'.join(loc) or 'manifest'}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:  # json.loads would keep the last one silently
        raise ValueError(f"key(s) {dupes} appear more than once in one object")
    return dict(pairs)


def load_manifest(folder: str | Path) -> StackManifest:
    """Read and validate a stack folder's manifest.

    Raises:
        ManifestError: Naming the file and the field, if anything is missing or wrong.
    """
    folder = Path(folder).expanduser()
    path = folder / MANIFEST_FILE
    if not path.is_file() and not (recover(folder) and path.is_file()):  # a save killed mid-swap
        raise ManifestError(f"{path}: no stack manifest here (is {folder} a stack folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err})") from err
    except RecursionError:
        raise ManifestError(f"{path}: nested too deeply to be a stack manifest") from None
    except ValueError as err:  # JSONDecodeError, and the duplicate keys above
        raise ManifestError(f"{path}: not valid JSON ({err})") from err
    try:
        manifest = StackManifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(f"{path}: {_describe(err, data)}") from err
    for field in ("source", "gguf_file", "revision"):
        value = getattr(manifest.base_model, field)
        if value is not None and _CONTROL.search(value):  # a NUL would fail deep inside path handling
            raise ManifestError(f"{path}: base_model.{field} {value!r} holds a control character")
    root = folder.resolve()
    for stage in manifest.stages:
        if stage.adapter is None:
            continue
        adapter_dir = (root / stage.adapter).resolve()
        if not adapter_dir.is_relative_to(root):
            raise ManifestError(f"{path}: stages.{stage.name}.adapter leaves the stack folder")
        if not adapter_dir.is_dir():
            raise ManifestError(f"{path}: stages.{stage.name}.adapter: folder {adapter_dir} does not exist")
    return manifest


def dump_manifest(manifest: StackManifest, folder: Path) -> None:
    """Write the manifest file into ``folder`` (used inside :func:`write_stack_atomically`)."""
    data = manifest.model_dump(mode="json")
    if data.get("engine") is None:  # written only when chosen: manifests stay readable by older versions
        data.pop("engine", None)
    text = json.dumps(data, indent=2) + "\n"
    (folder / MANIFEST_FILE).write_text(text, encoding="utf-8")
