"""The command line of lab.bench: provenance, record layout, atomic writes, loading,
and the params suite (lab.params.suite) including where its CUDA memory peak is read."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
import torch

from lab.bench import bench_provenance
from lab.bench.__main__ import SUITES, build_parser, main
from lab.core.atomic import atomic_write_json
from lab.core.records import REPO_ROOT, device_kind, load_results
from lab.params.counting import block_param_count
from lab.params.offload import MODES


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    argv = ["params", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]
    path = main(argv)
    return path, argv, json.loads(path.read_text())


def test_record_provenance(record):
    path, argv, rec = record
    assert path.name == "params_cpu_quick.json"
    assert rec["command"] == "python -m lab.bench " + " ".join(argv)
    assert rec["torch"] == torch.__version__
    assert rec["device_type"] == "cpu" and rec["device"]
    import triton
    assert rec["triton"] == triton.__version__
    assert rec["python"].count(".") == 2
    date = dt.datetime.fromisoformat(rec["date"])
    assert date.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - date).total_seconds()) < 600
    assert rec["suite"] == "params" and rec["quick"] is True


def test_record_offload_numbers(record):
    off = record[2]["offload"]
    assert set(off["ms"]) == set(MODES) == set(off["max_abs_diff_vs_resident"]) == set(off["trace"])
    assert all(v > 0 for v in off["ms"].values())
    assert 0 < off["speedup_prefetch_over_naive"] < float("inf")
    naive = off["trace"]["naive"]  # the recorded timestamps follow the serial schedule: copy i, then compute i
    for copy, compute in zip(naive[::2], naive[1::2]):
        assert (copy["kind"], compute["kind"], copy["layer"]) == ("copy", "compute", compute["layer"])
        assert copy["end"] <= compute["start"]
    assert all(v == 0.0 for v in off["max_abs_diff_vs_resident"].values())  # exact on the CPU
    from lab.models.gpt import GPTConfig
    cfg = GPTConfig(**off["config"])
    assert off["layer_bytes"] == block_param_count(cfg) * 4  # float32
    assert off["bytes_per_forward"] == cfg.n_layer * off["layer_bytes"]
    assert off["h2d_gb_per_s"] > 0 and all(v > 0 for v in off["model_ms"].values())
    L = cfg.n_layer
    assert sum(e["kind"] == "copy" for e in off["trace"]["prefetch"]) == L
    assert sum(e["kind"] == "compute" for e in off["trace"]["naive"]) == L
    assert not any(e["kind"] == "copy" for e in off["trace"]["resident"])


def test_record_memory_model_vs_measured(record):
    mem = record[2]["memory"]
    train = mem["training_step"]
    assert train["model_bytes"] > 0 and train["measured_bytes"] > 0
    assert train["ratio"] == pytest.approx(train["measured_bytes"] / train["model_bytes"])
    assert 0.5 < train["ratio"] < 2.0  # the memory model is in the right range on the CPU too
    assert "CUDA" in mem["decode_step"]["skipped"]


def test_load_results(record):
    path, _, rec = record
    loaded = load_results("params_*.json", root=path.parent)
    assert len(loaded) == 1 and loaded[0]["_path"] == str(path)
    assert loaded[0]["offload"]["ms"] == rec["offload"]["ms"]
    with pytest.raises(FileNotFoundError, match="no results match pattern='nothing_\\*.json'"):
        load_results("nothing_*.json", root=path.parent)


def test_atomic_write_json_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "r.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # not serialisable: old file kept, no temporary
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_cli_errors_and_device_kind(capsys):
    with pytest.raises(SystemExit):
        main(["pruning"])
    assert "invalid choice: 'pruning'" in capsys.readouterr().err
    assert device_kind(torch.device("cpu")) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["params", "--device", "cuda"])
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_help_lists_every_suite_and_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: python -m lab.bench")
    assert set(build_parser()[1]) == {*SUITES, "gpu", "static"}
    assert all(name in out for name in ("params", "infer", "gpu", "static"))


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "lab.bench", "params", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--device" in proc.stdout
    assert "RuntimeWarning" not in proc.stderr  # lab.bench does not import its __main__ twice


def test_out_that_is_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        main(["params", "--quick", "--out", str(tmp_path / "f")])
    assert f"--out='{tmp_path / 'f'}' is an existing file" in capsys.readouterr().err


def test_provenance_names_the_command():
    rec = bench_provenance(torch.device("cpu"), ["gpu", "--out", "a b"])
    assert rec["command"] == "python -m lab.bench gpu --out 'a b'" and rec["device_type"] == "cpu"


# ---------------------------------------------------------------- the CUDA peak of the offload benchmark

class FakeCudaMemory:
    """Allocator counters in place of torch.cuda's: ``allocated`` now, ``peak`` since the last reset."""

    def __init__(self, allocated: int, stale_peak: int) -> None:
        self.allocated, self.peak, self.log = allocated, stale_peak, []

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def install(self, monkeypatch) -> None:
        def log(name, value=None):
            self.log.append(name)
            return value

        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log("synchronize"))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda device=None: (log("reset"), setattr(self, "peak", self.allocated)))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: log("allocated", self.allocated))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: log("peak", self.peak))


def test_peak_extra_mib_counts_what_the_function_allocates_above_the_start(monkeypatch):
    from lab.params.suite import peak_extra_mib

    memory = FakeCudaMemory(allocated=100 * 2**20, stale_peak=900 * 2**20)   # a larger peak from earlier work
    memory.install(monkeypatch)

    def forward():
        memory.log.append("forward")
        memory.alloc(300 * 2**20)          # activations ...
        memory.alloc(-300 * 2**20)         # ... freed before it returns
        memory.alloc(2 * 2**20)            # the logits it returns
        return "logits"

    out, peak = peak_extra_mib(forward, torch.device("cuda"))
    assert (out, peak) == ("logits", 300.0)
    assert memory.log == ["synchronize", "reset", "allocated", "forward", "synchronize", "peak"]
    assert peak_extra_mib(lambda: 7, torch.device("cpu")) == (7, None)


def test_offload_peak_is_read_before_the_logits_check(monkeypatch):
    """The check against the resident logits allocates fp32 copies (≈ 1.6 GB on the GPU shape): it must
    run after each mode's peak was read, or every mode reports the check's peak."""
    import lab.params.suite as params_bench
    from lab.params.offload import MODES

    events, real_diff = [], params_bench.max_abs_diff

    def fake_peak(fn, device):
        events.append("measure")
        out = fn()
        events.append("peak read")
        return out, 42.0

    def logged_diff(a, b):
        events.append("check")
        return real_diff(a, b)

    monkeypatch.setattr(params_bench, "peak_extra_mib", fake_peak)
    monkeypatch.setattr(params_bench, "max_abs_diff", logged_diff)
    result = params_bench.bench_offload(torch.device("cpu"), quick=True, progress=False)
    assert events == ["measure", "peak read", "check"] * len(MODES)
    assert result["peak_extra_mib"] == {mode: 42.0 for mode in MODES}
    assert all(v == 0.0 for v in result["max_abs_diff_vs_resident"].values())


def test_prune_suite_quick_cpu_record(tmp_path):
    from lab.formats.sparse24 import compressed_nbytes

    argv = ["prune", "--quick", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]
    path = main(argv)
    rec = json.loads(path.read_text())
    assert path.name == "prune_cpu_quick.json"
    assert rec["suite"] == "prune" and rec["quick"] is True and rec["device_type"] == "cpu"
    assert rec["command"] == "python -m lab.bench " + " ".join(argv) and rec["torch"] == torch.__version__
    assert rec["label"].startswith("CPU:") and "CUDA" in rec["model"]["skipped"]
    assert rec["linear"]
    for row in rec["linear"]:
        paths = {"dense", "decompress_matmul"}
        assert set(row["ms"]) == set(row["gb_per_s"]) == set(row["max_rel_err"]) == paths
        assert set(row["speedup_over_dense"]) == {"decompress_matmul"}
        assert all(v > 0 for v in row["ms"].values()) and all(v > 0 for v in row["gb_per_s"].values())
        assert all(v < 1e-4 for v in row["max_rel_err"].values())  # fp32 vs the float64 reference
        assert row["speedup_over_dense"]["decompress_matmul"] == pytest.approx(
            row["ms"]["dense"] / row["ms"]["decompress_matmul"])
        nbytes = compressed_nbytes(row["out_features"], row["in_features"], getattr(torch, row["dtype"]))
        assert row["weight_bytes"] == {"dense": nbytes["dense"], "decompress_matmul": nbytes["compressed"]}
        assert row["ideal_memory_bound_speedup"] == pytest.approx(nbytes["dense"] / nbytes["compressed"])
