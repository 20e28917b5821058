"""Files written atomically: a temporary file in the same folder, then a rename into place."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object], mode: int = 0o666) -> Path:
    """Write a file through a temporary file in the same folder, then rename it into place.

    Args:
        path: The file.
        write: Writes the content to the temporary path it is given.
        mode: Permissions before the umask (0o777 for a script).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str, mode: int = 0o666) -> Path:
    """Write text atomically (``mode``: permissions before the umask)."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode)


__all__ = ["write_atomically", "write_text"]


def sha256_file(path: Path) -> str:
    """The file's SHA-256 hex digest, read in 1 MiB blocks (GGUF files are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
