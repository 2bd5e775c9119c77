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

from lab.core.checks import check_device, check_int, check_number, check_path, check_tensor
from lab.core.stats import document_sums

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "results"


def device_name(device: torch.device) -> str:
    """`torch.cuda.get_device_name` on CUDA, else the CPU model string from /proc/cpuinfo."""
    device = check_device("device", device)
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
    device = check_device("device", device)
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def provenance(device: torch.device, command: str) -> dict:
    """Device name and type, torch / triton / Python versions, the ISO UTC date and ``command`` as given."""
    device = check_device("device", device)
    if not isinstance(command, str) or not command.strip():
        raise (ValueError if isinstance(command, str) else TypeError)(
            f"command must be the command line as one non-empty str, got {command!r:.200}")
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
    check_path("--out", out, folder=True)


def load_results(pattern: str = "*.json", root: str | Path = RESULTS_DIR) -> list[dict]:
    """The recorded JSON files under ``root`` matching ``pattern``, sorted by file name.

    Each dict gets a ``"_path"`` key naming its file.
    """
    if not isinstance(pattern, str) or not pattern.strip() or Path(pattern).is_absolute():
        raise (ValueError if isinstance(pattern, str) else TypeError)(
            f"pattern must be a non-empty glob relative to root, e.g. 'infer_*.json', got {pattern!r}")
    paths = sorted(glob.glob(str(check_path("root", root, folder=True) / pattern)))
    if not paths:
        raise FileNotFoundError(f"no results match pattern={pattern!r} under {root}; "
                                "produce them with `python -m lab.bench ...`")
    return [{**_record(p), "_path": p} for p in paths]


def _record(path: str) -> dict:
    """The JSON object of the record at ``path``; ValueError naming the file when it is not one."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a record (a JSON object): {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a JSON {type(record).__name__}, not a record (an object)")
    return record


def add_seed(experiments: dict, results: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]) -> None:
    """Append one seed's runs to a seeds record's ``experiments``, in place.

    results: {experiment: ({run: per-token NLL (N,)}, groups (N,) int)}, one seed's runs of each experiment,
    scored on the same tokens. experiments: {experiment: {"sizes": [n_g], "sums": {run: [one list per seed
    of Σ ℓ_t over each group g]}}} (`lab.core.stats.document_sums`), what `seeded_sums` reads back. Every
    run of an experiment must be given at every seed, on the same groups. Every run is checked before
    ``experiments`` changes: a refused call leaves it as it was.
    """
    if not isinstance(experiments, dict) or not isinstance(results, dict):
        raise TypeError(f"experiments and results must be dicts, got {type(experiments).__name__} and "
                        f"{type(results).__name__}")
    staged = {}
    for name, pair in results.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], dict)):
            raise TypeError(f"results[{name!r}] must be a pair ({{run: losses}}, groups), got {pair!r:.200}")
        (losses, groups), entry = pair, experiments.get(name, {"sizes": None, "sums": {}})
        if entry["sums"] and set(losses) != set(entry["sums"]):
            raise ValueError(f"results[{name!r}] has runs {sorted(losses)}, but the earlier seeds have "
                             f"{sorted(entry['sums'])}; give every run at every seed")
        sizes, rows = entry["sizes"], {}
        for run, values in losses.items():
            check_tensor(f"results[{name!r}][{run!r}] (one seed's per-token losses, a 1-D tensor)", values, 1)
            try:
                sums, own = document_sums(values, groups)
            except ValueError as error:
                raise ValueError(f"results[{name!r}][{run!r}]: {error}") from None
            if sizes not in (None, own.tolist()):
                raise ValueError(f"run {run!r} of experiment {name!r} is scored on groups of sizes "
                                 f"{own.tolist()[:8]}..., its other runs on {sizes[:8]}...")
            sizes, rows[run] = own.tolist(), sums[0].tolist()
        staged[name] = sizes, rows
    for name, (sizes, rows) in staged.items():
        entry = experiments.setdefault(name, {"sizes": None, "sums": {}})
        entry["sizes"] = sizes
        for run, row in rows.items():
            entry["sums"].setdefault(run, []).append(row)


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

    record: a record of suite ``params-seeds``, ``distill-seeds``, ``distill-grid``, ``planted``, ``calibration``,
    ``prune-seeds`` or ``quant-seeds`` (`load_results`),
    {"seeds", "settings", "experiments", "command"}. settings: values this run used, each of which must equal the
    record's setting of the same name. losses: {run: this run's per-token NLL (N,)} at ``seed`` (one of the
    record's seeds), for one or more runs of the experiment (a notebook re-runs what fits its time); groups
    (N,): its groups. Each run's per-group sums must lie within ``tolerance`` nats per token of the record's row
    for ``seed``, as Σ_g |S_g − S^rec_g| / N: float rounding on another CPU moves most runs by less than 1e-4
    (measured between torch's AVX-512 and AVX2 paths; the runs of chapter 1 that train from scratch at a high
    rate by up to 0.053, as much as two seeds differ: its notebook passes 0.1 and so catches only gross
    staleness), a different experiment (settings, code or data) usually by more.
    Returns ({run: (S, G) float64 sums, one row per seed}, sizes (G,) int64), for
    `lab.core.stats.compare_sums`.
    """
    if not (isinstance(record, dict) and {"seeds", "settings", "experiments", "command"} <= record.keys()):
        raise TypeError(f"record must be a seeds record (load_results) with 'seeds', 'settings', 'experiments' and "
                        f"'command', got {record!r:.200}")
    for arg, value in (("settings", settings), ("losses", losses)):
        if not isinstance(value, dict):
            raise TypeError(f"{arg} must be a dict, got {value!r:.200}")
    if not isinstance(experiment, str):
        raise TypeError(f"experiment must be a str, got {experiment!r}")
    _check_settings(record, settings)
    check_int("seed", seed, minimum=0)
    check_number("tolerance", tolerance, 0.0, closed=(False, True))
    if seed not in record["seeds"]:
        raise ValueError(f"seed={seed!r} is not one of the record's seeds {record['seeds']}")
    if experiment not in record["experiments"]:
        raise ValueError(f"experiment={experiment!r} is not in the record; it has {sorted(record['experiments'])}")
    entry = record["experiments"][experiment]
    if not losses or not set(losses) <= set(entry["sums"]):
        raise ValueError(f"losses has runs {sorted(losses)}; the record's {experiment!r} has {sorted(entry['sums'])}: "
                         "give this run's losses of one or more of them")
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


def seed_rows(sums) -> np.ndarray:
    """A run's per-seed sums (S, G) as `compare_sums` should see them: (1, G) when every row is the same.

    A run that reads no seed (RTN, magnitude pruning) is stored once per seed, each row a copy of the one run; as
    one row it is compared as the single run it is, as `lab.core.stats.compare` would with its losses (N,).
    """
    rows = np.asarray(sums, dtype=np.float64)
    if rows.ndim != 2 or not len(rows):
        raise ValueError(f"sums must be (S, G) per-seed sums with S >= 1, got shape {rows.shape}")
    return rows[:1] if (rows == rows[0]).all() else rows
