"""Atomic file writes: a reader sees the old file or the complete new one, never half a file.

Write to a temporary file in the same directory, flush and fsync it, ``os.replace`` it over the
target (atomic on POSIX within one file system), then fsync the directory so the rename survives
a crash. Used by every writer in `lab`: checkpoints, metric records, benchmark results. Both functions check
all their input before they touch the disk, so a refused call leaves the file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lab.core.checks import check_path


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> Path:
    """Write ``chunks`` (an iterable of bytes-like objects: bytes, bytearray, memoryview, a NumPy array) to
    ``path`` atomically; on any error ``path`` is untouched and no temp file remains."""
    path = check_path("path", path)
    if isinstance(chunks, (str, bytes, bytearray, memoryview)) or not isinstance(chunks, Iterable):
        raise TypeError(f"chunks must be an iterable of bytes-like chunks, e.g. [data], got {type(chunks).__name__}")
    if isinstance(chunks, (list, tuple)):
        chunks = [_bytes_like(i, chunk) for i, chunk in enumerate(chunks)]     # all checked before the disk
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for i, chunk in enumerate(chunks):
                f.write(_bytes_like(i, chunk))
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


def _bytes_like(i: int, chunk):
    """``chunk`` (the ``i``-th of ``chunks``) if it is bytes-like (has the buffer protocol), else TypeError."""
    try:
        memoryview(chunk).release()
    except TypeError:
        raise TypeError(f"chunks[{i}] must be bytes-like (bytes, bytearray, memoryview), got "
                        f"{type(chunk).__name__} {chunk!r:.60}") from None
    return chunk


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Serialise ``obj`` (strict JSON: NaN/inf rejected) first, then write it with `atomic_write`."""
    path = check_path("path", path)
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:        # an object JSON has no type for; NaN or inf; a cycle
        raise type(error)(f"obj is not strict JSON: {error}") from None
    return atomic_write(path, [text.encode("utf-8")])
