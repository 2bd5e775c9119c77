"""Benchmark records: where they go, what stamps them, how notebooks read them back.

A record is one JSON file in ``results/`` (or ``--out``) holding a run's measurements plus its
provenance (`lab.provenance`): the device name and type, the torch / triton / Python versions, the
UTC date and the exact command, so every number a notebook shows can be traced to the run that
produced it.
"""

from __future__ import annotations

import glob
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import torch

from lab.data import REPO_ROOT
from lab.provenance import device_kind, device_name
from lab.provenance import provenance as _provenance

__all__ = ["RESULTS_DIR", "check_out_dir", "device_kind", "device_name", "load_results", "provenance"]

RESULTS_DIR = REPO_ROOT / "results"


def provenance(device: torch.device, argv: Sequence[str]) -> dict:
    """`lab.provenance.provenance` with the command ``python -m lab.bench <argv>``."""
    return _provenance(device, "python -m lab.bench " + shlex.join(argv))


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
