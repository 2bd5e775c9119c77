"""lab.core.records: the fields every record starts with, shared by the bench records and the checkpoints."""

from __future__ import annotations

import datetime as dt
import json
import platform

import torch

from lab.bench import bench_provenance
from lab.core.records import device_kind, device_name, provenance

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
