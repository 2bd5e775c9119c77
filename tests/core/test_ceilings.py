"""lab.core.ceilings: the one source of hardware ceilings, measured from a record or labelled datasheet figures.

References: NVIDIA's datasheet figures (H100 SXM5: 3.35 TB/s HBM3, 989 TFLOP/s dense bf16, 1,979 TOPS dense
int8; H200 SXM: 4.8 TB/s, the same compute), and the records `lab.bench` writes (``"ceilings"`` from
`lab.core.ceilings.measure_ceilings`, stamped by `provenance`).
"""

from __future__ import annotations

import json

import pytest
import torch

from lab.bench import bench_provenance
from lab.core.atomic import atomic_write_json
from lab.core.ceilings import DATASHEETS, datasheet_ceilings, datasheet_key, device_ceilings, measured_ceilings
from lab.core.records import RESULTS_DIR

H100 = "NVIDIA H100 80GB HBM3"      # torch.cuda.get_device_name of an H100 SXM5


def _record(device: str, bandwidth: float = 2.9e12, peak: float = 7.1e14, **extra) -> dict:
    return {"device": device, "device_type": "cuda", "torch": "x", "triton": "y", "python": "3",
            "date": "2026-12-02T10:00:00+00:00", "command": "python -m lab.bench gpu --out OUT",
            "ceilings": {"bandwidth": bandwidth, "peak_flops": peak, "copy_bytes": 2 * 2**30, "copy_ms": 0.7,
                         "matmul_n": 8192, "matmul_ms": 1.5, "matmul_dtype": "bfloat16"}, **extra}


def test_datasheet_figures_and_labels():
    h100, h200 = datasheet_ceilings("h100-sxm5"), datasheet_ceilings("h200-sxm")
    assert (h100.bandwidth, h100.peak_flops, h100.int8_ops) == (3.35e12, 989e12, 1979e12)
    assert (h200.bandwidth, h200.peak_flops, h200.int8_ops) == (4.8e12, 989e12, 1979e12)
    assert h100.source == "datasheet (NVIDIA H100 SXM5, https://www.nvidia.com/en-us/data-center/h100/)"
    assert h200.source.startswith("datasheet (NVIDIA H200 SXM, https://www.nvidia.com/")
    for c in (h100, h200):
        assert not c.measured and "measured" not in c.source + c.label and c.int8_source == c.source
    assert h100.ridge == pytest.approx(295.2, abs=0.1)
    assert h100.label == "3.35 TB/s, 989 TFLOP/s (datasheet: NVIDIA H100 SXM5)"
    with pytest.raises(ValueError, match="key='a100' has no datasheet entry"):
        datasheet_ceilings("a100")


@pytest.mark.parametrize("name, key", [(H100, "h100-sxm5"), ("NVIDIA H100 SXM5 80GB", "h100-sxm5"),
                                       ("NVIDIA H200", "h200-sxm"), ("h200-sxm", "h200-sxm"),
                                       ("NVIDIA H100 PCIe", None), ("NVIDIA H100 NVL", None),
                                       ("NVIDIA H200 NVL", None), ("NVIDIA A100-SXM4-80GB", None),
                                       ("AMD EPYC", None)])
def test_datasheet_key_maps_recorded_names(name, key):
    assert datasheet_key(name) == key


def test_no_measured_label_without_a_record(tmp_path):
    """Records that are not measurements of an H100 never make its ceilings "measured"."""
    atomic_write_json(tmp_path / "infer_cpu.json", {**_record("AMD EPYC", 2e10, 3e11), "device_type": "cpu"})
    atomic_write_json(tmp_path / "infer_nvidia-h100-80gb-hbm3_quick.json", _record(H100, quick=True))
    atomic_write_json(tmp_path / "gpu_kernels_nvidia-h100-80gb-hbm3_dry.json", _record(H100, dry_run=True))
    atomic_write_json(tmp_path / "gpu_kernels_nvidia-h200.json", _record("NVIDIA H200"))       # another GPU
    atomic_write_json(tmp_path / "gpu_infer_nvidia-h100-80gb-hbm3.json",                       # a failed stage
                      {k: v for k, v in _record(H100).items() if k != "ceilings"} | {"status": "failed"})
    atomic_write_json(tmp_path / "kernels_sm90.json", {"device": "sm_90", "device_type": "cuda"})
    atomic_write_json(tmp_path / "quant_nvidia-h100-80gb-hbm3.json", _record(H100))            # not a ceiling record
    atomic_write_json(tmp_path / "gpu_kernels_nvidia-h100-sxm.json", _record(H100, bandwidth=True))  # JSON true
    for device in ("h100-sxm5", H100):
        c = device_ceilings(device, root=tmp_path)
        assert c == datasheet_ceilings("h100-sxm5")
        assert not c.measured and "measured" not in c.source and "measured" not in c.label
    assert measured_ceilings("h100-sxm5", root=tmp_path) is None
    assert device_ceilings(root=tmp_path / "missing") == datasheet_ceilings()
    with pytest.raises(ValueError, match="no ceilings for device 'NVIDIA H100 PCIe'"):
        device_ceilings("NVIDIA H100 PCIe", root=tmp_path)


def test_the_repository_has_no_gpu_ceiling_record_so_the_defaults_are_the_datasheet():
    """If this fails, a GPU record with ceilings was added to results/: the book's ceilings are now measured."""
    gpu = [p for pattern in ("infer_*.json", "gpu_kernels_*.json", "gpu_infer_*.json")
           for p in RESULTS_DIR.glob(pattern) if json.loads(p.read_text()).get("device_type") == "cuda"]
    if gpu:
        pytest.skip(f"GPU ceiling records exist: {[p.name for p in gpu]}")
    assert device_ceilings() == datasheet_ceilings("h100-sxm5")
    assert device_ceilings("h200-sxm") == datasheet_ceilings("h200-sxm")


def test_a_record_makes_the_ceilings_measured(tmp_path):
    atomic_write_json(tmp_path / "infer_nvidia-h100-80gb-hbm3.json",
                      _record(H100, 2.8e12, 6.9e14, date="2026-12-01T09:00:00+00:00"))
    atomic_write_json(tmp_path / "gpu_kernels_nvidia-h100-80gb-hbm3.json", _record(H100, 2.9e12, 7.1e14))
    for device in ("h100-sxm5", H100):
        c = device_ceilings(device, root=tmp_path)
        assert c.measured and (c.bandwidth, c.peak_flops) == (2.9e12, 7.1e14)      # the newest record
        assert c.device == H100 and c.source.startswith("measured (")
        assert "gpu_kernels_nvidia-h100-80gb-hbm3.json" in c.source and "python -m lab.bench gpu" in c.source
        assert "1 GiB" in c.source and "8192³ bfloat16 matmul" in c.source and "2026-12-02" in c.source
        assert c.int8_ops == 1979e12 and c.int8_source.startswith("datasheet (NVIDIA H100 SXM5")
        assert c.label == f"2.9 TB/s, 710 TFLOP/s (measured on {H100})"
    assert not device_ceilings("h200-sxm", root=tmp_path).measured                  # an H100 record is not an H200's


def test_a_device_without_a_datasheet_uses_its_own_record(tmp_path):
    atomic_write_json(tmp_path / "gpu_infer_nvidia-h100-pcie.json", _record("NVIDIA H100 PCIe", 1.7e12, 5e14))
    c = device_ceilings("NVIDIA H100 PCIe", root=tmp_path)
    assert c.measured and c.bandwidth == 1.7e12 and c.int8_ops is None and c.int8_source is None
    assert not device_ceilings("h100-sxm5", root=tmp_path).measured                  # a PCIe part is not an SXM5


def test_reads_what_measure_ceilings_records(tmp_path):
    """The record layout lab.bench writes (provenance + measure_ceilings) is the one read back."""
    from lab.core.ceilings import measure_ceilings

    cpu = torch.device("cpu")
    measured = measure_ceilings(cpu, torch.float32, quick=True)
    record = {**bench_provenance(cpu, ["infer"]), "suite": "infer", "quick": False, "ceilings": measured}
    atomic_write_json(tmp_path / "infer_cpu.json", record)
    c = device_ceilings(cpu, root=tmp_path)
    assert c.measured and (c.bandwidth, c.peak_flops) == (measured["bandwidth"], measured["peak_flops"])
    assert c.device == record["device"] and "python -m lab.bench infer" in c.source
    atomic_write_json(tmp_path / "infer_cpu.json", {**record, "quick": True})       # rewritten: read again
    with pytest.raises(ValueError, match="no ceilings"):
        device_ceilings(cpu, root=tmp_path)


def test_every_datasheet_entry_cites_nvidia():
    for key, sheet in DATASHEETS.items():
        assert sheet.url.startswith("https://www.nvidia.com/") and sheet.bandwidth > 1e12
        assert datasheet_key(key) == key


def test_no_typed_ceiling_outside_the_table():
    """The roofline, benchmark and kernel modules take their ceilings from lab.core.ceilings, never a literal."""
    import re

    from lab.core.records import REPO_ROOT

    literal = re.compile(r"\b(?:3\.0|3\.35|4\.8)e12\b|\b(?:800|989|990|1979)e12\b|\b3\.0 ?TB/s|\b800 ?TFLOP/s")
    typed = []
    for folder in ("bench", "infer", "kernels", "quant", "prune"):
        for path in sorted((REPO_ROOT / "lab" / folder).rglob("*.py")):
            if path.name == "ceilings.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if literal.search(line):
                    typed.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert typed == []


def test_ceilings_use_the_one_timer_and_a_large_copy_on_a_gpu(monkeypatch):
    import lab.core.ceilings as ceilings_module
    from lab.core.timing import time_ms

    assert ceilings_module.ceiling_sizes(torch.device("cuda"), quick=True)[0] >= 2**30   # ≫ L2, ≥ 1 GiB read
    assert ceilings_module.ceiling_sizes(torch.device("cuda"), quick=False) == (2**30, 8192)
    timed = []

    def recording_timer(fn, device, repeats=10):
        timed.append(device)
        return time_ms(fn, device, repeats)

    monkeypatch.setattr(ceilings_module, "time_ms", recording_timer)
    ceilings = ceilings_module.measure_ceilings(torch.device("cpu"), torch.float32, quick=True)
    assert timed == [torch.device("cpu")] * 2                                   # the copy and the matmul
    assert ceilings["copy_bytes"] == 2 * 2**22                                 # read + write
    assert 1e8 < ceilings["bandwidth"] < 1e13 and 1e7 < ceilings["peak_flops"] < 1e14   # physically plausible
