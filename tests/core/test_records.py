"""lab.core.records: the fields every record starts with, shared by the bench records and the checkpoints; the
seeds records' per-document sums, written and read back, and refused when they belong to another experiment."""

from __future__ import annotations

import datetime as dt
import json
import platform

import numpy as np
import pytest
import torch

from lab.bench import bench_provenance
from lab.core.records import add_seed, device_kind, device_name, provenance, seed_rows, seeded_sums

FIELDS = {"device", "device_type", "torch", "triton", "python", "date", "command"}


def test_provenance_fields_and_command_as_given():
    command = "python -m lab.models.pretrain --steps 3 --out 'a b'"
    rec = provenance(torch.device("cpu"), command)
    assert set(rec) == FIELDS
    assert rec["command"] == command
    assert rec["device_type"] == "cpu" and rec["device"] == device_name(torch.device("cpu")) != ""
    assert rec["torch"] == torch.__version__ and rec["python"] == platform.python_version()
    date = dt.datetime.fromisoformat(rec["date"])
    assert date.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - date).total_seconds()) < 60
    json.dumps(rec, allow_nan=False)


def test_device_kind_is_a_file_name_slug(monkeypatch):
    assert device_kind(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_name(torch.device("cuda", 0)) == "NVIDIA H100 80GB HBM3"
    assert device_kind(torch.device("cuda", 0)) == "nvidia-h100-80gb-hbm3"


def test_bench_records_name_their_command():
    rec = bench_provenance(torch.device("cpu"), ["quant", "--out", "a b"])
    assert set(rec) == FIELDS and rec["command"] == "python -m lab.bench quant --out 'a b'"


def _seeds_record(rng, groups):
    """A seeds record of one experiment: runs "a" (no seed) and "b" at seeds 0, 1, 2, and the losses of seed 0."""
    experiments, first = {}, None
    for seed in (0, 1, 2):
        losses = {"a": torch.tensor(np.linspace(1.0, 3.0, len(groups))),
                  "b": torch.tensor(rng.normal(2.0, 0.5, len(groups)))}
        first = first or losses
        add_seed(experiments, {"exp": (losses, groups)})
    return {"seeds": [0, 1, 2], "settings": {"steps": 24, "targets": ["q", "k"]}, "experiments": experiments,
            "command": "python -m lab.bench params-seeds"}, first


def test_seeded_sums_reads_back_what_add_seed_kept():
    groups = torch.arange(40) // 8                                      # 5 groups of 8 tokens
    record, first = _seeds_record(np.random.default_rng(0), groups)
    json.loads(json.dumps(record))                                      # a JSON record
    sums, sizes = seeded_sums(record, "exp", {"steps": 24, "targets": ("q", "k")}, 0, first, groups)
    assert sizes.tolist() == [8] * 5 and sums["a"].shape == sums["b"].shape == (3, 5)
    assert np.allclose(sums["b"][0], first["b"].reshape(5, 8).sum(1).numpy())
    assert np.array_equal(sums["a"][0], sums["a"][2]) and not np.array_equal(sums["b"][0], sums["b"][1])
    some, _ = seeded_sums(record, "exp", {"steps": 24}, 0, {"b": first["b"]}, groups)   # a subset is checked
    assert some.keys() == sums.keys()                                                    # every run comes back


@pytest.mark.parametrize("change, match", [
    (dict(settings={"steps": 48}), r"settings\['steps'\]=48, but the record was run with 24"),
    (dict(settings={"lr": 0.1}), r"settings\['lr'\]: the record has no such setting"),
    (dict(settings={"steps": np.int64(24)}), "is not a JSON value"),
    (dict(seed=3), "seed=3 is not one of the record's seeds"),
    (dict(experiment="other"), "experiment='other' is not in the record"),
    (dict(shift=0.01), "differs from the record's seed 0 by 0.0100 nats"),
    (dict(swap=True), r"differs from the record's seed 0 by 0\.\d+ nats"),          # same total, other documents
    (dict(tolerance=float("nan")), "tolerance"),
    (dict(runs=[]), r"losses has runs \[\]"),
    (dict(extra=True), r"losses has runs \['a', 'b', 'c'\]; the record's 'exp' has \['a', 'b'\]"),
    (dict(groups=torch.arange(40) // 10), "on the groups of the record's 'exp'")])
def test_seeded_sums_refuses_another_experiment(change, match):
    groups = torch.arange(40) // 8
    record, first = _seeds_record(np.random.default_rng(0), groups)
    losses = {run: v + change.get("shift", 0.0) for run, v in first.items() if run in change.get("runs", first)}
    if change.get("swap"):
        losses["b"] = losses["b"].flip(0)
    if change.get("extra"):
        losses["c"] = losses["a"]
    with pytest.raises(ValueError, match=match):
        seeded_sums(record, change.get("experiment", "exp"), change.get("settings", {"steps": 24}),
                    change.get("seed", 0), losses, change.get("groups", groups), change.get("tolerance", 0.005))


def test_seeded_sums_refuses_a_bool_seed():
    groups = torch.arange(40) // 8
    record, first = _seeds_record(np.random.default_rng(0), groups)
    with pytest.raises(TypeError, match="seed must be an int, got True"):
        seeded_sums(record, "exp", {}, True, first, groups)


def test_add_seed_refuses_runs_that_would_misalign_the_rows():
    groups, experiments = torch.arange(12) // 4, {}
    add_seed(experiments, {"exp": ({"a": torch.ones(12), "b": torch.ones(12)}, groups)})
    with pytest.raises(ValueError, match="earlier seeds have"):
        add_seed(experiments, {"exp": ({"a": torch.ones(12)}, groups)})
    with pytest.raises(ValueError, match="scored on groups of sizes"):
        other = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])                       # sizes 5, 3, 4
        add_seed(experiments, {"exp": ({"a": torch.ones(12), "b": torch.ones(12)}, other)})
    with pytest.raises(ValueError, match="1-D tensor"):
        add_seed(experiments, {"exp": ({"a": torch.ones(2, 12), "b": torch.ones(12)}, groups)})


def test_seed_rows_keeps_one_row_of_a_run_that_reads_no_seed():
    once = np.tile([3.0, 4.0, 5.0], (3, 1))
    seeded = once + np.array([[0.0], [0.1], [0.2]])
    assert seed_rows(once).shape == (1, 3) and np.array_equal(seed_rows(once)[0], once[0])
    assert np.array_equal(seed_rows(seeded), seeded)
    assert np.array_equal(seed_rows([[1.0, 2.0, 3.0]]), [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"sums must be \(S, G\) per-seed sums"):
        seed_rows([1.0, 2.0])
