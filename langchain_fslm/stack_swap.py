"""Putting a finished stack folder in place of the old one, so that a kill at any moment loses nothing.

A save builds the new stack in a hidden sibling (``.<name>.tmp-<id>``), then swaps it with the old one:
in one step where the OS has an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``), else in two
renames through ``.<name>.old-<id>``. A kill between those two renames leaves no stack at the destination
but the old one beside it; the next save or load of that folder puts it back (:func:`recover`) and removes
every leftover of killed saves. Leftovers carry the saving process's id (``.<name>.tmp-<pid>-<id>``), so
only those of processes that are gone are touched: a save running elsewhere keeps its folders.

Files of the old stack that the new one does not write (a README, evaluation results, a training log)
are carried over; the manifest and ``adapters/`` belong to the stack and are replaced whole.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from langchain_fslm.errors import ManifestError

MANIFEST_FILE = "fslm_stack.json"
OWNED = frozenset({MANIFEST_FILE, "adapters"})
"""Top-level entries a save replaces whole; everything else in the old folder is kept."""

_ACTIVE: set[str] = set()  # names of the temporary folders of saves running in this process
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def write_stack_atomically(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a stack folder in a temporary sibling, then swap it into place.

    At every moment the destination holds the old stack or the new one (or, on a system without an
    atomic exchange, for one rename, neither: then the old one is beside it and :func:`recover` restores
    it on the next save or load).

    Args:
        folder: Destination stack folder (replaced if it exists; its files other than the manifest and
            ``adapters/`` are kept unless the new stack writes them).
        fill: Writes every file into the temporary folder it is given.

    Returns:
        The destination folder.

    Raises:
        ManifestError: If the destination is a file, or a folder that is not empty and holds no stack.
    """
    dest = Path(folder).expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    _recover(dest)
    if dest.exists() and not dest.is_dir():
        raise ManifestError(f"{dest} exists and is not a folder; a stack is not saved over it.")
    if dest.is_dir() and not (dest / MANIFEST_FILE).is_file() and any(dest.iterdir()):
        raise ManifestError(
            f"{dest} is a folder that is not empty and holds no {MANIFEST_FILE}; saving a stack there "
            "would replace everything in it. Choose a new or empty folder, or an existing stack."
        )
    tmp = dest.parent / f".{dest.name}.tmp-{_tag()}"
    tmp.mkdir()  # not mkdtemp: the stack gets the umask's permissions, not 0700
    mine = {tmp.name}
    _ACTIVE.update(mine)
    try:
        fill(tmp)
        if dest.exists():
            _carry_over(dest, tmp)
            if not _exchange(tmp, dest):
                old = dest.parent / f".{dest.name}.old-{_tag()}"
                mine.add(old.name)
                _ACTIVE.update(mine)
                os.replace(dest, old)  # a kill right here is what recover() repairs
                os.replace(tmp, dest)
                tmp = old
            # after the swap ``tmp`` holds the old stack
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _ACTIVE.difference_update(mine)
    return dest


def recover(folder: str | Path) -> bool:
    """Repair what a killed save left beside ``folder``: restore its old stack if it is missing, clean up.

    Args:
        folder: A stack folder (it may not exist).

    Returns:
        Whether a stack was put back at ``folder``.
    """
    dest = Path(folder).expanduser().resolve()
    return dest.parent.is_dir() and _recover(dest)


def _recover(dest: Path) -> bool:
    restored = False
    if not (dest / MANIFEST_FILE).is_file():
        olds = [p for p in _leftovers(dest) if ".old-" in p.name and _stack_in(p) is not None]
        if olds and (not dest.exists() or (dest.is_dir() and not any(dest.iterdir()))):
            newest = max(olds, key=lambda p: p.stat().st_mtime)
            if dest.exists():
                dest.rmdir()
            os.replace(_stack_in(newest) or newest, dest)
            restored = True
    for leftover in _leftovers(dest):
        shutil.rmtree(leftover, ignore_errors=True)
    return restored


def _leftovers(dest: Path) -> list[Path]:
    """Hidden siblings left by saves of ``dest`` whose process is gone."""
    prefix = f".{dest.name}."
    return [
        p
        for p in dest.parent.glob(f".{dest.name}.*")
        if p.is_dir() and p.name.startswith((prefix + "tmp-", prefix + "old-")) and not _owner_alive(p)
    ]


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _owner_alive(leftover: Path) -> bool:
    """Whether the process that made ``leftover`` still runs (names without a pid: never)."""
    pid = leftover.name.rsplit("-", 2)[-2] if leftover.name.count("-") >= 2 else ""
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return leftover.name in _ACTIVE  # a save of this process, in another thread
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _stack_in(path: Path) -> Path | None:
    """The stack inside a leftover: the folder itself, or (saves before 0.1) ``<leftover>/<name>``."""
    if (path / MANIFEST_FILE).is_file():
        return path
    inner = path / path.name.split(".old-")[0].lstrip(".")
    return inner if (inner / MANIFEST_FILE).is_file() else None


def _carry_over(old: Path, new: Path) -> None:
    """Copy the old stack's own files (not the manifest or adapters) that the new one does not write."""
    for entry in old.iterdir():
        if entry.name in OWNED or (new / entry.name).exists() or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.copytree(entry, new / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, new / entry.name)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where the OS or file system has none."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(done == 0)
