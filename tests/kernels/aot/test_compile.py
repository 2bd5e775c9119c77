"""lab.kernels.aot: which configurations the callers' shapes launch, how they are specialised, and a compile.

The full compile (every configuration, every dtype) is ``make check-kernels``, about a hundred compilations;
here the configurations are enumerated, and a representative subset is compiled once (module fixture) with the
pinned Triton: for every kernel, its first bf16 configuration (the dtype of the GPU runs) with a decode tile
(BLOCK_M < 64: mma.sync) and with a warpgroup tile (BLOCK_M >= 64: wgmma) where the wrapper picks one. Every tile
shape and warp count, under the GPU machine's Triton 3.6.0, is `make check-kernels`, part of `make test`.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from triton.runtime.jit import JITFunction

import lab.kernels
from lab.bench import static
from lab.kernels import int4, int8, sparse24
from lab.kernels.aot.compile import compile_all, failures
from lab.kernels.aot.launches import KERNELS
from lab.kernels.aot.sass import TENSOR_CORE_MNEMONICS
from lab.kernels.aot.shapes import launches
from lab.kernels.aot.sm90 import SHARED_PER_BLOCK_MAX
from lab.kernels.aot.specialise import Configuration, configurations

TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "G", "G_PAD", "D", "BLOCK_SIZE")


def kernel_functions() -> set[tuple[str, str]]:
    """(module, attribute) of every @triton.jit kernel (name ``*_kernel``) in lab/kernels."""
    found = set()
    for info in pkgutil.iter_modules(lab.kernels.__path__):
        if info.ispkg:                                   # lab.kernels.aot, the tool
            continue
        module = importlib.import_module(f"lab.kernels.{info.name}")
        found |= {(module.__name__, name) for name, value in vars(module).items()
                  if isinstance(value, JITFunction) and name.endswith("_kernel")}
    return found


def tile(config_spec: dict) -> tuple:
    return tuple((k, v) for k, v in config_spec["constexprs"].items() if k in TILE_KEYS) + (config_spec["num_warps"],)


def bf16_representatives(configs: list[Configuration]) -> list[Configuration]:
    """The first bf16 configuration of every (kernel, warpgroup tile or not)."""
    chosen: dict[tuple, Configuration] = {}
    for config in configs:
        if "*bf16" in config.spec["signature"].values():
            chosen.setdefault((config.launch.kernel, config.spec["constexprs"].get("BLOCK_M", 0) >= 64), config)
    return list(chosen.values())


def current_configurations() -> list[Configuration]:
    """The distinct compilations of every shape the callers declare (`lab.bench.static.shapes`)."""
    return configurations(launches(static.shapes()))


@pytest.fixture(scope="module")
def configs() -> list[Configuration]:
    return current_configurations()


@pytest.fixture(scope="module")
def records(configs) -> list[dict]:
    return compile_all(bf16_representatives(configs), progress=False)


def by_kernel(records: list[dict], kernel: str) -> list[dict]:
    found = [r for r in records if r["kernel"] == kernel]
    assert found, f"no {kernel} configuration"
    return found


# --- which configurations --------------------------------------------------------------------------------

def test_every_kernel_of_lab_kernels_is_checked(configs):
    assert set(KERNELS.values()) == kernel_functions()
    assert {c.launch.kernel for c in configs} == set(KERNELS)


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
                                                 int8.block_sizes(1)[:4]))
    odd = next(c for c in configs if "test cuda int8 kernel: M=100 N=512 K=1024 out=bf16" in c.sources)
    assert "M" in odd.spec["signature"] and "M" not in odd.spec["divisible_by_16"] + odd.spec["specialised_to_1"]


@pytest.mark.parametrize("kernel, module, attribute, patched", [
    ("int8_matmul", int8, "candidates", lambda M: ((32, 32, 64, 1, 2, 3),)),
    ("sparse24_matmul", sparse24, "block_sizes_v1", lambda M, dtype: (32, 32, 32, 2)),
    ("int4_matmul", int4, "block_sizes_v1", lambda M, N, K, group_size, dtype: (32, 32, 16, 1, 2)),
])
def test_configurations_follow_the_wrappers_block_sizes(configs, kernel, module, attribute, patched, monkeypatch):
    before = {tile(c.spec) for c in configs if c.launch.kernel == kernel}
    monkeypatch.setattr(module, attribute, patched)
    after = {tile(c.spec) for c in current_configurations() if c.launch.kernel == kernel}
    assert after != before
    assert {dict(t[:-1]).get("BLOCK_M") for t in after} == {32} and {t[-1] for t in after} == {2}


# --- the compiled representatives ------------------------------------------------------------------------

def test_representatives_compile_without_spills_within_the_limits(records):
    assert {r["kernel"] for r in records} == set(KERNELS)
    for r in records:
        assert "error" not in r, (r["name"], r.get("error"))
        assert r["failures"] == [], (r["name"], r["failures"])
        assert r["spill_stores"] == r["spill_loads"] == 0
        assert 0 < r["registers"] <= 255
        assert 0 <= r["shared_memory"]["total"] <= SHARED_PER_BLOCK_MAX
        assert r["occupancy"]["ctas_per_sm"] >= 1
        if r["kernel"] != "int4_dequantize":                             # one group per program: no loop
            assert r["main_loop"] is not None and r["main_loop"]["instructions"] > 0


def test_int8_kernel_compiles_onto_the_integer_tensor_cores(records):
    """Hopper's wgmma (IGMMA) needs 64-row warpgroup tiles: the decode tile (16 rows) runs mma.sync (IMMA)."""
    for r in by_kernel(records, "int8_matmul"):
        mnemonics = r["main_loop"]["mnemonics"]
        expected = "IMMA" if r["constexprs"]["BLOCK_M"] < 64 else "IGMMA"
        assert mnemonics.get(expected, 0) > 0, (r["name"], mnemonics)
        assert not {"HMMA", "HGMMA"} & set(mnemonics)


@pytest.mark.parametrize("kernel", ["int4_matmul", "sparse24_matmul", "int4_gemv_v2", "dense_matmul", "fp4_matmul"])
def test_float_matmuls_use_the_fp16_tensor_cores(records, kernel):
    for r in by_kernel(records, kernel):
        mnemonics = r["main_loop"]["mnemonics"]
        assert {"HMMA", "HGMMA"} & set(mnemonics), (r["name"], mnemonics)


def test_int4_main_loop_dequantizes_in_registers(records):
    for r in by_kernel(records, "int4_matmul"):
        assert r["main_loop"]["classes"]["conversion"] > 0            # codes → float → bf16
        assert r["main_loop"]["classes"]["memory"] > 0


def test_fp4_main_loop_decodes_by_bit_patterns(records):
    """E2M1 codes become fp16 bit patterns by shifts and masks (`lab.kernels.fp4_gemv`): no int → float conversion."""
    for r in by_kernel(records, "fp4_matmul"):
        assert "I2F" not in r["main_loop"]["mnemonics"] and r["main_loop"]["classes"]["memory"] > 0


def test_paged_attention_loop_is_fma_and_exp_without_tensor_cores(records):
    for r in by_kernel(records, "paged_attention"):
        mnemonics = r["main_loop"]["mnemonics"]
        assert not TENSOR_CORE_MNEMONICS & set(mnemonics)    # tl.reduce, no tl.dot
        assert mnemonics.get("MUFU", 0) > 0 and r["main_loop"]["classes"]["fma_mma"] > 0


# --- the rules ------------------------------------------------------------------------------------------

def test_failure_rules():
    good = {"spill_stores": 0, "spill_loads": 0, "shared_memory": {"total": SHARED_PER_BLOCK_MAX}}
    assert failures(good) == []
    assert "register spills" in failures({**good, "spill_loads": 4})[0]
    assert "shared memory" in failures({**good, "shared_memory": {"total": SHARED_PER_BLOCK_MAX + 1}})[0]
    assert failures({"error": "CompilationError: at 5:8:\nAssertionError: acc.type"})[0] == \
        "compile error: AssertionError: acc.type"


def test_compile_all_rejects_zero_jobs():
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        compile_all([], jobs=0)
