"""lab.bench.static: the command line that compiles the callers' shapes for sm_90, models them, and writes
one record; and the committed record, which must not go stale."""

from __future__ import annotations

import json
import math

import pytest
import triton

import lab.kernels.aot.compile as aot_compile
from lab.bench import static
from lab.bench.__main__ import main
from lab.kernels.aot import model as static_model
from lab.kernels.aot import reading
from lab.kernels.aot.compile import failures
from lab.kernels.aot.sass import INSTRUCTION_CLASSES
from lab.kernels.aot.shapes import MatmulShapes, PagedShapes
from lab.kernels.aot.sm90 import DEVICE_LABEL, occupancy
from lab.quant.linear import decoder_linear_shapes
from tests.kernels.aot.test_compile import current_configurations
from tests.kernels.test_paged_attention import CUDA_LENGTHS
from tests.quant.test_linear import TOKENS, tiny_gpt

FIELDS = ("version", "kernel", "shape", "bytes", "warp_instructions", "issue_bound_us", "memory_bound_us_h200",
          "programs")


@pytest.fixture(scope="module")
def configs():
    return current_configurations()


@pytest.fixture
def one_configuration(configs, monkeypatch):
    """The run reduced to one int8 configuration and the one static-model row that compiles to it."""
    small = next(c for c in configs if c.launch.kernel == "int8_matmul" and "M=1 N=8192 K=8192 out=bf16" in c.sources[0])
    monkeypatch.setattr(static, "configurations", lambda launches: [small])
    row = next(r for r in static_model.rows() if r.kernel == "int8_matmul" and r.shape["M"] == 1)
    monkeypatch.setattr(static_model, "rows", lambda: [row])
    return small


def test_every_caller_declares_its_shapes():
    found = static.shapes()
    assert all(isinstance(s, (MatmulShapes, PagedShapes)) for s in found)
    labels = {s.label for s in found}
    assert {"quant bench matmul", "gpu run kernels stage", "prune bench 2:4 linear", "infer bench (book model)",
            "infer bench serving (book model)", "test cuda paged decode"} <= labels


def test_bad_jobs_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(static, "shapes", lambda: pytest.fail("must not enumerate"))
    with pytest.raises(SystemExit):
        main(["static", "--jobs", "0"])
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err


def test_the_command_writes_one_record_with_provenance(one_configuration, tmp_path, capsys):
    path = main(["static", "--out", str(tmp_path), "--jobs", "1", "--no-progress"])
    record = json.loads(path.read_text())
    assert path.name == "kernels_sm90.json"
    assert record["device"] == DEVICE_LABEL and record["triton"] == triton.__version__
    assert {"torch", "python", "date", "host"} <= set(record)
    assert record["command"] == f"python -m lab.bench static --out {tmp_path} --jobs 1 --no-progress"
    assert record["ok"] and record["n_configurations"] == 1
    assert record["configurations"][0]["name"] == one_configuration.name
    assert [r["kernel"] for r in record["rows"]] == ["int8_matmul"] and record["rows"][0]["bytes"] > 0
    out = capsys.readouterr().out
    assert one_configuration.name in out and "int8_matmul" in out                 # both tables


def test_the_command_fails_naming_the_configuration(one_configuration, tmp_path, monkeypatch, capsys):
    small = one_configuration
    spilled = {"name": small.name, "kernel": "int8_matmul", **small.spec, "registers": 255, "spill_stores": 8,
               "spill_loads": 8, "stack_frame": 8, "shared_memory": {"dynamic": 0, "static": 0, "total": 0},
               "occupancy": occupancy(255, 0, 4), "sass_instructions": 300, "sources": small.sources,
               "main_loop": {"instructions": 100, "classes": dict.fromkeys(INSTRUCTION_CLASSES, 0), "mnemonics": {}}}
    spilled["failures"] = failures(spilled)
    monkeypatch.setattr(aot_compile, "compile_all",
                        lambda configs, jobs, progress, reuse: [{**spilled, "reused": False}])
    with pytest.raises(SystemExit) as exit_info:
        main(["static", "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"FAILED {small.name}" in err and "register spills: 8 bytes stored" in err
    record = json.loads((tmp_path / "kernels_sm90.json").read_text())
    assert record["ok"] is False and len(record["rows"]) == 1          # the model still runs on what compiled


@pytest.fixture(scope="module")
def committed(repo_root) -> dict:
    return json.loads((repo_root / "results" / static.OUT_NAME).read_text())


def test_the_committed_record_covers_every_configuration_the_wrappers_launch_now(committed, configs):
    """results/kernels_sm90.json (CI's check-kernels recompiles what changed, into _build/) lists the same
    compilations as the wrappers launch today for the shapes the callers declare, each compiled with no failure."""
    def key(kernel: str, spec: dict) -> tuple:
        return kernel, json.dumps([spec[k] for k in ("constexprs", "signature", "num_warps")], sort_keys=True)

    recorded = {key(r["kernel"], r) for r in committed["configurations"]}
    assert recorded == {key(c.launch.kernel, c.spec) for c in configs}, "refresh the record: make kernels-static"
    assert committed["ok"] and all(r["failures"] == [] for r in committed["configurations"])


def test_the_committed_record_covers_the_rows_with_provenance(committed):
    for field in ("device", "torch", "triton", "python", "date", "command"):
        assert committed[field], field
    assert committed["triton"] == "3.6.0" and committed["command"].startswith("python -m lab.bench static")
    recorded = [(r["version"], r["kernel"], r["shape"]) for r in committed["rows"]]
    assert recorded == [(r.version, r.kernel, r.shape) for r in static_model.rows()], "refresh: make kernels-static"
    bandwidth = committed["ceilings"]["h200"]["bandwidth_bytes_per_s"]
    for r in committed["rows"]:
        assert all(r[f] is not None for f in FIELDS)
        assert r["memory_bound_us_h200"] == pytest.approx(r["bytes"] / bandwidth * 1e6)
        assert r["issue_bound_us"] >= r["warp_instructions"] / static_model.ISSUE_RATE * 1e6 * (1 - 1e-12)
        assert r["predicted_us_h200"] >= max(r["issue_bound_us"], r["memory_bound_us_h200"])


def test_the_v2_kernels_meet_their_static_targets_in_the_committed_record(committed):
    """Under triton 3.6.0 (the GPU machine's; CI's check-kernels recompiles every changed configuration), on
    8192 × 8192, g = 128: int4 v2's issue term at most 0.8 of its memory-bound time at M = 1 (the H200's
    4.8 TB/s) and its predicted time at M = 16 within 1.3× that at M = 1, its main loop on the tensor cores with
    no int → float conversion; the paged v2 decode at B = 1 (2,048 tokens, 32 / 8 heads, head dim 128) at least
    132 programs, its blocks loaded asynchronously, within 1.3× of its memory-bound time; every global load in
    the main loop of the 2:4 v2 kernel a vector of at least 8 bytes per thread."""
    int4, paged = reading.int4_rows(committed), reading.rows_by(committed, "paged", "B")
    m1, m16 = int4["v2", 1], int4["v2", 16]
    assert m1["issue_us"] <= 0.8 * m1["memory_bound_us_h200"] < int4["v1", 1]["issue_us"]
    assert m16["predicted_us_h200"] <= 1.3 * m1["predicted_us_h200"]
    mnemonics = m1["kernels"][0]["main_loop_mnemonics"]
    assert {"HGMMA", "HMMA"} & set(mnemonics) and "I2F" not in mnemonics
    assert paged["v2", 1]["programs"] >= 132 and "LDGSTS" in paged["v2", 1]["kernels"][0]["main_loop_mnemonics"]
    assert paged["v2", 1]["predicted_us_h200"] <= 1.3 * paged["v2", 1]["memory_bound_us_h200"]
    for sparse in (r for r in committed["rows"] if r["kernel"] == "sparse24_matmul_v2"):
        widths = sparse["kernels"][0]["global_load_bytes"]
        assert widths and min(widths) >= 8, (sparse["shape"], widths)


def test_headline_and_table_rows_read_the_record(committed):
    h = reading.headline(committed)
    int4 = reading.int4_rows(committed)
    assert h["static_v2_issue_over_memory_m1"] == int4["v2", 1]["issue_us"] / int4["v2", 1]["memory_bound_us_h200"]
    assert h["static_v1_warp_instr_per_kb"] == int4["v1", 1]["warp_instructions"] / (8192 * 8192 / 2 / 1024)
    dense = next(r for r in committed["rows"] if r["kernel"] == "dense_matmul" and r["shape"]["M"] == 1)
    assert h["static_dense_over_v2_m1"] == dense["predicted_us_h200"] / int4["v2", 1]["predicted_us_h200"]
    assert h["static_paged_programs_b1"] == 8 and h["static_paged_v2_programs_b1"] >= 132
    rows = reading.table_rows(committed)
    assert len(rows) == len(committed["rows"])
    assert rows[0]["kernel"] == "int4_matmul (v1)" and rows[0]["shape"] == "M=1 g=128"      # N = K = 8192 implied
    assert rows[0]["predicted"] == int4["v1", 1]["predicted_us_h200"] and rows[0]["bound by"] == "conversion"
    assert rows[0]["slowest pipe"].startswith("conversion ")


def test_the_cuda_tests_run_the_shapes_declared_for_them(repo_root):
    """Each CUDA-only test named in CUDA_TEST_SHAPES exists and runs the shapes declared for it, so the sm_90
    compile covers what the tests launch on a GPU."""
    sources = "".join(p.read_text() for p in (repo_root / "tests").rglob("test_*.py"))
    assert all(f"def {name}(" in sources for name in static.CUDA_TEST_SHAPES)
    paged, = static.CUDA_TEST_SHAPES["test_paged_decode_kernel_on_gpu"]
    assert paged.widths == (math.ceil(max(CUDA_LENGTHS) / paged.block_size) + 1,)     # one spare block per row
    tiny, = static.CUDA_TEST_SHAPES["test_cuda_quantized_models_match_the_cpu_path"]
    assert tiny_gpt().config == static.TINY_TEST_GPT and TOKENS.numel() == tiny.batches[0]
    assert decoder_linear_shapes(tiny_gpt().config) == tiny.weights


def test_the_committed_record_is_a_full_compile_with_a_fingerprint_per_configuration(committed):
    """make kernels-static compiles every configuration (nothing reused), and each carries the fingerprint that
    lets make check-kernels reuse it while its kernel is unchanged."""
    assert committed["n_compiled"] == committed["n_configurations"]
    prints = [r["fingerprint"] for r in committed["configurations"]]
    assert len(set(prints)) == len(prints) and not any(r["reused"] for r in committed["configurations"])


def test_reuse_takes_an_unchanged_configurations_compile_and_recompiles_a_changed_one(one_configuration, tmp_path,
                                                                                     monkeypatch, capsys):
    first = tmp_path / "first"
    main(["static", "--out", str(first), "--no-progress", "--jobs", "1"])
    record = json.loads((first / static.OUT_NAME).read_text())
    assert record["n_compiled"] == 1
    monkeypatch.setattr(aot_compile, "compile_launch", lambda launch: pytest.fail("must not compile"))
    main(["static", "--out", str(tmp_path / "again"), "--no-progress", "--jobs", "1", "--reuse",
          str(first / static.OUT_NAME)])
    again = json.loads((tmp_path / "again" / static.OUT_NAME).read_text())
    assert again["n_compiled"] == 0 and again["configurations"][0]["reused"]
    same = ("registers", "spill_stores", "shared_memory", "occupancy", "main_loop", "fingerprint")
    assert {k: again["configurations"][0][k] for k in same} == {k: record["configurations"][0][k] for k in same}
    assert again["rows"] == record["rows"]
    record["configurations"][0]["fingerprint"] = "0" * 16          # as if the kernel's source had changed
    (first / static.OUT_NAME).write_text(json.dumps(record))
    with pytest.raises(pytest.fail.Exception, match="must not compile"):
        main(["static", "--out", str(tmp_path / "changed"), "--no-progress", "--jobs", "1", "--reuse",
              str(first / static.OUT_NAME)])


def test_reusable_refuses_what_is_not_a_check_record():
    with pytest.raises(TypeError, match=r"record must be a check record with a 'configurations' list"):
        aot_compile.reusable({"rows": []})
