"""The staged GPU run (lab.bench.gpu), rehearsed with ``--dry-run`` on the CPU: one record per stage with its
provenance and wall time, stage selection, the budget, failures that do not stop the run, bad input, and
what the GPU machine lacks (``datasets``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lab.bench.gpu as gpu
import lab.bench.stages as stages
from lab.bench.__main__ import main
from lab.core.records import REPO_ROOT

PROVENANCE = ("device", "device_type", "torch", "triton", "python", "date", "command")


def records_in(folder: Path) -> dict[str, dict]:
    """stage → record, in the order the stages ran (the time left of the budget only decreases)."""
    records = [json.loads(p.read_text()) for p in folder.glob("gpu_*.json")]
    return {r["stage"]: r for r in sorted(records, key=lambda r: -r["seconds_left_before"])}


# Stage cuda_tests runs pytest on one of the marked files here: collecting all of them imports most of lab and
# transformers again in the subprocess (half a minute on 2 cores) and repeats what this lane already shows (every
# CUDA test is skipped on the CPU); `test_cuda_test_files_are_the_marked_ones` checks the full list.
CUDA_TEST_FILE = "tests/kernels/test_int4.py"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    argv = ["gpu", "--dry-run", "--out", str(out), "--no-progress"]
    start = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "cuda_test_files", lambda: [REPO_ROOT / CUDA_TEST_FILE])
        assert main(argv) == out
    return argv, records_in(out), time.monotonic() - start, out


def test_dry_run_writes_one_record_per_stage(dry_run):
    argv, records, seconds, out = dry_run
    assert list(records) == list(gpu.STAGES)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"gpu_{s}_cpu_dry.json" for s in gpu.STAGES)
    for name, rec in records.items():
        assert all(rec[k] for k in PROVENANCE if k != "triton"), name
        assert rec["command"] == "python -m lab.bench " + " ".join(argv)
        assert rec["status"] == "ok", (name, rec.get("error"), rec.get("traceback"))
        assert rec["dry_run"] is True and rec["device_type"] == "cpu"
        assert 0 < rec["wall_s"] < seconds and rec["estimated_s"] == gpu.STAGES[name].estimate_s


def test_dry_run_records_hold_the_measurements(dry_run):
    records = dry_run[1]
    tests = records["cuda_tests"]
    assert tests["passed"] == tests["failed"] == tests["errors"] == 0 and tests["failures"] == []
    assert tests["skipped"] >= 9 and "skipped" in tests["note"]        # every CUDA test of the file, skipped here
    assert tests["files"] == [CUDA_TEST_FILE] and "-m cuda" in tests["pytest_command"]
    kernels = records["kernels"]
    assert {"int4", "int8", "sparse24", "paged_decode", "ceilings"} <= set(kernels)
    assert [row["M"] for row in kernels["int4"]] == list(gpu.KERNEL_SHAPES["dry"]["int4"]["batches"])
    assert all(e["ms"] > 0 for row in kernels["int4"] + kernels["int8"] for e in row["paths"].values())
    assert all(row["ms"] > 0 and row["fraction_of_copy_bandwidth"] > 0 for row in kernels["paged_decode"])
    assert set(records["params"]["offload"]["ms"]) == {"resident", "naive", "prefetch"}
    assert set(records["quant_decode"]["decode"]) == {"fp32", "w8a8", "int4_weight_only"}
    assert records["infer"]["decode"] and records["prune"]["linear"]
    # the parallel stage is lab.parallel.suite.run(cpu, quick=True): 2 gloo ranks, tiny model,
    # 5 steps; every strategy's losses equal one process's and its traffic equals the formula
    full = records["parallel"]["full"]
    assert full["backend"] == "gloo" and full["world_size"] == 2
    assert set(full["strategies"]) == {"ddp", "torch_ddp", "zero1", "zero2", "zero3", "tp", "pp", "cp"}
    for name, entry in full["strategies"].items():
        assert entry["max_abs_loss_diff_vs_single"] <= 1e-4, name
        if name != "torch_ddp":
            assert entry["payload_over_formula"] == pytest.approx(1.0, abs=1e-3), name


def test_stages_selects_and_keeps_the_run_order(tmp_path):
    main(["gpu", "--dry-run", "--out", str(tmp_path), "--stages", "prune,params", "--no-progress"])
    records = records_in(tmp_path)
    assert list(records) == ["params", "prune"]


def test_a_tiny_budget_skips_what_does_not_fit(tmp_path):
    main(["gpu", "--dry-run", "--out", str(tmp_path), "--stages", "params,infer", "--budget-s", "50",
          "--no-progress"])
    records = records_in(tmp_path)
    assert records["params"]["status"] == "ok"                      # estimated 45 s ≤ 50 s
    infer = records["infer"]
    assert infer["status"] == "skipped" and infer["wall_s"] == 0.0 and "decode" not in infer
    assert infer["skipped"].startswith("estimated 120 s >") and "left of the budget" in infer["skipped"]
    assert all(infer[k] for k in PROVENANCE if k != "triton")


def test_a_failing_stage_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def broken(device, quick, progress):
        raise RuntimeError("an illegal memory access")

    monkeypatch.setitem(gpu.STAGES, "params", gpu.Stage("params", 45, broken))
    with pytest.raises(SystemExit) as exit_info:
        main(["gpu", "--dry-run", "--out", str(tmp_path), "--stages", "params,prune", "--no-progress"])
    assert exit_info.value.code == 1
    records = records_in(tmp_path)
    assert records["params"]["status"] == "failed"
    assert records["params"]["error"] == "RuntimeError: an illegal memory access"
    assert "in broken" in records["params"]["traceback"]
    assert records["prune"]["status"] == "ok"


def test_a_stage_still_running_when_the_budget_ends_is_stopped(tmp_path, monkeypatch):
    def slow(device, quick, progress):
        try:
            time.sleep(30)
        except Exception:  # noqa: BLE001 - the budget must not be swallowed by a stage's own handler
            pass
        return {"never": True}

    monkeypatch.setitem(gpu.STAGES, "params", gpu.Stage("params", 0.1, slow))
    start = time.monotonic()
    with pytest.raises(SystemExit):
        main(["gpu", "--dry-run", "--out", str(tmp_path), "--stages", "params,prune", "--budget-s", "1",
              "--no-progress"])
    assert time.monotonic() - start < 20
    records = records_in(tmp_path)
    assert records["params"]["status"] == "timeout" and "budget ran out" in records["params"]["error"]
    assert records["prune"]["status"] == "skipped"


@pytest.mark.parametrize("args, message", [
    (["--stages", "kernels,warp"], "--stages='kernels,warp' names unknown stage(s) ['warp']; allowed: a "
                                   "comma-separated subset of cuda_tests, kernels"),
    (["--budget-s", "0"], "--budget-s=0.0 is not allowed; give a number of seconds > 0"),
    (["--budget-s", "-5"], "--budget-s=-5.0 is not allowed"),
])
def test_bad_input_names_the_argument_its_value_and_what_is_allowed(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["gpu", "--dry-run", "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_is_a_file_is_an_error(tmp_path, capsys):
    target = tmp_path / "records.json"
    target.write_text("{}")
    with pytest.raises(SystemExit):
        main(["gpu", "--dry-run", "--out", str(target)])
    assert f"--out='{target}' is an existing file; give a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is an existing file"):
        gpu.run_gpu(["params"], 10, target, True, ["gpu"])
    with pytest.raises(ValueError, match=r"--budget-s=0 is not allowed"):
        gpu.run_gpu(["params"], 0, tmp_path, True, ["gpu"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["gpu", "--out", str(tmp_path)])
        assert "needs a CUDA device" in capsys.readouterr().err


def test_junit_summary_counts_and_failures(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a" name="test_bad[bf16]"><failure message="assert 0.5 &lt; 1e-2">trace</failure></testcase>
<testcase classname="tests.test_b" name="test_setup"><error message="fixture failed">trace</error></testcase>
<testcase classname="tests.test_b" name="test_gpu"><skipped type="pytest.skip" message="needs a CUDA GPU"/></testcase>
</testsuite></testsuites>""")
    assert stages.junit_summary(xml) == {
        "passed": 1, "failed": 1, "errors": 1, "skipped": 1,
        "failures": [{"id": "tests.test_a::test_bad[bf16]", "kind": "failure", "message": "assert 0.5 < 1e-2"},
                     {"id": "tests.test_b::test_setup", "kind": "error", "message": "fixture failed"}]}


def test_cuda_test_files_are_the_marked_ones():
    files = {str(p.relative_to(stages.REPO_ROOT)) for p in stages.cuda_test_files()}
    assert {"tests/kernels/test_int4.py", "tests/kernels/test_paged_attention.py",
            "tests/params/test_offload_sharing.py"} <= files
    assert "tests/bench/test_gpu.py" not in files and "tests/test_notebooks.py" not in files


def test_gpu_stages_do_not_need_datasets(tmp_path, monkeypatch):
    """The GPU machine has no `datasets`: tokenizing a split (no token cache there) must not import it,
    and gives the tokens the cached (datasets-era) file holds."""
    from lab import data
    from lab.models import load_tokenizer

    tokenizer = load_tokenizer()
    cached = data.tokenize_split("test", tokenizer)                      # from .data/tokens/ (or made now)
    (tmp_path / data.CORPUS_PACKAGE).symlink_to(data.corpus_dir())          # the corpus, but no token cache
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)                      # `import datasets` now fails
    with pytest.raises(ImportError):
        data.load_corpus("test")
    assert torch.equal(data.tokenize_split("test", tokenizer), cached)
    code = ("import sys, lab.bench.gpu as g, lab.bench.__main__, lab.params.suite, lab.prune.suite, "
            "lab.quant.suite, lab.infer.suite, lab.infer.suite, lab.parallel.experiments; "
            "assert 'datasets' not in sys.modules, 'datasets was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_measured_paths_get_their_static_prediction_beside_them():
    """On an H200 (or H100) each timed bf16 path of the kernels stage with a row in the static model's record
    gets that row's prediction and measured / predicted; on another device, or with no matching row, nothing."""
    record = json.loads((REPO_ROOT / "results" / "kernels_sm90.json").read_text())

    def row_of(kernel: str, **shape) -> dict:
        return next(r for r in record["rows"] if r["kernel"] == kernel and shape.items() <= r["shape"].items())

    def result() -> dict:
        int4 = [{"M": 1, "N": 8192, "K": 8192, "group_size": 128,
                 "paths": {"int4_lab_v2": {"ms": 0.01}, "dense_triton": {"ms": 0.03}, "bf16_matmul": {"ms": 0.03},
                           "int4_lab": {"ms": None, "wrong": "x"}}},
                {"M": 2, "N": 8192, "K": 8192, "group_size": 128, "paths": {"int4_lab_v2": {"ms": 0.01}}}]
        sparse = [{"dtype": "bfloat16", "batch": 16, "out_features": 8192, "in_features": 8192,
                   "ms": {"dense": 0.03, "triton_24_v2": 0.04}}]
        paged = [{"version": "v2", "dtype": "bfloat16", "B": 1, "H": 32, "H_kv": 8, "D": 128, "block_size": 16,
                  "context": 2048, "ms": 0.005}]
        return {"int4": int4, "int8": {"error": "RuntimeError: a part that raised"}, "sparse24": sparse,
                "paged_decode": paged}

    measured = result()
    assert stages.beside_predictions(measured, record, "NVIDIA H200") == 4
    v2, paths = row_of("int4_gemv_v2", M=1), measured["int4"][0]["paths"]
    assert paths["int4_lab_v2"]["predicted_us"] == v2["predicted_us_h200"]
    assert paths["int4_lab_v2"]["measured_over_predicted"] == pytest.approx(10.0 / v2["predicted_us_h200"])
    assert paths["dense_triton"]["predicted_us"] == row_of("dense_matmul", M=1)["predicted_us_h200"]
    assert "predicted_us" not in paths["bf16_matmul"] | paths["int4_lab"]
    assert "predicted_us" not in measured["int4"][1]["paths"]["int4_lab_v2"]            # M = 2: no row
    assert measured["sparse24"][0]["predicted"] == {"triton_24_v2": {
        "predicted_us": row_of("sparse24_matmul_v2", M=16)["predicted_us_h200"],
        "measured_over_predicted": pytest.approx(40.0 / row_of("sparse24_matmul_v2", M=16)["predicted_us_h200"])}}
    assert measured["paged_decode"][0]["predicted_us"] == row_of("paged_attention_v2", B=1)["predicted_us_h200"]
    h100 = result()
    assert stages.beside_predictions(h100, record, "NVIDIA H100 80GB HBM3") == 4
    assert h100["int4"][0]["paths"]["int4_lab_v2"]["predicted_us"] == v2["predicted_us_h100"]
    assert stages.beside_predictions(result(), record, "NVIDIA A100-SXM4-80GB") == 0
