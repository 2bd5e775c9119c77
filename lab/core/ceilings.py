"""The one source of hardware ceilings: memory bandwidth and peak matmul rate of a device.

Every roofline and speed-of-light figure in `lab` and in the book takes its ceilings from here
(`device_ceilings`), and every figure says where it came from:

* **measured**, when ``results/`` holds a record of the device with its ``"ceilings"``: the bandwidth
  of a device copy (1 GiB read and 1 GiB written, timed by `lab.core.timing.time_ms`, i.e.
  `triton.testing.do_bench` on a GPU) and the rate of an 8192³ bf16 matmul, both taken by
  `measure_ceilings`. Three records carry them: ``infer_<gpu>.json`` (``python -m
  lab.bench infer``), ``gpu_kernels_<gpu>.json`` and ``gpu_infer_<gpu>.json`` (stages of ``python -m
  lab.bench gpu``); quick and dry-run records are not measurements of the device and are ignored;
* otherwise the **datasheet** figure (`DATASHEETS`), labelled ``"datasheet (NVIDIA H100 SXM5, <url>)"``.
  A datasheet figure is a vendor's peak, not a measurement: a copy kernel reaches a fraction of the
  HBM bandwidth and a cuBLAS matmul a fraction of the tensor-core peak.

NVIDIA publishes its tensor-core rates "with sparsity" (2:4 structured sparsity doubles them); the
dense rates below are half of the published ones. The int8 rate is datasheet-only: no lab benchmark
measures an int8 ceiling.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from lab.core.checks import check_choice, check_device, check_float_dtype, check_number, check_path
from lab.core.records import RESULTS_DIR, device_name
from lab.core.timing import time_ms

__all__ = ["CEILING_RECORDS", "DATASHEETS", "DEFAULT_DEVICE", "Ceilings", "Datasheet", "ceiling_sizes",
           "datasheet_ceilings", "datasheet_key", "device_ceilings", "measure_ceilings", "measured_ceilings"]


def _check_fields(record, texts: tuple[str, ...], rates: tuple[str, ...]) -> None:
    """TypeError/ValueError unless the fields ``texts`` of ``record`` are strs and ``rates`` positive numbers."""
    for field in texts:
        if not isinstance(getattr(record, field), str):
            raise TypeError(f"{field} must be a str, got {getattr(record, field)!r}")
    for field in rates:
        check_number(field, getattr(record, field), 0.0, closed=(False, True))


@dataclass(frozen=True)
class Datasheet:
    """A GPU's published peaks: HBM bandwidth (bytes/s) and dense tensor-core rates (FLOP/s, OP/s)."""

    name: str
    memory: str
    bandwidth: float
    bf16_flops: float
    int8_ops: float
    url: str

    def __post_init__(self):
        _check_fields(self, ("name", "memory", "url"), ("bandwidth", "bf16_flops", "int8_ops"))

    @property
    def source(self) -> str:
        return f"datasheet ({self.name}, {self.url})"


# NVIDIA's product pages, "Technical Specifications" tables; the H100 figures agree with PyTorch's own
# table (torch/_inductor/analysis/device_info.py, torch 2.13, which cites the H100 page: bf16 1,979 TFLOPS and
# int8 3,958 TOPS "with sparsity per the datasheet", sparsity factor 2, 3,350 GB/s):
#   H100 SXM: 80 GB HBM3, 3.35 TB/s; BF16 Tensor Core 1,979 TFLOPS*, INT8 Tensor Core 3,958 TOPS*
#             (* with sparsity; dense 989 TFLOPS and 1,979 TOPS)   https://www.nvidia.com/en-us/data-center/h100/
#   H200 SXM: 141 GB HBM3e, 4.8 TB/s; the same Hopper GPU and the same tensor-core rates as the H100 SXM
#             https://www.nvidia.com/en-us/data-center/h200/
DATASHEETS: dict[str, Datasheet] = {
    "h100-sxm5": Datasheet("NVIDIA H100 SXM5", "80 GB HBM3", 3.35e12, 989e12, 1979e12,
                           "https://www.nvidia.com/en-us/data-center/h100/"),
    "h200-sxm": Datasheet("NVIDIA H200 SXM", "141 GB HBM3e", 4.8e12, 989e12, 1979e12,
                          "https://www.nvidia.com/en-us/data-center/h200/"),
}
DEFAULT_DEVICE = "h100-sxm5"   # the GPU the book's examples are sized for

# The records that `lab.bench` writes with a "ceilings" entry (see the module docstring).
CEILING_RECORDS = ("infer_*.json", "gpu_kernels_*.json", "gpu_infer_*.json")


@dataclass(frozen=True)
class Ceilings:
    """The ceilings of one device, each with its source.

    ``bandwidth`` (bytes/s) and ``peak_flops`` (FLOP/s: dense bf16 from a datasheet, or the recorded
    matmul's dtype when measured) share ``source``: ``"measured (<record> ...)"`` or ``"datasheet (...)"``.
    ``int8_ops`` (OP/s, dense int8) comes from a datasheet only (``int8_source``), None without one.
    """

    device: str
    bandwidth: float
    peak_flops: float
    source: str
    int8_ops: float | None = None
    int8_source: str | None = None

    def __post_init__(self):
        _check_fields(self, ("device", "source"), ("bandwidth", "peak_flops"))
        if (self.int8_ops is None) != (self.int8_source is None):
            raise ValueError(f"int8_ops={self.int8_ops!r} and int8_source={self.int8_source!r}: give both or neither")
        if self.int8_ops is not None:
            _check_fields(self, ("int8_source",), ("int8_ops",))

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")

    @property
    def ridge(self) -> float:
        """The ridge point peak_flops / bandwidth (FLOP per byte) where the two roofs meet."""
        return self.peak_flops / self.bandwidth

    @property
    def label(self) -> str:
        """Short text for a plot or a table: "3.35 TB/s, 989 TFLOP/s (datasheet: NVIDIA H100 SXM5)"."""
        origin = f"measured on {self.device}" if self.measured else f"datasheet: {self.device}"
        return f"{self.bandwidth / 1e12:.3g} TB/s, {self.peak_flops / 1e12:.4g} TFLOP/s ({origin})"


def datasheet_key(device: str | torch.device) -> str | None:
    """The `DATASHEETS` key of ``device`` (a key, or a name as `torch.cuda.get_device_name` and the
    records give it, e.g. "NVIDIA H100 80GB HBM3" → "h100-sxm5", "NVIDIA H200" → "h200-sxm"), or None.

    Only the SXM parts have entries: an H100 PCIe (HBM2e) or NVL and an H200 NVL have other clocks and
    bandwidths, so they get None (their ceilings must come from a record).
    """
    if isinstance(device, torch.device):
        device = device_name(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a device name (str) or a torch.device, got {device!r} "
                        f"({type(device).__name__})")
    name = device.lower()
    if name in DATASHEETS:
        return name
    if any(other in name for other in ("pcie", "nvl")):
        return None
    if "h200" in name:
        return "h200-sxm"
    if "h100" in name and ("hbm3" in name or "sxm" in name):
        return "h100-sxm5"
    return None


def datasheet_ceilings(key: str = DEFAULT_DEVICE) -> Ceilings:
    """The datasheet ceilings of ``key`` (a `DATASHEETS` key), whatever ``results/`` holds."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, one of {tuple(DATASHEETS)}, got {key!r}")
    if key not in DATASHEETS:
        raise ValueError(f"key={key!r} has no datasheet entry; known: {', '.join(DATASHEETS)}")
    sheet = DATASHEETS[key]
    return Ceilings(sheet.name, sheet.bandwidth, sheet.bf16_flops, sheet.source, sheet.int8_ops, sheet.source)


@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int, size: int) -> dict | None:
    # keyed by modification time and size: a rewritten record is read again
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _usable(record: dict) -> bool:
    ceilings = record.get("ceilings")
    if record.get("quick") or record.get("dry_run") or not isinstance(ceilings, dict):
        return False
    values = (ceilings.get("bandwidth"), ceilings.get("peak_flops"))
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in values)                                   # JSON true is no bandwidth


def _ceiling_records(root: Path) -> list[tuple[Path, dict]]:
    out = []
    for pattern in CEILING_RECORDS:
        for path in sorted(root.glob(pattern)):
            try:
                stat = path.stat()
            except OSError:
                continue
            record = _read(str(path), stat.st_mtime_ns, stat.st_size)
            if isinstance(record, dict) and _usable(record):
                out.append((path, record))
    return out


def _display_path(path: Path) -> str:
    """``results/<name>`` for a record of the repository, else the path as given."""
    try:
        return str(path.resolve().relative_to(RESULTS_DIR.parent.resolve()))
    except ValueError:
        return str(path)


def measured_ceilings(device: str | torch.device = DEFAULT_DEVICE, root: str | Path = RESULTS_DIR) -> Ceilings | None:
    """The newest recorded ceilings of ``device`` under ``root``, or None when no record has them.

    A record is of ``device`` when both map to the same `datasheet_key` (any H100 SXM record serves
    "h100-sxm5"), or, for a device without a datasheet entry, when its ``"device"`` equals the name.
    """
    key, root = datasheet_key(device), check_path("root", root, folder=True)
    if isinstance(device, torch.device):
        device = device_name(device)
    matches = [(path, record) for path, record in _ceiling_records(root)
               if (datasheet_key(str(record.get("device", ""))) == key if key else record.get("device") == device)]
    if not matches:
        return None
    path, record = max(matches, key=lambda m: (str(m[1].get("date", "")), m[0].name))
    c = record["ceilings"]
    parts = [_display_path(path) + ": " + str(record.get("device", "?"))]
    if c.get("copy_bytes"):
        parts.append(f"device copy of {c['copy_bytes'] / 2 / 2**30:.3g} GiB (read and written)")
    if c.get("matmul_n"):
        parts.append(f"{c['matmul_n']}³ {c.get('matmul_dtype', '')} matmul".replace("  ", " "))
    parts += [str(record[k]) for k in ("command", "date") if record.get(k)]
    sheet = DATASHEETS.get(key) if key else None
    return Ceilings(str(record.get("device", device)), float(c["bandwidth"]), float(c["peak_flops"]),
                    "measured (" + "; ".join(parts) + ")",
                    sheet.int8_ops if sheet else None, sheet.source if sheet else None)


def device_ceilings(device: str | torch.device = DEFAULT_DEVICE, root: str | Path = RESULTS_DIR) -> Ceilings:
    """The ceilings of ``device``: measured when a record under ``root`` has them (`measured_ceilings`),
    else the datasheet's (`datasheet_ceilings`), each labelled with its source in ``.source``.

    ``device``: a `DATASHEETS` key ("h100-sxm5", the default; "h200-sxm"), a device name as a record
    or `torch.cuda.get_device_name` gives it, or a ``torch.device``. ValueError when there is neither a
    record nor a datasheet entry.
    """
    measured = measured_ceilings(device, root)
    if measured is not None:
        return measured
    key = datasheet_key(device)
    if key is None:
        raise ValueError(f"no ceilings for device {str(device)!r}: no record under {root} has them "
                         f"({', '.join(CEILING_RECORDS)}) and it has no datasheet entry (known: "
                         f"{', '.join(DATASHEETS)}); `python -m lab.bench gpu` on it records them")
    return datasheet_ceilings(key)


def ceiling_sizes(device: torch.device, quick: bool) -> tuple[int, int]:
    """(bytes of the copy's source, n of the n × n × n matmul) that `measure_ceilings` uses.

    On a GPU always 1 GiB (2 GiB moved: read + write; far beyond any L2 cache,
    long enough for CUDA-event timing) and n = 8192; on the CPU 256 MiB and 2048, or 4 MiB and 256
    with ``quick``.
    """
    check_choice("quick", quick, (False, True))
    if check_device("device", device).type == "cuda":
        return 2**30, 8192
    return (2**22, 256) if quick else (2**28, 2048)


def measure_ceilings(device: torch.device, dtype: torch.dtype, quick: bool = False) -> dict:
    """{"bandwidth": bytes/s of a device copy (read + write), "peak_flops": FLOP/s of an n×n×n matmul}, timed
    with `time_ms` (CUDA events on a GPU)."""
    device, dtype = check_device("device", device), check_float_dtype("dtype", dtype)
    n_bytes, n = ceiling_sizes(device, quick)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), device, 5)
    del src, dst
    a = torch.randn(n, n, device=device).to(dtype)
    matmul_ms = time_ms(lambda: a @ a, device, 5)
    return {"bandwidth": 2 * n_bytes / (copy_ms * 1e-3), "peak_flops": 2 * n**3 / (matmul_ms * 1e-3),
            "copy_bytes": 2 * n_bytes, "copy_ms": copy_ms, "matmul_n": n, "matmul_ms": matmul_ms,
            "matmul_dtype": str(dtype).removeprefix("torch.")}
