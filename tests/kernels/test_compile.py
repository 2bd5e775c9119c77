"""lab.kernels.compile: the ahead-of-time sm_90 check of the Triton kernels (no GPU needed).

The full check (every configuration the wrappers launch, every dtype) is ``make check-kernels``, about a
hundred compilations; here the configurations are enumerated, and a representative subset is compiled once
(module fixture): for every kernel, each tile shape and warp count its wrapper picks, in bf16 (the dtype of
the GPU runs). The SASS parsing, the occupancy and failure rules and the command line are tested on their
own with synthetic input.
"""

from __future__ import annotations

import importlib
import json
import pkgutil

import pytest
import triton
from triton.runtime.jit import JITFunction

import lab.kernels
from lab.kernels import compile as aot
from lab.kernels import int4_matmul, int8_matmul, sparse24_matmul

TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "G", "G_PAD", "D", "BLOCK_SIZE")


def kernel_functions() -> set[tuple[str, str]]:
    """(module, attribute) of every @triton.jit kernel (name ``*_kernel``) in lab/kernels."""
    found = set()
    for info in pkgutil.iter_modules(lab.kernels.__path__):
        if info.name == "compile":
            continue
        module = importlib.import_module(f"lab.kernels.{info.name}")
        found |= {(module.__name__, name) for name, value in vars(module).items()
                  if isinstance(value, JITFunction) and name.endswith("_kernel")}
    return found


def tile(config_spec: dict) -> tuple:
    return tuple((k, v) for k, v in config_spec["constexprs"].items() if k in TILE_KEYS) + (config_spec["num_warps"],)


def bf16_representatives(configs: list[aot.Configuration]) -> list[aot.Configuration]:
    """The first bf16 configuration of every (kernel, tile shape, warps)."""
    chosen: dict[tuple, aot.Configuration] = {}
    for config in configs:
        if "*bf16" in config.spec["signature"].values():
            chosen.setdefault((config.launch.kernel, tile(config.spec)), config)
    return list(chosen.values())


@pytest.fixture(scope="module")
def configs() -> list[aot.Configuration]:
    return aot.configurations()


@pytest.fixture(scope="module")
def records(configs) -> list[dict]:
    return aot.compile_all(bf16_representatives(configs), progress=False)


def by_kernel(records: list[dict], kernel: str) -> list[dict]:
    found = [r for r in records if r["kernel"] == kernel]
    assert found, f"no {kernel} configuration"
    return found


# --- which configurations --------------------------------------------------------------------------------

def test_every_kernel_of_lab_kernels_is_checked(configs):
    assert set(aot.KERNELS.values()) == kernel_functions()
    assert {c.launch.kernel for c in configs} == set(aot.KERNELS)


def test_configurations_are_distinct_and_keep_their_sources(configs):
    assert len({c.key for c in configs}) == len(configs)
    assert all(c.sources for c in configs)
    labels = [label for c in configs for label in c.sources]
    assert len(labels) > len(configs)               # identical launches were merged
    assert any(label.startswith("quant bench matmul: M=4096 N=8192 K=8192") for label in labels)
    assert any(label.startswith("test cuda paged decode") for label in labels)


def test_specialisation_is_the_launchers(configs):
    """Ints equal to 1 become constants, 16-divisible ints and all pointers get divisibility 16, as at a launch."""
    decode = next(c for c in configs if "quant bench matmul: M=1 N=8192 K=8192 out=bf16" in c.sources)
    assert decode.launch.kernel == "int8_matmul"
    assert set(decode.spec["specialised_to_1"]) == {"stride_ak", "stride_bk", "stride_yn"}   # M: do_not_specialize
    assert {"a_ptr", "b_ptr", "a_scale_ptr", "b_scale_ptr", "y_ptr", "N", "K"} <= set(decode.spec["divisible_by_16"])
    assert "M" in decode.spec["signature"] and "M" not in decode.spec["divisible_by_16"]
    assert decode.spec["constexprs"] == dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"),
                                                 int8_matmul.block_sizes(1)[:4]))
    odd = next(c for c in configs if "test cuda int8 kernel: M=100 N=512 K=1024 out=bf16" in c.sources)
    assert "M" in odd.spec["signature"] and "M" not in odd.spec["divisible_by_16"] + odd.spec["specialised_to_1"]


@pytest.mark.parametrize("module, attribute, patched", [
    (int8_matmul, "candidates", lambda M: ((32, 32, 64, 1, 2, 3),)),
    (sparse24_matmul, "block_sizes", lambda M, dtype: (32, 32, 32, 2)),
    (int4_matmul, "block_sizes", lambda M, N, K, group_size, dtype: (32, 32, 16, 1, 2)),
])
def test_configurations_follow_the_wrappers_block_sizes(configs, module, attribute, patched, monkeypatch):
    kernel = module.__name__.rsplit(".", 1)[1]
    before = {tile(c.spec) for c in configs if c.launch.kernel == kernel}
    monkeypatch.setattr(module, attribute, patched)
    after = {tile(c.spec) for c in aot.configurations() if c.launch.kernel == kernel}
    assert after != before
    assert {dict(t[:-1]).get("BLOCK_M") for t in after} == {32} and {t[-1] for t in after} == {2}


# --- the compiled representatives ------------------------------------------------------------------------

def test_representatives_compile_without_spills_within_the_limits(records):
    assert {r["kernel"] for r in records} == set(aot.KERNELS)
    for r in records:
        assert "error" not in r, (r["name"], r.get("error"))
        assert r["failures"] == [], (r["name"], r["failures"])
        assert r["spill_stores"] == r["spill_loads"] == 0
        assert 0 < r["registers"] <= 255
        assert 0 <= r["shared_memory"]["total"] <= aot.SHARED_PER_BLOCK_MAX
        assert r["occupancy"]["ctas_per_sm"] >= 1
        assert r["main_loop"] is not None and r["main_loop"]["instructions"] > 0


def test_int8_kernel_compiles_onto_the_integer_tensor_cores(records):
    """Hopper's wgmma (IGMMA) needs 64-row warpgroup tiles: the decode tile (16 rows) runs mma.sync (IMMA)."""
    for r in by_kernel(records, "int8_matmul"):
        mnemonics = r["main_loop"]["mnemonics"]
        expected = "IMMA" if r["constexprs"]["BLOCK_M"] < 64 else "IGMMA"
        assert mnemonics.get(expected, 0) > 0, (r["name"], mnemonics)
        assert not {"HMMA", "HGMMA"} & set(mnemonics)


@pytest.mark.parametrize("kernel", ["int4_matmul", "sparse24_matmul", "int4_gemv_v2"])
def test_float_matmuls_use_the_fp16_tensor_cores(records, kernel):
    for r in by_kernel(records, kernel):
        mnemonics = r["main_loop"]["mnemonics"]
        assert {"HMMA", "HGMMA"} & set(mnemonics), (r["name"], mnemonics)


def test_int4_main_loop_dequantizes_in_registers(records):
    for r in by_kernel(records, "int4_matmul"):
        assert r["main_loop"]["classes"]["conversion"] > 0            # codes → float → bf16
        assert r["main_loop"]["classes"]["memory"] > 0


def test_paged_attention_loop_is_fma_and_exp_without_tensor_cores(records):
    for r in by_kernel(records, "paged_attention"):
        mnemonics = r["main_loop"]["mnemonics"]
        assert not aot.TENSOR_CORE_MNEMONICS & set(mnemonics)    # tl.reduce, no tl.dot
        assert mnemonics.get("MUFU", 0) > 0 and r["main_loop"]["classes"]["fma_mma"] > 0


# --- the rules, on synthetic input -----------------------------------------------------------------------

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x000fe40000000f00 */
        /*0010*/                   LDG.E R2, desc[UR4][R2.64] ;           /* 0x000ea8000c1e1900 */
        /*0020*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;  /* 0x000fe20000041804 */
        /*0030*/                   I2F.U32 R5, R6 ;
        /*0040*/              @!P0 BRA 0x20 ;
        /*0050*/                   LDS R7, [R0] ;
        /*0060*/                   IMAD.MOV.U32 R8, RZ, RZ, R9 ;
        /*0070*/                   BRA 0x10 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
"""


def test_main_loop_is_the_innermost_backward_branch():
    sass = aot.parse_sass(SASS)
    assert [m for _, m, _ in sass] == ["MOV", "LDG", "HMMA", "I2F", "BRA", "LDS", "IMAD", "BRA", "EXIT", "BRA"]
    assert sorted(aot.loops(sass)) == [(0x10, 0x70), (0x20, 0x40)]      # the self-branch at 0x90 is no loop
    loop = aot.main_loop(sass)
    assert (loop["start"], loop["end"], loop["instructions"]) == ("0x20", "0x40", 3)
    assert loop["mnemonics"] == {"BRA": 1, "HMMA": 1, "I2F": 1}
    assert loop["classes"] == {"memory": 0, "conversion": 1, "fma_mma": 1, "shared": 0, "other": 1}


def test_instruction_classes():
    assert [aot.instruction_class(m) for m in ("LDGSTS", "UTMALDG", "F2FP", "IGMMA", "FFMA", "IMAD", "LDSM", "SHFL")] \
        == ["memory", "memory", "conversion", "fma_mma", "fma_mma", "other", "shared", "other"]


def test_ptxas_report_parsing():
    log = ("ptxas info    : Function properties for k\n    0 bytes stack frame, 8 bytes spill stores, 12 bytes "
           "spill loads\nptxas info    : Used 168 registers, used 1 barriers, 512 bytes smem, 400 bytes cmem[0]\n")
    assert aot.parse_ptxas_report(log) == {"registers": 168, "stack_frame": 0, "spill_stores": 8,
                                           "spill_loads": 12, "static_shared": 512}
    assert aot.parse_ptxas_report("no report") is None


@pytest.mark.parametrize("registers, shared, warps, ctas, limit", [
    (255, 147456, 8, 1, "registers"),       # 255 regs → 8192 per warp → 8 warps per SM
    (128, 16384, 4, 4, "registers"),        # 4096 per warp → 16 warps → 4 blocks
    (32, 100 * 1024, 4, 2, "shared_memory"),  # 228 KB / (100 KB + 1 KB reserved)
    (16, 0, 1, 32, "blocks"),
    (32, 0, 16, 4, "warps"),
])
def test_occupancy(registers, shared, warps, ctas, limit):
    result = aot.occupancy(registers, shared, warps)
    assert result["ctas_per_sm"] == ctas and limit in result["limited_by"]


def test_failure_rules():
    good = {"spill_stores": 0, "spill_loads": 0, "shared_memory": {"total": aot.SHARED_PER_BLOCK_MAX}}
    assert aot.failures(good) == []
    assert "register spills" in aot.failures({**good, "spill_loads": 4})[0]
    assert "shared memory" in aot.failures({**good, "shared_memory": {"total": aot.SHARED_PER_BLOCK_MAX + 1}})[0]
    assert aot.failures({"error": "CompilationError: at 5:8:\nAssertionError: acc.type"})[0] == \
        "compile error: AssertionError: acc.type"


# --- the command line ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, match", [(["--jobs", "0"], "--jobs: must be a positive integer, got '0'"),
                                         (["--jobs", "two"], "--jobs: must be a positive integer, got 'two'"),
                                         (["--out", "{tmp}"], "--out .* is a directory")])
def test_bad_arguments_are_rejected_before_any_work(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(aot, "configurations", lambda: pytest.fail("must not enumerate"))
    with pytest.raises(SystemExit) as exit_info:
        aot.main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2
    import re
    assert re.search(match, capsys.readouterr().err)


def test_compile_all_rejects_zero_jobs():
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        aot.compile_all([], jobs=0)


def test_main_writes_the_record_with_provenance(configs, tmp_path, monkeypatch, capsys):
    small = next(c for c in configs if c.launch.kernel == "int8_matmul")
    monkeypatch.setattr(aot, "configurations", lambda: [small])
    out = tmp_path / "kernels.json"
    assert aot.main(["--out", str(out), "--jobs", "1", "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["device"] == aot.DEVICE_LABEL and record["triton"] == triton.__version__
    assert {"torch", "python", "date", "host"} <= set(record)
    assert record["command"] == f"python -m lab.kernels.compile --out {out} --jobs 1 --no-progress"
    assert record["ok"] and record["n_configurations"] == 1
    assert record["configurations"][0]["name"] == small.name
    assert small.name in capsys.readouterr().out                      # the table


def test_main_fails_naming_the_configuration(configs, tmp_path, monkeypatch, capsys):
    small = next(c for c in configs if c.launch.kernel == "int8_matmul")
    spilled = {"name": small.name, "kernel": "int8_matmul", **small.spec, "registers": 255, "spill_stores": 8,
               "spill_loads": 8, "stack_frame": 8, "shared_memory": {"dynamic": 0, "static": 0, "total": 0},
               "occupancy": aot.occupancy(255, 0, 4), "main_loop": None, "sources": small.sources}
    spilled["failures"] = aot.failures(spilled)
    monkeypatch.setattr(aot, "configurations", lambda: [small])
    monkeypatch.setattr(aot, "compile_all", lambda configs, jobs, progress: [spilled])
    assert aot.main(["--out", str(tmp_path / "k.json"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {small.name}" in err and "register spills: 8 bytes stored" in err
    assert json.loads((tmp_path / "k.json").read_text())["ok"] is False


def test_the_committed_record_covers_every_configuration_the_wrappers_launch_now(configs, repo_root):
    """results/kernels_sm90_static.json (CI recompiles everything into _build/) must not go stale: it
    lists the same compilations as the wrappers launch today, each compiled with no failure."""
    record = json.loads((repo_root / "results" / "kernels_sm90_static.json").read_text())
    def key(kernel: str, spec: dict) -> tuple:
        return kernel, json.dumps([spec[k] for k in ("constexprs", "signature", "num_warps")], sort_keys=True)

    recorded = {key(r["kernel"], r) for r in record["configurations"]}
    current = {key(c.launch.kernel, c.spec) for c in configs}
    assert recorded == current, "refresh the record: python -m lab.kernels.compile"
    assert record["ok"] and all(r["failures"] == [] for r in record["configurations"])
    for field in ("device", "torch", "triton", "python", "date", "command"):
        assert record[field]
