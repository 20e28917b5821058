"""``fslm export vllm STACK``: the exact ``vllm serve`` command (and adapter layout) for a stack.

vLLM serves one base model plus LoRA adapters selected by model name; each stage's adapter is served under
the stage's name, which is the model name the remote engine asks for
(:class:`langchain_fslm.engine.remote.RemoteEngine`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import BaseModel

from langchain_fslm.cli_errors import fail
from langchain_fslm.errors import AdapterError, FSLMError, ManifestError
from langchain_fslm.files import write_text
from langchain_fslm.manifest import load_manifest
from langchain_fslm.models import EMBEDDED_DEFAULT

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for ``--max-lora-rank``."""

HUB_IDS = {EMBEDDED_DEFAULT: "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Hub ids vLLM can load for the symbolic base models (the embedded default is a GGUF of this model)."""

SCRIPT_NAME = "serve_vllm.sh"


class LoraModule(BaseModel):
    """One stage adapter as vLLM serves it.

    Attributes:
        stage: Stage name, also the served model name.
        path: Absolute adapter folder.
        rank: LoRA rank ``r`` from ``adapter_config.json``.
        target_modules: Modules the adapter changes.
    """

    stage: str
    path: str
    rank: int
    target_modules: list[str]


class VllmPlan(BaseModel):
    """How to serve a stack on vLLM.

    Attributes:
        base: Base model as vLLM loads it (hub id or folder); also the served name of adapter-less stages.
        modules: The stage adapters.
        base_stages: Stages without an adapter (they ask for ``base``).
        host: Bind address.
        port: Port.
        revision: Hub revision of ``base`` the adapters were trained on (``--revision``).
        trust_remote_code: The manifest allows the base model's own code (``--trust-remote-code``).
    """

    base: str
    modules: list[LoraModule]
    base_stages: list[str]
    host: str = "0.0.0.0"
    port: int = 8000
    revision: str | None = None
    trust_remote_code: bool = False

    @property
    def max_lora_rank(self) -> int:
        """The smallest ``--max-lora-rank`` vLLM accepts that fits every adapter."""
        needed = max((m.rank for m in self.modules), default=1)
        for rank in VLLM_LORA_RANKS:
            if rank >= needed:
                return rank
        raise AdapterError(f"LoRA rank {needed} is above vLLM's maximum {VLLM_LORA_RANKS[-1]}")

    def command_lines(self) -> list[list[str]]:
        """The ``vllm serve`` arguments grouped as the script lays them out: one flag and its value a line."""
        lines = [["vllm", "serve", self.base], ["--host", self.host], ["--port", str(self.port)]]
        if self.revision:  # the adapters were trained on this revision of the base, not the latest
            lines += [["--revision", self.revision], ["--tokenizer-revision", self.revision]]
        if self.trust_remote_code:
            lines += [["--trust-remote-code"]]
        if self.modules:
            lines += [["--enable-lora"], ["--lora-modules"]]
            lines += [[_lora_module_arg(m)] for m in self.modules]
            # every stage's adapter may sit in one batch, so allow all of them at once
            lines += [["--max-lora-rank", str(self.max_lora_rank)], ["--max-loras", str(len(self.modules))]]
        return lines

    def command(self) -> list[str]:
        """The ``vllm serve`` argument list."""
        return [arg for line in self.command_lines() for arg in line]

    def shell(self) -> str:
        """The command as one shell line."""
        return shlex.join(self.command())

    def base_url(self, host: str | None = None) -> str:
        """The URL the remote backend calls (the bind address, or 127.0.0.1 where vLLM binds all)."""
        if host is None:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"


def _lora_module_arg(module: LoraModule) -> str:
    """One ``--lora-modules`` value: ``name=path``, or vLLM's JSON form where the path holds ``=`` or ``,``.

    vLLM reads ``name=path`` with ``item.split("=")`` only when the item has no comma; anything else is
    parsed as JSON, so such a path in the short form crashes or is refused at start-up.
    """
    if "=" in module.path or "," in module.path:
        return json.dumps({"name": module.stage, "path": module.path})
    return f"{module.stage}={module.path}"


def _module(stage: str, folder: Path) -> LoraModule:
    config_file = folder / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        rank = int(config["r"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AdapterError(
            f"Adapter of stage {stage!r}: cannot read its rank from {config_file} ({err})"
        ) from err
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    return LoraModule(stage=stage, path=str(folder.resolve()), rank=rank, target_modules=targets)


def vllm_plan(
    folder: str | Path, *, base: str | None = None, host: str = "0.0.0.0", port: int = 8000
) -> VllmPlan:
    """Read a stack folder and plan its vLLM deployment.

    Args:
        folder: Stack folder.
        base: Base model for vLLM, overriding the manifest's (needed when it is a ``.gguf`` file).
        host: Bind address.
        port: Port.

    Raises:
        ManifestError: If the manifest is broken or its base model is not something vLLM can load.
        AdapterError: If an adapter's config cannot be read.
    """
    manifest = load_manifest(folder)
    revision, trust_remote_code = None, False
    if base is None:  # the manifest's own base: keep its revision and trust setting
        revision, trust_remote_code = manifest.base_model.revision, manifest.base_model.trust_remote_code
        source = manifest.base_model.source
        base = HUB_IDS.get(source, source)
        if base.endswith(".gguf") or manifest.base_model.gguf_file:
            raise ManifestError(
                f"{folder}: base model {source!r} is a GGUF file; vLLM serves LoRA adapters on "
                "safetensors weights. Pass --base with the hub id or folder of the same model."
            )
    root = Path(folder)
    modules = [_module(s.name, root / s.adapter) for s in manifest.stages if s.adapter]
    plain = [s.name for s in manifest.stages if not s.adapter]
    return VllmPlan(
        base=base,
        modules=modules,
        base_stages=plain,
        host=host,
        port=port,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )


def render(plan: VllmPlan, folder: str | Path) -> str:
    """A shell script: the adapter layout as comments, then the serve command."""
    stack = str(Path(folder).resolve())
    lines = ["#!/usr/bin/env bash", f"# Serve the FSLM stack {stack} on vLLM.", "#"]
    lines.append("# stage (= served model name)   rank  targets                 adapter")
    for m in plan.modules:
        lines.append(f"# {m.stage:<30} {m.rank:<5} {','.join(m.target_modules):<23} {m.path}")
    for stage in plan.base_stages:
        lines.append(f"# {stage:<30} -     (base model {plan.base})")
    lines += [
        "#",
        "# Then, in Python:",
        f"#   FSLMChain.from_pretrained({stack!r}, backend='remote',",
        f"#                             remote={{'base_url': {plan.base_url()!r}, 'model': {plan.base!r},",
        "#                                     'server': 'vllm'})",
        "set -euo pipefail",
        "exec " + " \\\n  ".join(shlex.join(line) for line in plan.command_lines()),
        "",
    ]
    return "\n".join(lines)


export_app = typer.Typer(help="Export a stack for serving elsewhere.", no_args_is_help=True)


@export_app.command("vllm")
def vllm(
    folder: Annotated[Path, typer.Argument(help="Stack folder.")],
    base: Annotated[
        Optional[str], typer.Option(help="Base model for vLLM (hub id or folder); default: the manifest's.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address vLLM binds.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port vLLM listens on.")] = 8000,
    write: Annotated[
        Optional[Path], typer.Option(help=f"Also write the script here (e.g. STACK/{SCRIPT_NAME}).")
    ] = None,
) -> None:
    """Print the `vllm serve` command (one LoRA module per stage, named after it) for a stack."""
    try:
        plan = vllm_plan(folder, base=base, host=host, port=port)
    except FSLMError as err:
        raise fail(str(err)) from None
    script = render(plan, folder)
    if write is not None:
        try:
            write_text(write, script, mode=0o777)
        except OSError as err:
            raise fail(f"cannot write {write} ({err})") from None
        typer.secho(f"wrote {write}", fg=typer.colors.GREEN, err=True)
    typer.echo(script, nl=False)
