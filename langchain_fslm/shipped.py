"""The trained default stack shipped inside the package, and the tool that puts one there.

``langchain_fslm/stacks/default/`` is an ordinary stack folder (``fslm_stack.json`` + one peft adapter per
stage, :mod:`langchain_fslm.persistence`) plus a card: ``card.json`` (how it was trained, and the SHA-256
of every file of every adapter) and ``README.md`` (the same, for people). The adapters are a few MiB of
float16 safetensors, package data, so a fresh install answers with the trained stack offline; the base
model stays the embedded one, resolved on each machine.

:func:`ship_stack` turns a stack folder written by ``fslm train`` into that folder (``python -m
langchain_fslm.shipped SRC --card-json CARD``); :func:`shipped_stack_dir` finds it and checks the hashes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from langchain_fslm.errors import ManifestError
from langchain_fslm.files import sha256_file, write_text
from langchain_fslm.manifest import MANIFEST_FILE, load_manifest

SHIPPED_DIR = Path(__file__).resolve().parent / "stacks" / "default"
"""Where the package keeps its trained default stack."""

CARD_FILE = "card.json"
ALPACA_LICENSE = (
    "The adapters were trained on Stanford Alpaca data (CC BY-NC 4.0): they are for non-commercial use. "
    "The package's own code license is unchanged."
)
_CARD_FIELDS = ("data", "records", "teacher", "mode", "derive", "steps", "seed", "commit")


def shipped_stack_dir(folder: Path | None = None) -> Path | None:
    """The shipped trained stack, its adapters checked against the card; None where none is shipped.

    Args:
        folder: Look here instead of :data:`SHIPPED_DIR` (tests).

    Raises:
        ManifestError: If the folder is there but an adapter file is missing or its hash is not the
            card's (a damaged install must not answer as the trained stack).
    """
    folder = folder or SHIPPED_DIR
    if not (folder / MANIFEST_FILE).is_file():
        return None
    verify_card(folder)
    return folder


def verify_card(folder: Path) -> dict[str, Any]:
    """Check every adapter file of a shipped stack against ``card.json``; return the card.

    Raises:
        ManifestError: Naming the file whose hash differs, is missing, or is not on the card.
    """
    card_path = folder / CARD_FILE
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        hashes: dict[str, str] = dict(card["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"{card_path}: unreadable shipped-stack card ({err})") from None
    on_disk = _adapter_files(folder)
    for name in sorted(set(hashes) | set(on_disk)):
        if name not in on_disk:
            raise ManifestError(f"{folder / name}: on the card but missing (reinstall the package)")
        if name not in hashes:
            raise ManifestError(f"{folder / name}: an adapter file the card does not list")
        if sha256_file(on_disk[name]) != hashes[name]:
            raise ManifestError(f"{folder / name}: SHA-256 differs from {card_path} (damaged install?)")
    return card


def ship_stack(src: str | Path, card: Mapping[str, Any], dest: Path | None = None) -> Path:
    """Copy a trained stack into the package as its default: adapters as float16, a card with hashes.

    Args:
        src: A stack folder (``fslm train``'s output).
        card: How it was trained: ``data``, ``records``, ``teacher``, ``mode``, ``derive``, ``steps``,
            ``seed``, ``commit`` (all required: the card is the stack's provenance) and any extra keys
            (for example ``results``).
        dest: Where to write (default :data:`SHIPPED_DIR`); replaced.

    Returns:
        The shipped folder.

    Raises:
        ManifestError: If ``src`` is not a stack folder or the card lacks a field.
    """
    from safetensors.torch import load_file, save_file

    src, dest = Path(src), dest or SHIPPED_DIR
    manifest = load_manifest(src)  # validates the folder and that every adapter is there
    missing = [f for f in _CARD_FIELDS if f not in card]
    if missing:
        raise ManifestError(f"shipped-stack card: missing field(s) {missing}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / MANIFEST_FILE, tmp / MANIFEST_FILE)
    for spec in manifest.stages:
        if spec.adapter is None:
            continue
        out = tmp / spec.adapter
        out.mkdir(parents=True)
        shutil.copy2(src / spec.adapter / "adapter_config.json", out / "adapter_config.json")
        # float16 halves the package; LoRA factors are small numbers well inside its range
        weights = load_file(str(src / spec.adapter / "adapter_model.safetensors"))
        tensors = {k: v.half() for k, v in weights.items()}
        save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    full = {**card, "license": ALPACA_LICENSE}
    full["sha256"] = {name: sha256_file(path) for name, path in sorted(_adapter_files(tmp).items())}
    write_text(tmp / CARD_FILE, json.dumps(full, indent=2) + "\n")
    write_text(tmp / "README.md", _card_markdown(full, [s.name for s in manifest.stages]))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _adapter_files(folder: Path) -> dict[str, Path]:
    adapters = folder / "adapters"
    if not adapters.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p for p in sorted(adapters.rglob("*")) if p.is_file()}


def _card_markdown(card: Mapping[str, Any], stages: list[str]) -> str:
    rows = "\n".join(f"| {key} | {card[key]} |" for key in _CARD_FIELDS)
    extra = {k: v for k, v in card.items() if k not in (*_CARD_FIELDS, "sha256", "license")}
    extras = "\n".join(f"| {k} | {v} |" for k, v in extra.items())
    return (
        "# The shipped default stack\n\n"
        f"`FSLMChain.default()` loads this folder: stages {', '.join(stages)}, one LoRA adapter each on the "
        "embedded SmolLM2-135M-Instruct base. `FSLMChain.default(trained=False)` gives the zero-shot "
        "prompts instead. Results: docs/results.md.\n\n"
        f"| | |\n|---|---|\n{rows}\n{extras}\n\n"
        f"**License of the adapters.** {card['license']}\n\n"
        "The SHA-256 of every adapter file is in `card.json`; the package checks them before loading.\n"
    )


def main() -> None:
    """``python -m langchain_fslm.shipped SRC --card-json CARD``: ship a trained stack as the default."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("src", type=Path, help="stack folder written by `fslm train`")
    parser.add_argument("--card-json", type=Path, required=True, help="JSON file of the card's fields")
    parser.add_argument("--dest", type=Path, default=None)
    args = parser.parse_args()
    card = json.loads(args.card_json.read_text(encoding="utf-8"))
    print(ship_stack(args.src, card, args.dest))  # noqa: T201  # the command's output


if __name__ == "__main__":
    main()
