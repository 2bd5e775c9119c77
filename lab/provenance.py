"""Provenance of a recorded number: the device, the library versions, the date and the command.

Every record `lab` writes (benchmark results in ``results/``, the checkpoints'
``training_record.json``) starts with the same fields, so any figure of the book can be traced to
the machine, the versions and the exact command that produced it:

    {"device", "device_type", "torch", "triton", "python", "date" (ISO 8601, UTC), "command"}
"""

from __future__ import annotations

import datetime as dt
import platform
import re
from pathlib import Path

import torch


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
