"""Alpaca-format data: loading and the seeded held-out split."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_fslm.errors import InvalidInputError


def request_text(row: dict[str, Any]) -> str:
    """The request a stack reads for one Alpaca row: the instruction, plus its input if any."""
    extra = str(row.get("input") or "").strip()
    instruction = str(row["instruction"]).strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def record_id(row: dict[str, Any]) -> str:
    """A stable id of one row (hash of instruction, input and output): the resume key."""
    key = json.dumps([row.get("instruction"), row.get("input"), row.get("output")])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def record_ids(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each row's id, unique in ``rows``: a repeat of an identical row gets ``<id>-2``, ``<id>-3``...

    The ids stay stable across reruns on the same data (a resume skips exactly the rows it finished),
    and the n-th copy of a row is a record of its own instead of being taken for the first one.
    """
    seen: dict[str, int] = {}
    ids = []
    for row in rows:
        base = record_id(row)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def load_alpaca(path: str | Path) -> list[dict[str, Any]]:
    """Read an Alpaca JSON file (a list of ``instruction``/``input``/``output`` objects).

    Raises:
        InvalidInputError: Naming the file and the first bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: data file not found")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(rows, list):
        raise InvalidInputError(f"{path}: expected a JSON list of records")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not row.get("instruction") or "output" not in row:
            raise InvalidInputError(f"{path}: record {i} needs 'instruction' and 'output'")
    return rows


def split_heldout(
    rows: list[dict[str, Any]], n_heldout: int = 200, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded split into ``(train, heldout)``; the held-out rows never reach training.

    Raises:
        InvalidInputError: If there are not more rows than ``n_heldout``.
    """
    if n_heldout >= len(rows):
        raise InvalidInputError(f"cannot hold out {n_heldout} of {len(rows)} records")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_heldout])
    train = [rows[i] for i in order[n_heldout:]]
    return train, [rows[i] for i in sorted(held)]
