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

import numpy as np
import torch

from lab.core.checks import check_int, check_number
from lab.core.stats import document_sums

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


def add_seed(experiments: dict, results: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]) -> None:
    """Append one seed's runs to a seeds record's ``experiments``, in place.

    results: {experiment: ({run: per-token NLL (N,)}, groups (N,) int)}, one seed's runs of each experiment,
    scored on the same tokens. experiments: {experiment: {"sizes": [n_g], "sums": {run: [one list per seed
    of Σ ℓ_t over each group g]}}} (`lab.core.stats.document_sums`), what `seeded_sums` reads back. Every
    run of an experiment must be given at every seed, on the same groups.
    """
    for name, (losses, groups) in results.items():
        entry = experiments.setdefault(name, {"sizes": None, "sums": {}})
        if entry["sums"] and set(losses) != set(entry["sums"]):
            raise ValueError(f"results[{name!r}] has runs {sorted(losses)}, but the earlier seeds have "
                             f"{sorted(entry['sums'])}; give every run at every seed")
        for run, values in losses.items():
            if not (isinstance(values, torch.Tensor) and values.dim() == 1):
                raise ValueError(f"results[{name!r}][{run!r}] must be one seed's per-token losses, a 1-D tensor")
            sums, sizes = document_sums(values, groups)
            if entry["sizes"] not in (None, sizes.tolist()):
                raise ValueError(f"run {run!r} of experiment {name!r} is scored on groups of sizes "
                                 f"{sizes.tolist()[:8]}..., its other runs on {entry['sizes'][:8]}...")
            entry["sizes"] = sizes.tolist()
            entry["sums"].setdefault(run, []).append(sums[0].tolist())


def _check_settings(record: dict, settings: dict) -> None:
    """ValueError unless each of ``settings`` equals the record's value of the same name (after JSON)."""
    for key, value in settings.items():
        if key not in record["settings"]:
            raise ValueError(f"settings[{key!r}]: the record has no such setting; it has {sorted(record['settings'])}")
        try:
            plain = json.loads(json.dumps(value))
        except TypeError as error:
            raise ValueError(f"settings[{key!r}]={value!r} is not a JSON value (numbers, strings, lists)") from error
        if plain != record["settings"][key]:
            raise ValueError(f"settings[{key!r}]={value!r}, but the record was run with {record['settings'][key]!r}; "
                             f"run with the record's settings, or rebuild the record ({record['command']})")


def seeded_sums(record: dict, experiment: str, settings: dict, seed: int, losses: dict[str, torch.Tensor],
                groups, tolerance: float = 0.005) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The per-seed group sums of ``experiment`` in a seeds record, once it is checked against this run.

    record: a record of suite ``params-seeds`` or ``distill-seeds`` (`load_results`), {"seeds", "settings",
    "experiments", "command"}. settings: values this run used, each of which must equal the record's setting
    of the same name. losses: {run: this run's per-token NLL (N,)} at ``seed`` (one of the record's seeds),
    every run of the experiment; groups (N,): its groups. Each run's per-group sums must lie within
    ``tolerance`` nats per token of the record's row for ``seed``, as Σ_g |S_g − S^rec_g| / N: float rounding
    on another CPU moves most runs by less than 1e-4 (measured between torch's AVX-512 and AVX2 paths; the
    runs of chapter 1 that train from scratch at a high rate by up to 0.053, as much as two seeds differ: its
    notebook passes 0.1 and so catches only gross staleness), a
    different experiment (settings, code or data) usually by more.
    Returns ({run: (S, G) float64 sums, one row per seed}, sizes (G,) int64), for
    `lab.core.stats.compare_sums`.
    """
    _check_settings(record, settings)
    check_int("seed", seed, minimum=0)
    check_number("tolerance", tolerance, 0.0, closed=(False, True))
    if seed not in record["seeds"]:
        raise ValueError(f"seed={seed!r} is not one of the record's seeds {record['seeds']}")
    if experiment not in record["experiments"]:
        raise ValueError(f"experiment={experiment!r} is not in the record; it has {sorted(record['experiments'])}")
    entry = record["experiments"][experiment]
    if set(losses) != set(entry["sums"]):
        raise ValueError(f"losses has runs {sorted(losses)}; the record's {experiment!r} has {sorted(entry['sums'])}: "
                         "give this run's losses of every one")
    sizes = np.asarray(entry["sizes"], dtype=np.int64)
    row = record["seeds"].index(seed)
    for run, values in losses.items():
        sums, own_sizes = document_sums(values, groups)
        if len(sums) != 1 or not np.array_equal(own_sizes, sizes):
            raise ValueError(f"losses[{run!r}] must be one seed's losses (N,) on the groups of the record's "
                             f"{experiment!r}, got {len(sums)} row(s) on groups of sizes {own_sizes.tolist()[:8]}...")
        gap = np.abs(sums[0] - np.asarray(entry["sums"][run][row])).sum() / sizes.sum()
        if not gap <= tolerance:
            raise ValueError(f"run {run!r} of {experiment!r} differs from the record's seed {seed} by {gap:.4f} nats "
                             f"per token (tolerance {tolerance}); the record is stale: rebuild it "
                             f"({record['command']})")
    return {run: np.asarray(rows, dtype=np.float64) for run, rows in entry["sums"].items()}, sizes
