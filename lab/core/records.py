"""Records: where they go, what stamps them, how notebooks read them back.

A record is one JSON file: a benchmark's measurements in ``results/`` (or ``--out``), or a checkpoint's
``training_record.json``. Every record starts with the same provenance fields, so any figure of the book
can be traced to the machine, the versions and the exact command that produced it:

    {"device", "device_type", "torch", "triton", "python", "date" (ISO 8601, UTC), "command"}
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import platform
import re
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "results"


def device_name(device: torch.device) -> str:
    """`torch.cuda.get_device_name` on CUDA, else the CPU model string from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind(device: torch.device) -> str:
    """File-name slug of the device: "cpu", or e.g. "nvidia-h100-80gb-hbm3"."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def provenance(device: torch.device, command: str) -> dict:
    """Device name and type, torch / triton / Python versions, the ISO UTC date and ``command`` as given."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "triton": triton_version, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command}


def check_out_dir(out: str | Path) -> None:
    """ValueError unless ``out`` (the ``--out`` folder of records) is a folder or does not exist yet."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out={str(out)!r} is an existing file; give a folder (created if missing)")


def load_results(pattern: str = "*.json", root: str | Path = RESULTS_DIR) -> list[dict]:
    """The recorded JSON files under ``root`` matching ``pattern``, sorted by file name.

    Each dict gets a ``"_path"`` key naming its file.
    """
    paths = sorted(glob.glob(str(Path(root) / pattern)))
    if not paths:
        raise FileNotFoundError(f"no results match pattern={pattern!r} under {root}; "
                                "produce them with `python -m lab.bench ...`")
    return [{**json.loads(Path(p).read_text()), "_path": p} for p in paths]
