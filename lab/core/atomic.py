"""Atomic file writes: a reader sees the old file or the complete new one, never half a file.

Write to a temporary file in the same directory, flush and fsync it, ``os.replace`` it over the
target (atomic on POSIX within one file system), then fsync the directory so the rename survives
a crash. Used by every writer in `lab`: checkpoints, metric records, benchmark results.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> Path:
    """Write ``chunks`` to ``path`` atomically; on any error ``path`` is untouched and no temp file remains."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Serialise ``obj`` (strict JSON: NaN/inf rejected) first, then write it with `atomic_write`."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, [text.encode("utf-8")])
