"""The safetensors file format, written and read from scratch.

Layout of a file (all integers little-endian)::

    [ n : u64 ][ header : n bytes of UTF-8 JSON, space-padded to a multiple of 8 ][ data ]

    header = {"__metadata__": {str: str},                      (optional)
              name: {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}

Tensor ``name`` occupies ``data[begin:end]`` (offsets relative to the start of ``data``), stored
row-major as raw little-endian elements, so ``end - begin = numel · itemsize``. The byte ranges
tile ``data`` exactly: no gaps, no overlaps, nothing after the last tensor.

Like the reference (Rust) library, tensors are laid out by descending dtype rank (`DTYPES` order,
which is non-increasing in item size) and then by name. With the header padded to a multiple of 8,
every tensor then starts at a file offset divisible by its item size, so a memory-mapped file can be
viewed as typed tensors without copying. Without metadata our files are byte-identical to the
library's.

Integrity: `save_safetensors` stores each tensor's SHA-256 in ``__metadata__`` under
``"lab.sha256.<name>"`` (the file stays a valid safetensors file; other readers ignore the keys).
SHA-256 rather than CRC-32: it also catches deliberate edits, not only random bit flips, and costs one
streaming pass (~1 GB/s) at save and at load. Files without these keys (e.g. written by the
`safetensors` library) load unverified.

Tied weights (two entries whose bytes overlap in memory) are refused, as the library does: a file
cannot record the aliasing, so loading would silently untie them. Drop the duplicate names first.
The host is assumed little-endian (x86, ARM).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap as _mmap
import struct
from pathlib import Path

import torch

from lab.core.atomic import atomic_write
from lab.core.checks import check_device, check_path

# Rank order of the reference library's dtype enum (lowest first).
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
    "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
    "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "F64": torch.float64, "I64": torch.int64, "U64": torch.uint64,
}
_DTYPE_NAME = {dtype: name for name, dtype in DTYPES.items()}
_RANK = {name: i for i, name in enumerate(DTYPES)}
CHECKSUM_PREFIX = "lab.sha256."
MAX_HEADER_BYTES = 100_000_000  # the reference library's limit


def _extent(t: torch.Tensor) -> int:
    """Bytes from a non-empty tensor's first element to the end of its last: numel·itemsize when it is
    contiguous, more for a strided view (whose elements may interleave with another tensor's)."""
    return t.element_size() * (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())))


def validate(tensors: dict, metadata: dict | None = None, arg: str = "tensors") -> None:
    """Raise TypeError/ValueError unless ``tensors`` and ``metadata`` can be saved (nothing is copied);
    ``arg`` is the name of the caller's argument in the messages."""
    if not isinstance(tensors, dict):
        raise TypeError(f"{arg} must be a dict str -> torch.Tensor, got {type(tensors).__name__}")
    where = "tensors" if arg == "tensors" else f"{arg}: tensors"
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise TypeError(f"{where}: tensor name {name!r} is not allowed; names are str other than '__metadata__'")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}[{name!r}] is a {type(t).__name__}; only torch.Tensor values are allowed")
        if t.dtype not in _DTYPE_NAME:
            raise ValueError(f"{where}[{name!r}] has dtype {t.dtype}; allowed: {sorted(_DTYPE_NAME.values(), key=str)}")
        if t.layout != torch.strided or t.device.type == "meta":
            raise ValueError(f"{where}[{name!r}] is {t.layout} on {t.device}; only dense tensors with data are allowed")
    spans = sorted((str(t.device), t.data_ptr(), t.data_ptr() + _extent(t), name)
                   for name, t in tensors.items() if t.numel())
    for (dev_a, _, end_a, a), (dev_b, start_b, _, b) in zip(spans, spans[1:]):
        if dev_a == dev_b and start_b < end_a:
            raise ValueError(f"{where} {a!r} and {b!r} share memory (tied weights); a file cannot store "
                             "the aliasing, so pass only one of them")
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise TypeError(f"metadata={metadata!r} is not allowed; it must be a dict of str -> str")
    if any(k.startswith(CHECKSUM_PREFIX) for k in metadata):
        raise ValueError(f"metadata keys starting with {CHECKSUM_PREFIX!r} are reserved for checksums")


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes (contiguous CPU tensor), without copying (as_strided: a one-element view may keep any
    stride, even when contiguous, and ``view(torch.uint8)`` needs stride 1)."""
    return memoryview(t.as_strided((t.numel(),), (1,)).view(torch.uint8).numpy())


def _sha256(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _layout(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names in file order: descending dtype rank, then name (the reference library's order)."""
    return sorted(tensors, key=lambda n: (-_RANK[_DTYPE_NAME[tensors[n].dtype]], n))


def encode_header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """``u64 n`` + JSON header padded with spaces to n ≡ 0 (mod 8), for contiguous CPU tensors."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name in _layout(tensors):
        t = tensors[name]
        header[name] = {"dtype": _DTYPE_NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None, checksum: bool = True) -> None:
    """Write ``tensors`` to ``path`` atomically in safetensors format.

    Non-contiguous or non-CPU tensors are copied to contiguous CPU memory first. ``metadata`` maps
    str → str; ``checksum`` adds one ``lab.sha256.<name>`` entry per tensor.
    """
    path = check_path("path", path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path={str(path)!r}: directory {str(path.parent)!r} does not exist")
    validate(tensors, metadata)
    metadata = dict(metadata or {})
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    if checksum:
        metadata = {**metadata, **{CHECKSUM_PREFIX + n: _sha256(_raw(t)) for n, t in tensors.items()}}
    header = encode_header(tensors, metadata)
    atomic_write(path, [header, *(_raw(tensors[n]) for n in _layout(tensors) if tensors[n].numel())])


class SafetensorsFile:
    """One safetensors file: header parsed and validated on open, tensors served on demand.

    With ``mmap=True`` the file is mapped copy-on-write: `tensor` returns a zero-copy view whose pages
    are read from disk only when touched (writes to it never reach the file). With ``mmap=False``
    the whole file is read into one buffer that all tensors view.
    """

    def __init__(self, path: str | Path, mmap: bool = True) -> None:
        self.path = check_path("path", path)
        if not self.path.is_file():
            raise FileNotFoundError(f"path={str(self.path)!r} does not exist or is not a file; "
                                    "expected a .safetensors file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{self.path}: truncated file ({size} bytes); a safetensors file starts "
                                 "with an 8-byte header length")
            n = struct.unpack("<Q", prefix)[0]
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"{self.path}: header length {n} is impossible for a {size}-byte file "
                                 f"(at most min({MAX_HEADER_BYTES}, file size - 8)); truncated or not safetensors")
            raw_header = f.read(n)
            self.data_start = 8 + n
            if mmap:
                self._buf = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
            else:
                self._buf = bytearray(size)
                f.seek(0)
                f.readinto(self._buf)
        self.entries, self.metadata = self._parse(raw_header, size - self.data_start)

    def _parse(self, raw: bytes, data_len: int) -> tuple[dict[str, dict], dict[str, str]]:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path}: header is not valid UTF-8 JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: header must be a JSON object, got {type(header).__name__}")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError(f"{self.path}: __metadata__ must map str -> str, got {metadata!r}")
        spans = []
        for name, e in header.items():
            ok = (isinstance(e, dict) and e.get("dtype") in DTYPES and isinstance(e.get("shape"), list)
                  and all(type(d) is int and d >= 0 for d in e["shape"])          # JSON true is no dimension
                  and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
                  and all(type(o) is int for o in e["data_offsets"]))
            if not ok:
                raise ValueError(f"{self.path}: header entry for tensor {name!r} is malformed: {e!r}; "
                                 f"need dtype in {list(DTYPES)}, shape [int>=0...], data_offsets [begin, end]")
            begin, end = e["data_offsets"]
            nbytes = DTYPES[e["dtype"]].itemsize * math.prod(e["shape"])     # exact: a huge shape cannot wrap
            if end - begin != nbytes:
                raise ValueError(f"{self.path}: tensor {name!r} has data_offsets {[begin, end]} "
                                 f"({end - begin} bytes) but dtype/shape need {nbytes} bytes")
            spans.append((begin, end, name))
        position = 0
        for begin, end, name in sorted(spans):
            if begin != position:
                raise ValueError(f"{self.path}: tensor {name!r} starts at data offset {begin}, expected "
                                 f"{position}; offsets overlap or leave a gap")
            position = end
        if position != data_len:
            raise ValueError(f"{self.path}: header describes {position} data bytes but the file holds "
                             f"{data_len}; the file is truncated or has trailing bytes")
        for key in metadata:
            if key.startswith(CHECKSUM_PREFIX) and key[len(CHECKSUM_PREFIX):] not in header:
                raise ValueError(f"{self.path}: checksum {key!r} names no tensor in the file")
        return header, metadata

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def _bytes(self, name: str) -> tuple[int, int]:
        if name not in self.entries:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        begin, end = self.entries[name]["data_offsets"]
        return self.data_start + begin, self.data_start + end

    def verify(self, name: str) -> None:
        """Compare the tensor's SHA-256 with the stored one, if any; ValueError on mismatch."""
        stored = self.metadata.get(CHECKSUM_PREFIX + name)
        if stored is None:
            return
        start, stop = self._bytes(name)
        with memoryview(self._buf) as view:
            computed = _sha256(view[start:stop])
        if computed != stored:
            raise ValueError(f"{self.path}: tensor {name!r} fails its SHA-256 check (stored {stored[:12]}…, "
                             f"computed {computed[:12]}…); the file is corrupt or was altered")

    def tensor(self, name: str, verify: bool = True) -> torch.Tensor:
        """Tensor ``name`` as a view of the file buffer (a copy only if its offset is misaligned)."""
        start, stop = self._bytes(name)
        if verify:
            self.verify(name)
        entry = self.entries[name]
        dtype = DTYPES[entry["dtype"]]
        if start == stop:
            return torch.empty(entry["shape"], dtype=dtype)
        raw = torch.frombuffer(self._buf, dtype=torch.uint8, count=stop - start, offset=start)
        if start % dtype.itemsize:
            raw = raw.clone()
        return raw.view(dtype).reshape(entry["shape"])  # bf16/f8 reinterpret the bytes as-is

    def release(self) -> None:
        """Drop this mapping's resident pages (they stay in the OS page cache; touching re-reads them).

        Only for read-only use: a view that was written to would lose its private changes.
        """
        if isinstance(self._buf, _mmap.mmap) and hasattr(_mmap, "MADV_DONTNEED"):
            self._buf.madvise(_mmap.MADV_DONTNEED)


def load_safetensors(path: str | Path, device: str | torch.device = "cpu", mmap: bool = True,
                     verify: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, in file order, moved to ``device``.

    On CPU with ``mmap=True`` they are zero-copy views of the memory-mapped file. ``verify`` checks the
    stored SHA-256 of each tensor (which reads every byte once, but copies nothing).
    """
    check_device("device", device)
    f = SafetensorsFile(path, mmap=mmap)
    return {name: f.tensor(name, verify=verify).to(device) for name in f.names}
