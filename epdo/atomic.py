"""Files written atomically: a reader (or a concurrent writer) sees the old file or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temporary path next to ``path`` for the block to write; it replaces ``path`` (``os.replace``) when the
    block exits normally, and is removed when it raises.  The file and the directory entry are flushed to disk
    (``fsync``) before and after the replacement, so a crash leaves the old file or the new one, whole.

    Each call gets its own temporary (the process id and 64 random bits in its name), so processes that write the
    same file at once (two training runs filling one data cache) never touch each other's temporary: the last to
    finish wins, whole.  The block creates the file, with the usual permissions; the temporary keeps ``path``'s
    suffix (``numpy.savez`` appends ``.npz`` to names without it).  The parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp{path.suffix}")
    try:
        yield temporary
        _sync(temporary)
        os.replace(temporary, path)
        _sync(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    """``fsync`` a file or a directory (where the platform can open directories; elsewhere nothing)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
