"""Writing a file whole or not at all, and the sha256 of a file: the one place for both.

``atomic_write`` writes into a temporary file beside the target, named
``.{stem}.{pid}.{random}.tmp{suffix}`` (hidden, unique per process and call, and ending in the
target's own suffix, so writers that add or read a suffix — ``np.save``, ``np.savez``,
``savefig`` — keep the name they are given), flushes and fsyncs it, renames it onto the target
and fsyncs the directory. A reader sees the old file or the new one, never a part; a crash
leaves at most a temporary file that ``TEMP_GLOB`` matches.

This module imports nothing from harmonixr, so every module may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_GLOB = ".*.tmp*"  # matches every temporary name below (a killed writer's leftovers)
BLOCK = 1 << 20


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.{stem}.{pid}.{random}.tmp{suffix}``."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[Path], None]) -> Path:
    """Replace ``path`` by ``data`` atomically: bytes, text (UTF-8), or a callable that writes
    the file at the path it is given (for writers that want a path, such as ``np.savez``).
    On any failure the temporary file is removed and ``path`` keeps its old content."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        if callable(data):
            data(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        else:
            with open(tmp, "xb") as fh:
                fh.write(data.encode() if isinstance(data, str) else data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_json(path: str | os.PathLike[str], obj: Any, **dumps_kwargs: Any) -> Path:
    """``atomic_write(path, json.dumps(obj, **dumps_kwargs))``."""
    return atomic_write(path, json.dumps(obj, **dumps_kwargs))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where directories cannot be
    opened or synced, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()
