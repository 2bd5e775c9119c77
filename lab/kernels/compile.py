"""Ahead-of-time compile of every Triton kernel configuration the wrappers launch, for Hopper (sm_90), no GPU needed.

    python -m lab.kernels.compile [--out PATH] [--jobs N] [--no-progress]

writes ``results/kernels_sm90_static.json`` by default (``make check-kernels`` runs it under the pinned
triton and under triton 3.6.0). For each configuration it runs Triton's real pipeline (TTIR → TTGIR →
LLVM IR → PTX → cubin, with the ptxas shipped in the triton wheel) for the target
``GPUTarget("cuda", 90, 32)`` and records the resource use of the cubin and the instruction mix of its main
loop, then prints one line per configuration. It fails (exit status 1, naming each failing configuration,
after writing the record) on a compile error, on any register spill, or on a block needing more than the
227 KB of shared memory an sm_90 block may have. ``--jobs`` compile processes (default: the CPU count) share
the work; every compilation starts from an empty Triton cache, so each run really compiles.

Which configurations. The launches the wrappers make, found by calling the wrappers themselves
(`int4_weight_only_matmul_triton`, `int4_gemv_v2_triton`, `int8_matmul_triton`, `sparse24_matmul_triton`,
`sparse24_matmul_v2_triton`, `paged_attention_decode_triton`, `paged_attention_decode_v2_triton`) with
``meta`` tensors while the module's kernels are replaced by recorders (the main kernel and its
`COMPANIONS`, the v2 kernels' second passes):
block sizes, warps, split-K, INPUT_PRECISION, G / G_PAD / D / BLOCK_SIZE and every stride come from the
wrapper's own code (its ``block_sizes``), so a change there changes what is checked. Each launch is then
specialised exactly as `triton.runtime.jit.JITFunction.run` does: the kernel's own binder
(``create_function_from_signature``) and ``JITFunction._pack_args`` with the CUDA backend of sm_90, i.e. ints
equal to 1 become constants, ints divisible by 16 and pointers get ``tt.divisibility = 16`` (torch allocations
are 16-byte aligned: the pointers are Triton's ``MockTensor``, address 0). Identical compilations (same
kernel, signature, constants, divisibility attributes and options) are compiled once; each keeps the list of
shapes it comes from. The shapes, each for every dtype the wrapper accepts on a GPU (x / q in bf16, fp16 and
fp32; int4 scales in x's dtype, as every caller passes them; the int8 kernel's three out dtypes):

* ``lab.quant.suite``: int4 (v1, and v2 for M ≤ 16 and g a multiple of 64) and int8 N = K = 8192 (g = 128)
  at M in ``BATCHES``; the one-token decode of the
  book's model (its decoder linears at M = 1, int4 g = 64); the GPU run's kernels stage
  (``lab.bench.gpu.KERNEL_SHAPES["gpu"]``: int4 at M = 1 … 32, int8 at M = 4096, 2:4 and paged shapes).
* ``lab.prune.suite``: the 2:4 kernel on ``prune_setup``'s CUDA shapes and batch sizes (full and short form).
* ``lab.infer.suite``: the int8 / int4 decoder linears of the book's model and of ``LLAMA2_7B_SHAPE`` at decode
  (M = B) and prefill (M = B · prompt length) of its CUDA ``setup`` (full and short form); paged attention of
  the serving run (the book's model at the default block size of ``serve`` / ``PagedKVCache``, for every
  block-table width up to its context: the table's row stride is an int argument, and widths 1, multiples
  of 16 and the rest specialise differently) and of ``lab.infer.suite`` (Llama-7B-shaped: 32 query
  heads, 8 and 32 kv heads, head dim 128).
* the CUDA-only tests: tests/kernels/test_int4_int8_kernels.py, tests/kernels/test_int4_gemv_v2.py, tests/infer/test_paged.py,
  tests/kernels/test_paged_attention_v2.py, tests/prune/test_semi_structured.py.

What is recorded per configuration. Registers per thread, stack frame and spill stores / loads (bytes) from
the report of ptxas -v that Triton's own ptxas call prints (``TRITON_DUMP_PTXAS_LOG``; the same binary and
flags that made the cubin); shared memory = Triton's dynamic allocation (``metadata.shared``) + ptxas'
static ``smem``; CTAs per SM, the minimum of the register limit (65,536 per SM, allocated per warp in units
of 256), the shared-memory limit (228 KB per SM, 1 KB reserved per block), 64 warps and 32 blocks per SM;
and the main loop's SASS.

Counting rules (main loop). The cubin is disassembled with the wheel's ``cuobjdump -sass``. Loops are the
backward branches (a BRA to a lower address; the ``BRA`` to itself after EXIT is not a loop); the main loop
is, among the innermost loops (those containing no other loop), the one with the most fma_mma
instructions, ties broken by length: the K loop of the matmuls, the block loop of paged attention. Its
instructions are counted statically from the branch target to the back edge, each once (one iteration;
predicated and conditionally skipped instructions count too). A mnemonic is the opcode before the first dot
(``HMMA.16816.F32.BF16`` → HMMA), and its class:

* memory: global / local / generic memory and TMA — LDG, STG, LD, ST, LDL, STL, LDGSTS, LDGDEPBAR, ATOM,
  ATOMG, RED, REDG, UBLKCP, UTMA* (UTMALDG, UTMASTG, UTMAPF, ...);
* conversion: F2F, F2FP, F2I, I2F, I2I, I2FP, F2IP, I2IP, FRND;
* fma_mma: floating-point FMA / MUL / ADD (FFMA, FMUL, FADD, HFMA2, HMUL2, HADD2, DFMA, DMUL, DADD), the
  tensor cores (HMMA, IMMA, HGMMA, IGMMA, QGMMA) and IDP. IMAD is *not* counted here: ptxas uses it for
  address arithmetic, moves (IMAD.MOV) and shifts (IMAD.SHL), not for the kernel's arithmetic;
* shared: LDS, STS, LDSM, STSM, ATOMS;
* other: everything else (integer ALU, IMAD, predicates, branches, barriers, MUFU, uniform datapath, NOP).

Triton 3.9's notice that ``TRITON_DEFAULT_FP_FUSION`` is unset is silenced here: the check uses Triton's default,
as a launch does. Works under the pinned triton (3.9.0) and triton 3.6.0 (the GPU machine's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import inspect
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace

import torch
import triton
from tqdm.auto import tqdm

from lab.core.records import REPO_ROOT, device_name, provenance

DEFAULT_OUT = REPO_ROOT / "results" / "kernels_sm90_static.json"
DEVICE_LABEL = "sm_90 (ahead-of-time compile, no GPU)"
ARCH = 90
WARP_SIZE = 32

# sm_90 (H100 / H200) limits
REGISTERS_PER_SM = 65_536
REGISTER_ALLOCATION_UNIT = 256          # registers are allocated per warp in units of 256
SHARED_PER_SM = 228 * 1024
SHARED_PER_BLOCK_MAX = 227 * 1024
SHARED_RESERVED_PER_BLOCK = 1024
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32

# kernel name → (module, attribute of the @triton.jit kernel)
KERNELS = {
    "int4_matmul": ("lab.kernels.int4_matmul", "_int4_matmul_kernel"),
    "int8_matmul": ("lab.kernels.int8_matmul", "_int8_matmul_kernel"),
    "sparse24_matmul": ("lab.kernels.sparse24_matmul", "_sparse24_matmul_kernel"),
    "paged_attention": ("lab.kernels.paged_attention", "_paged_attention_decode_kernel"),
    "int4_gemv_v2": ("lab.kernels.int4_gemv_v2", "_int4_gemv_v2_kernel"),
    "int4_gemv_v2_reduce": ("lab.kernels.int4_gemv_v2", "_reduce_kernel"),
    "paged_attention_v2": ("lab.kernels.paged_attention_v2", "_paged_decode_split_kernel"),
    "paged_attention_v2_combine": ("lab.kernels.paged_attention_v2", "_combine_kernel"),
    "sparse24_matmul_v2": ("lab.kernels.sparse24_matmul_v2", "_sparse24_v2_kernel"),
}
# kernels a wrapper launches after its main kernel (recorded with it): the v2 kernels' second passes
COMPANIONS = {"int4_gemv_v2": ("int4_gemv_v2_reduce",), "paged_attention_v2": ("paged_attention_v2_combine",)}

MNEMONIC_CLASSES = {
    "memory": {"LDG", "STG", "LD", "ST", "LDL", "STL", "LDGSTS", "LDGDEPBAR", "ATOM", "ATOMG", "RED", "REDG",
               "UBLKCP"},
    "conversion": {"F2F", "F2FP", "F2I", "I2F", "I2I", "I2FP", "F2IP", "I2IP", "FRND"},
    "fma_mma": {"FFMA", "FMUL", "FADD", "HFMA2", "HMUL2", "HADD2", "DFMA", "DMUL", "DADD", "HMMA", "IMMA", "HGMMA",
                "IGMMA", "QGMMA", "IDP"},
    "shared": {"LDS", "STS", "LDSM", "STSM", "ATOMS"},
}
INSTRUCTION_CLASSES = (*MNEMONIC_CLASSES, "other")
TENSOR_CORE_MNEMONICS = {"HMMA", "IMMA", "HGMMA", "IGMMA", "QGMMA"}


# ---------------------------------------------------------------------------------------------------------
# launches: what the wrappers pass to their kernels
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a launch: only its dtype matters to the compiler (its address is 16-byte aligned)."""
    dtype: str                      # torch dtype name, e.g. "bfloat16"


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as a wrapper makes it (picklable: it travels to the compile processes)."""
    kernel: str                     # a key of KERNELS
    args: tuple                     # TensorArg | int | float, in the kernel's parameter order
    kwargs: tuple                   # sorted (name, value) pairs: constexprs and launch options
    grid: tuple = ()                # the launch grid (programs per axis), as the wrapper gave it


@dataclasses.dataclass
class Configuration:
    """One distinct compilation and the shapes whose launches need it."""
    name: str                       # e.g. "int8_matmul#3"
    launch: Launch                  # the first launch that needs it
    key: str                        # kernel, signature, constants, attributes, options
    spec: dict                      # readable specialisation (see `specialisation_summary`)
    sources: list[str]


class _LaunchRecorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records a `Launch`."""

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel
        self.launches: list[Launch] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            frozen = tuple(TensorArg(str(a.dtype).removeprefix("torch.")) if torch.is_tensor(a) else a for a in args)
            self.launches.append(Launch(self.kernel, frozen, tuple(sorted(kwargs.items())),
                                        tuple(grid) if isinstance(grid, tuple) else ()))
        return launch


@contextlib.contextmanager
def recording(kernel: str) -> Iterator[list[Launch]]:
    """Replace the kernel of ``KERNELS[kernel]`` by a recorder while the block runs; yields its launches."""
    module_name, attribute = KERNELS[kernel]
    module = importlib.import_module(module_name)
    original = getattr(module, attribute)
    recorder = _LaunchRecorder(kernel)
    setattr(module, attribute, recorder)
    try:
        yield recorder.launches
    finally:
        setattr(module, attribute, original)


@contextlib.contextmanager
def recording_with_companions(kernel: str) -> Iterator[tuple[list[Launch], list[list[Launch]]]]:
    """`recording` of ``kernel`` and of each of its `COMPANIONS`: yields (its launches, one list per companion)."""
    with recording(kernel) as recorded, contextlib.ExitStack() as stack:
        yield recorded, [stack.enter_context(recording(c)) for c in COMPANIONS.get(kernel, ())]


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def launch_int4(M: int, N: int, K: int, group_size: int, dtype: torch.dtype, scale_dtype: torch.dtype,
                version: str = "v1") -> None:
    """v1: packed codes (K/2, N) uint8; v2: (N, K/4) int16 (`lab.quant.packing.pack_int4_v2`)."""
    from lab.kernels.int4_gemv_v2 import int4_gemv_v2_triton
    from lab.kernels.int4_matmul import int4_weight_only_matmul_triton

    scales = _meta(K // group_size, N, dtype=scale_dtype)
    if version == "v1":
        packed, wrapper = _meta(K // 2, N, dtype=torch.uint8), int4_weight_only_matmul_triton
    else:
        packed, wrapper = _meta(N, K // 4, dtype=torch.int16), int4_gemv_v2_triton
    wrapper(_meta(M, K, dtype=dtype), packed, scales, torch.empty_like(scales), group_size)


def launch_int8(M: int, N: int, K: int, out_dtype: torch.dtype, block: tuple | None = None) -> None:
    """``block`` None: the default (`int8_matmul.block_sizes`; what a meta tensor gets from `tuned_block`)."""
    from lab.kernels.int8_matmul import int8_matmul_triton

    int8_matmul_triton(_meta(M, K, dtype=torch.int8), _meta(N, K, dtype=torch.int8), _meta(M, dtype=torch.float32),
                       _meta(N, dtype=torch.float32), out_dtype, block)


def launch_sparse24(M: int, out_features: int, in_features: int, dtype: torch.dtype, version: str = "v1") -> None:
    from lab.kernels.sparse24_matmul import sparse24_matmul_triton
    from lab.kernels.sparse24_matmul_v2 import sparse24_matmul_v2_triton
    from lab.prune.semi_structured import meta_shape

    wrapper = sparse24_matmul_triton if version == "v1" else sparse24_matmul_v2_triton
    wrapper(_meta(M, in_features, dtype=dtype), _meta(out_features, in_features // 2, dtype=dtype),
            _meta(*meta_shape(out_features, in_features, 2, 4), dtype=torch.uint8), out_features, in_features)


def launch_paged(B: int, H: int, H_kv: int, D: int, block_size: int, width: int, dtype: torch.dtype,
                 version: str = "v1") -> None:
    """A decode step of B sequences whose block tables are ``width`` blocks wide (v2: the split kernel and
    its combine pass)."""
    from lab.kernels.paged_attention import paged_attention_decode_triton
    from lab.kernels.paged_attention_v2 import paged_attention_decode_v2_triton

    num_blocks = B * width + 1
    pool = _meta(num_blocks, block_size, H_kv, D, dtype=dtype)
    wrapper = paged_attention_decode_triton if version == "v1" else paged_attention_decode_v2_triton
    wrapper(_meta(B, H, D, dtype=dtype), pool, torch.empty_like(pool), _meta(B, width, dtype=torch.int32),
            _meta(B, dtype=torch.int32), check_lengths=False)


# ---------------------------------------------------------------------------------------------------------
# the shapes of the benchmarks and of the CUDA tests
# ---------------------------------------------------------------------------------------------------------

Case = tuple[str, Callable[[], None]]          # (source label, a call of the wrapper)
CUDA = torch.device("cuda")                    # only its type is read: the suites' CUDA shapes


@functools.lru_cache(maxsize=None)
def book_model_config():
    """The `GPTConfig` of the book's pretrained LM, read from its config.json (without transformers)."""
    from lab.models.pretrained import LM_DIR, gpt_config_from_llama

    return gpt_config_from_llama(SimpleNamespace(**json.loads((LM_DIR / "config.json").read_text())))


def tiny_test_gpt_config():
    """tests/kernels/test_int4_int8_kernels.py::tiny_gpt's config (test_cuda_quantized_models_match_the_cpu_path runs it on
    3 × 16 tokens in fp32)."""
    from lab.models.gpt import GPTConfig

    return GPTConfig(vocab_size=61, context_length=16, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96)


def decoder_linear_shapes(config) -> list[tuple[int, int]]:
    """The distinct (out_features, in_features) of a lab GPT's decoder linears (one layer built on ``meta``)."""
    return list(_decoder_linear_shapes(tuple(dataclasses.asdict(config).items())))


@functools.lru_cache(maxsize=None)
def _decoder_linear_shapes(config_items: tuple) -> tuple[tuple[int, int], ...]:
    from lab.models.gpt import GPT, GPTConfig
    from lab.quant.linear import decoder_linear_names

    with torch.device("meta"):
        model = GPT(dataclasses.replace(GPTConfig(**dict(config_items)), n_layer=1))
    linears = [model.get_submodule(name) for name in decoder_linear_names(model)]
    return tuple(sorted({(lin.out_features, lin.in_features) for lin in linears}))


def infer_int4_group(config) -> int:
    """The int4 group size `lab.infer.suite.quantized` picks: the first of 128, 64, 32 dividing the input widths."""
    return next(g for g in (128, 64, 32) if config.d_model % g == 0 and config.d_ff % g == 0)


def _default(fn: Callable, name: str):
    return inspect.signature(fn).parameters[name].default


BOTH = ("int4", "int8")


def quant_matmul_shapes() -> Iterator[tuple[str, Sequence[str], Sequence[int], list[tuple[int, int]], int]]:
    """(label, kernels ⊆ {"int4", "int8"}, batches M, weight shapes (N, K), int4 group size) of every int4 / int8
    matmul the suites and the CUDA tests run."""
    from lab.bench.gpu import KERNEL_SHAPES
    from lab.infer.suite import LLAMA2_7B_SHAPE, setup
    from lab.quant.suite import BATCHES, bench_int4, weight_size

    size, group = weight_size(CUDA, quick=False), _default(bench_int4, "group_size")
    yield "quant bench matmul", BOTH, BATCHES, [(size, size)], group
    for kind in ("int4", "int8"):
        shapes = KERNEL_SHAPES["gpu"][kind]
        yield ("gpu run kernels stage", [kind], shapes["batches"], [(shapes["size"], shapes["size"])],
               shapes.get("group_size", group))
    book = book_model_config()
    yield "quant bench decode (book model)", BOTH, [1], decoder_linear_shapes(book), 64   # bench_decode: RTN, g = 64
    for form in (setup(CUDA, quick=False), setup(CUDA, quick=False, short=True)):
        Ms = sorted({*form.batches, *(B * form.prompt_len for B in form.batches)})    # decode steps and prefills
        for name, config in (("book model", book), ("llama-2-7b shape", LLAMA2_7B_SHAPE)):
            yield f"infer bench ({name})", BOTH, Ms, decoder_linear_shapes(config), infer_int4_group(config)
    for group_size in (128, 64):     # tests/kernels/test_int4_int8_kernels.py::test_cuda_int4_kernel_matches_torch_references
        yield "test cuda int4 kernel", ["int4"], [1, 7, 16, 64, 300], [(1024, 2048)], group_size
    yield "test cuda int8 kernel", ["int8"], [1, 16, 100, 256], [(512, 1024)], 0
    tiny = tiny_test_gpt_config()
    yield "test cuda quantized models (tiny gpt)", BOTH, [3 * tiny.context_length], decoder_linear_shapes(tiny), 32


def int4_cases(version: str = "v1") -> Iterator[Case]:
    """The int4 launches: every shape for v1; for v2 those it takes (M ≤ 16, g a multiple of 64)."""
    from lab.kernels import int4_gemv_v2, int4_matmul

    for label, kinds, Ms, shapes, group_size in quant_matmul_shapes():
        if "int4" not in kinds or (version == "v2" and group_size % 64):
            continue
        Ms = [M for M in Ms if version == "v1" or M <= int4_gemv_v2.MAX_M]
        dtypes = (int4_matmul if version == "v1" else int4_gemv_v2).X_DTYPES
        for M, (N, K), dtype in itertools.product(Ms, shapes, dtypes):
            yield (f"{label}: M={M} N={N} K={K} g={group_size} x,scales={_short(dtype)}{' (v2)' * (version == 'v2')}",
                   lambda M=M, N=N, K=K, g=group_size, dtype=dtype: launch_int4(M, N, K, g, dtype, dtype, version))


def int8_cases() -> Iterator[Case]:
    """Every shape with every block of its tuning set (`int8_matmul.candidates`): a GPU may pick any."""
    from lab.kernels import int8_matmul

    for label, kinds, Ms, shapes, _ in quant_matmul_shapes():
        if "int8" not in kinds:
            continue
        for M, (N, K), out in itertools.product(Ms, shapes, int8_matmul.OUT_DTYPES):
            for i, block in enumerate(int8_matmul.candidates(M)):
                yield (f"{label}: M={M} N={N} K={K} out={_short(out)}{f' (candidate {i})' * (i > 0)}",
                       lambda M=M, N=N, K=K, out=out, block=block: launch_int8(M, N, K, out, block))


def sparse24_cases(version: str = "v1") -> Iterator[Case]:
    from lab.bench.gpu import KERNEL_SHAPES
    from lab.kernels.sparse24_matmul import DTYPES
    from lab.prune.suite import prune_setup

    sources = [("prune bench 2:4 linear", *prune_setup(CUDA, quick=False)[::2]),
               ("prune bench 2:4 linear, short", *prune_setup(CUDA, quick=False, short=True)[::2]),
               ("gpu run kernels stage sparse24", KERNEL_SHAPES["gpu"]["sparse24"]["shapes"],
                KERNEL_SHAPES["gpu"]["sparse24"]["batches"]),
               ("test cuda semi-structured", [(256, 512)], [10])]   # test_torch_semi_structured_linear_matches_...
    for label, weight_shapes, Ms in sources:
        for M, (out_features, in_features), dtype in itertools.product(Ms, weight_shapes, DTYPES):
            yield (f"{label}: M={M} N={out_features} K={in_features} {_short(dtype)}{' (v2)' * (version == 'v2')}",
                   lambda M=M, o=out_features, i=in_features, dtype=dtype: launch_sparse24(M, o, i, dtype, version))


def paged_shapes() -> Iterator[tuple[str, int, int, int, int, int, Sequence[int]]]:
    """(label, B, H, H_kv, D, block size, block-table widths) of every paged decode the suites and tests run."""
    from lab.bench.gpu import KERNEL_SHAPES
    from lab.infer.suite import setup
    from lab.infer.paged import PagedKVCache
    from lab.infer.suite import bench_paged_decode
    from lab.infer.scheduler import serve

    book = book_model_config()         # serving (lab.infer.suite.bench_serving → serve → PagedKVCache)
    for block_size in sorted({_default(serve, "block_size"), _default(PagedKVCache.__init__, "block_size")}):
        widths = range(1, -(-book.context_length // block_size) + 1)     # a table grows one block at a time
        yield ("infer bench serving (book model)", max(setup(CUDA, quick=False).serve_batches), book.n_head,
               book.n_kv_head, book.head_dim, block_size, widths)
    defaults = {name: _default(bench_paged_decode, name)
                for name in ("heads", "head_dim", "batches", "context", "block_size")}
    for label, params in (("paged decode bench", defaults),
                          ("gpu run kernels stage paged", {**defaults, **KERNEL_SHAPES["gpu"]["paged"]})):
        for (H, H_kv), B in itertools.product(params["heads"], params["batches"]):
            yield (label, B, H, H_kv, params["head_dim"], params["block_size"],
                   [-(-params["context"] // params["block_size"])])
    # tests/infer/test_paged.py::test_paged_decode_kernel_on_gpu: lengths up to 513, one spare block per row
    yield "test cuda paged decode", 5, 32, 8, 128, 16, [math.ceil(513 / 16) + 1]


def paged_cases(version: str = "v1") -> Iterator[Case]:
    from lab.kernels.paged_attention import DTYPES

    for label, B, H, H_kv, D, block_size, widths in paged_shapes():
        for width, dtype in itertools.product(widths, DTYPES):
            yield (f"{label}: B={B} H={H} H_kv={H_kv} D={D} block={block_size} table width={width} {_short(dtype)}"
                   f"{' (v2)' * (version == 'v2')}",
                   lambda B=B, H=H, H_kv=H_kv, D=D, bs=block_size, w=width, dtype=dtype:
                   launch_paged(B, H, H_kv, D, bs, w, dtype, version))


CASES = {"int4_matmul": int4_cases, "int8_matmul": int8_cases, "sparse24_matmul": sparse24_cases,
         "paged_attention": paged_cases, "int4_gemv_v2": lambda: int4_cases("v2"),
         "paged_attention_v2": lambda: paged_cases("v2"), "sparse24_matmul_v2": lambda: sparse24_cases("v2")}


def launches() -> list[tuple[str, Launch]]:
    """(source label, launch) of every case, in order: each case's wrapper call must launch its kernel once."""
    out = []
    for kernel, cases in CASES.items():
        with recording_with_companions(kernel) as (recorded, companions):
            for label, call in cases():
                before, companions_before = len(recorded), [len(c) for c in companions]
                call()
                if len(recorded) != before + 1:
                    raise RuntimeError(f"{label}: the wrapper launched {len(recorded) - before} kernels, expected 1")
                out.append((label, recorded[-1]))
                out += [(label, c[-1]) for c, n in zip(companions, companions_before) if len(c) > n]
    return out


def _ranges(numbers: Sequence[int]) -> str:
    """"1,3-5,9" for [1, 3, 4, 5, 9]."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def compact_sources(labels: Sequence[str]) -> list[str]:
    """The labels with the table widths of otherwise equal paged-attention labels folded into ranges."""
    widths: dict[str, list[int]] = {}
    for label in labels:
        match = re.search(r"table width=(\d+)", label)
        key = label if match is None else label[:match.start(1)] + "{}" + label[match.end(1):]
        widths.setdefault(key, []).extend([int(match[1])] if match else [])
    return [key.replace("{}", _ranges(ws)) if ws else key for key, ws in widths.items()]


# ---------------------------------------------------------------------------------------------------------
# specialisation: what JITFunction.run does before it compiles
# ---------------------------------------------------------------------------------------------------------

def target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", ARCH, WARP_SIZE)


@functools.lru_cache(maxsize=None)
def _binder(kernel: str, fn_id: int):
    """(fn, backend, binder) of a kernel: the sm_90 backend and the argument binder `JITFunction.run` uses."""
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    module_name, attribute = KERNELS[kernel]
    fn = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{module_name}.{attribute} is a {type(fn).__name__}, not a JITFunction: the module was "
                        "imported with TRITON_INTERPRET=1; run the compile check without it")
    backend = make_backend(target())
    return fn, backend, create_function_from_signature(fn.signature, fn.params, backend)


@contextlib.contextmanager
def _quiet_fp_fusion_notice() -> Iterator[None]:
    """Triton 3.9 warns that TRITON_DEFAULT_FP_FUSION is unset; the check keeps the default, as a launch does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
        yield


def specialise(launch: Launch):
    """(fn, options, signature, constexprs, attrs) of a launch, built as `JITFunction.run` builds them."""
    from triton import knobs
    from triton.runtime.jit import MockTensor

    module_name, attribute = KERNELS[launch.kernel]
    fn, backend, binder = _binder(launch.kernel, id(getattr(importlib.import_module(module_name), attribute)))
    args = [MockTensor(getattr(torch, a.dtype)) if isinstance(a, TensorArg) else a for a in launch.args]
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):   # 3.6 has the first, 3.9 both
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    with _quiet_fp_fusion_notice():
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return fn, options, signature, constexprs, attrs


def specialisation_summary(fn, options, signature: dict, constexprs: dict, attrs: dict) -> dict:
    """Readable form: declared constexprs, int arguments specialised to 1, divisible-by-16 arguments, dtypes."""
    names = list(signature)
    declared = {p.name for p in fn.params if p.is_constexpr}
    constants = {names[path[0]]: constexprs[path] for path in sorted(constexprs)}
    return {
        "constexprs": {k: v for k, v in constants.items() if k in declared},
        "specialised_to_1": sorted(k for k in constants if k not in declared),
        "divisible_by_16": [names[path[0]] for path in sorted(attrs) if ["tt.divisibility", 16] in attrs[path]],
        "signature": {k: v for k, v in signature.items() if v != "constexpr"},
        "num_warps": options.num_warps,
        "num_stages": options.num_stages,
    }


def compilation_key(launch: Launch, options, signature: dict, constexprs: dict, attrs: dict) -> str:
    attrs_text = {str(k): v for k, v in sorted(attrs.items()) if v}
    options_text = {k: v for k, v in sorted(options.__dict__.items()) if k != "extern_libs"}
    return json.dumps([launch.kernel, signature, {str(k): repr(v) for k, v in sorted(constexprs.items())},
                       attrs_text, repr(options_text)], default=repr)


def configurations() -> list[Configuration]:
    """The distinct compilations of every launch of `launches`, each with the labels of its sources."""
    by_key: dict[str, Configuration] = {}
    counts: Counter = Counter()
    for label, launch in launches():
        fn, options, signature, constexprs, attrs = specialise(launch)
        key = compilation_key(launch, options, signature, constexprs, attrs)
        if key not in by_key:
            counts[launch.kernel] += 1
            by_key[key] = Configuration(f"{launch.kernel}#{counts[launch.kernel]}", launch, key,
                                        specialisation_summary(fn, options, signature, constexprs, attrs), [])
        by_key[key].sources.append(label)
    return list(by_key.values())


# ---------------------------------------------------------------------------------------------------------
# compiling one configuration and reading its cubin
# ---------------------------------------------------------------------------------------------------------

def _tool(name: str) -> str:
    """Path of a CUDA tool of the triton wheel (``knobs.nvidia.<name>``, which honours TRITON_<NAME>_PATH)."""
    from triton import knobs

    return getattr(knobs.nvidia, name).path


def parse_ptxas_report(log: str) -> dict | None:
    """{"registers", "stack_frame", "spill_stores", "spill_loads", "static_shared"} from ``ptxas -v``, or None."""
    registers = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (registers and frame):
        return None
    smem = re.search(r"(\d+) bytes smem", log)
    return {"registers": int(registers[1]), "stack_frame": int(frame[1]), "spill_stores": int(frame[2]),
            "spill_loads": int(frame[3]), "static_shared": int(smem[1]) if smem else 0}


def run_ptxas(ptx: str, workdir: Path) -> dict:
    """``ptxas -v`` on the PTX for its own target (a fallback: Triton's own report is used when it printed one),
    with the ptxas Triton picks for sm_90 (3.9: the wheel's ptxas-blackwell, 3.6: its ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M)[1]
    ptx_path = workdir / "kernel.ptx"
    ptx_path.write_text(ptx)
    result = subprocess.run([get_ptxas(ARCH).path, "-v", "-lineinfo", f"--gpu-name={arch}", str(ptx_path), "-o",
                             str(workdir / "ptxas.cubin")], capture_output=True, text=True, check=True)
    report = parse_ptxas_report(result.stderr + result.stdout)
    if report is None:
        raise RuntimeError(f"cannot parse the ptxas report:\n{result.stderr}")
    return report


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_]*)\s*([^;]*);")


def parse_sass(text: str) -> list[tuple[int, str, str]]:
    """[(address, mnemonic, operands)] of ``cuobjdump -sass`` output."""
    return [(int(m[1], 16), m[3], m[5].strip()) for m in SASS_LINE.finditer(text)]


def disassemble_text(cubin: bytes, workdir: Path) -> str:
    """The cubin's SASS, as the wheel's ``cuobjdump -sass`` prints it."""
    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    return subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True, check=True).stdout


LOAD_BYTES = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}   # a width modifier → bytes per thread


def global_load_bytes(text: str, start: int, end: int) -> list[int]:
    """Bytes per thread of each global load (LDG, and the asynchronous LDGSTS) between two SASS addresses:
    the width modifier of the instruction (``LDG.E.128`` → 16, ``.64`` → 8, ``.U8`` → 1), 4 without one."""
    widths = []
    for match in SASS_LINE.finditer(text):
        if match[3] in ("LDG", "LDGSTS") and start <= int(match[1], 16) <= end:
            widths.append(next((LOAD_BYTES[m] for m in match[4].split(".") if m in LOAD_BYTES), 4))
    return widths


def instruction_class(mnemonic: str) -> str:
    if mnemonic.startswith("UTMA"):
        return "memory"
    return next((name for name, members in MNEMONIC_CLASSES.items() if mnemonic in members), "other")


def loops(sass: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """(head, back edge) addresses of every backward branch (the self-branch after EXIT excluded)."""
    found = []
    for address, mnemonic, operands in sass:
        target_address = re.search(r"0x([0-9a-f]+)\s*$", operands) if mnemonic == "BRA" else None
        if target_address and int(target_address[1], 16) < address:
            found.append((int(target_address[1], 16), address))
    return found


def main_loop(sass: list[tuple[int, str, str]]) -> dict | None:
    """Start, end, class counts and mnemonic counts of one iteration of the main loop (see the module docstring)."""
    candidates = loops(sass)
    innermost = [(a, b) for a, b in candidates
                 if not any((a, b) != (c, d) and a <= c and d <= b for c, d in candidates)]
    if not innermost:
        return None

    def body(loop: tuple[int, int]) -> list[str]:
        return [mnemonic for address, mnemonic, _ in sass if loop[0] <= address <= loop[1]]

    def weight(loop: tuple[int, int]) -> tuple[int, int]:
        mnemonics = body(loop)
        return sum(instruction_class(m) == "fma_mma" for m in mnemonics), len(mnemonics)

    start, end = max(innermost, key=weight)
    mnemonics = Counter(body((start, end)))
    classes = {name: 0 for name in INSTRUCTION_CLASSES}
    for mnemonic, count in mnemonics.items():
        classes[instruction_class(mnemonic)] += count
    return {"start": hex(start), "end": hex(end), "instructions": sum(mnemonics.values()), "classes": classes,
            "mnemonics": dict(sorted(mnemonics.items(), key=lambda item: (-item[1], item[0])))}


def occupancy(registers: int, shared_bytes: int, num_warps: int) -> dict:
    """CTAs per SM on sm_90 and the limit of each resource."""
    registers_per_warp = math.ceil(max(registers, 1) * WARP_SIZE / REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    limits = {"registers": REGISTERS_PER_SM // registers_per_warp // num_warps,
              "shared_memory": SHARED_PER_SM // (shared_bytes + SHARED_RESERVED_PER_BLOCK),
              "warps": MAX_WARPS_PER_SM // num_warps, "blocks": MAX_BLOCKS_PER_SM}
    ctas = min(limits.values())
    return {"ctas_per_sm": ctas, "warps_per_sm": ctas * num_warps,
            "limited_by": [name for name, value in limits.items() if value == ctas], "limits": limits}


def compile_launch(launch: Launch) -> dict:
    """Compile one launch for sm_90 and measure it: registers, spills, shared memory, CTAs/SM, main loop.

    Each compilation gets a fresh, empty Triton cache, so it always really compiles and Triton's ptxas call
    prints its report (``TRITON_DUMP_PTXAS_LOG``).
    """
    start = time.perf_counter()
    fn, options, signature, constexprs, attrs = specialise(launch)
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="lab-aot-") as tmp:
        try:
            with _environment(TRITON_CACHE_DIR=str(Path(tmp) / "cache"), TRITON_DUMP_PTXAS_LOG="1"), \
                    contextlib.redirect_stdout(log), _quiet_fp_fusion_notice():
                kernel = triton.compile(triton.compiler.ASTSource(fn, signature, constexprs, attrs), target=target(),
                                        options=options.__dict__)
        except Exception as error:  # a compile error is a result of the check, reported with the configuration
            return {"error": f"{type(error).__name__}: {error}"[-4000:], "error_summary": error_summary(error),
                    "compile_seconds": round(time.perf_counter() - start, 2)}
        report = parse_ptxas_report(log.getvalue()) or run_ptxas(kernel.asm["ptx"], Path(tmp))
        text = disassemble_text(kernel.asm["cubin"], Path(tmp))
        sass = parse_sass(text)
    dynamic_shared = int(kernel.metadata.shared)
    shared = {"dynamic": dynamic_shared, "static": report["static_shared"],
              "total": dynamic_shared + report["static_shared"]}
    loop = main_loop(sass)
    if loop is not None:
        loop["global_load_bytes"] = global_load_bytes(text, int(loop["start"], 16), int(loop["end"], 16))
    return {"registers": report["registers"], "spill_stores": report["spill_stores"],
            "spill_loads": report["spill_loads"], "stack_frame": report["stack_frame"], "shared_memory": shared,
            "occupancy": occupancy(report["registers"], shared["total"], options.num_warps),
            "sass_instructions": len(sass), "main_loop": loop,
            "compile_seconds": round(time.perf_counter() - start, 2)}


def error_summary(error: BaseException) -> str:
    """One line: the error, the kernel line it points at (a CompilationError's caret), and its root cause
    with the failing assertion of Triton's source when the cause is a bare AssertionError."""
    lines = str(error).rstrip().splitlines()
    where = f" at `{lines[-2].strip()}`" if len(lines) >= 2 and lines[-1].strip() == "^" else ""
    root = error
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    if root is error:
        return f"{type(error).__name__}{where}: {lines[0] if lines and not where else ''}".rstrip(": ")
    message = str(root).strip().splitlines()[0] if str(root).strip() else ""
    frames = traceback.extract_tb(root.__traceback__)
    if not message and frames:
        message = frames[-1].line or ""
    return f"{type(error).__name__}{where}: {type(root).__name__}: {message}".rstrip(": ")


def failures(record: dict) -> list[str]:
    """Why a configuration's record fails the check (empty when it passes)."""
    if "error" in record:
        text = record["error"].strip()
        return [f"compile error: {record.get('error_summary') or (text.splitlines()[-1] if text else '?')}"]
    problems = []
    if record["spill_stores"] or record["spill_loads"]:
        problems.append(f"register spills: {record['spill_stores']} bytes stored, {record['spill_loads']} loaded")
    if record["shared_memory"]["total"] > SHARED_PER_BLOCK_MAX:
        problems.append(f"shared memory {record['shared_memory']['total']} bytes > {SHARED_PER_BLOCK_MAX} per block")
    return problems


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _cost_estimate(config: Configuration) -> float:
    """A guess of the compile time: tile volume × warps, × 4 for fp32 (FMA dots without tensor cores)."""
    volume = math.prod(v for k, v in config.spec["constexprs"].items() if k.startswith("BLOCK") or k in ("D", "G_PAD"))
    fp32 = next(iter(config.spec["signature"].values())) == "*fp32"
    return volume * config.spec["num_warps"] * (4 if fp32 else 1)


def compile_all(configs: Sequence[Configuration], jobs: int | None = None, progress: bool = True) -> list[dict]:
    """Compile every configuration (``jobs`` processes, default the CPU count); one record each, in order."""
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    results: list[dict | None] = [None] * len(configs)
    bar = tqdm(total=len(configs), desc=f"compile sm_{ARCH} (triton {triton.__version__})", disable=not progress)
    if jobs == 1:
        for i, config in enumerate(configs):
            results[i] = compile_launch(config.launch)
            bar.update()
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method)) as pool:
            order = sorted(range(len(configs)), key=lambda i: -_cost_estimate(configs[i]))   # longest first
            futures = {pool.submit(compile_launch, configs[i].launch): i for i in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
    return [{"name": config.name, "kernel": config.launch.kernel, **config.spec, **result, "failures": failures(result),
             "n_launches": len(config.sources), "sources": compact_sources(config.sources)}
            for config, result in zip(configs, results)]


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------

def _constexpr_text(record: dict) -> str:
    short = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K", "SPLIT_K": "split", "GROUP": "g",
             "INPUT_PRECISION": "prec", "BLOCK_SIZE": "bs"}
    def text(value) -> str:  # inline PTX (the int4 v2 dequantization) is shown by its length only
        return f"<{len(value)} chars>" if isinstance(value, str) and len(value) > 12 else str(value)

    return " ".join(f"{short.get(k, k)}={text(v)}" for k, v in record["constexprs"].items())


def _status(record: dict) -> str:
    if "error" in record:
        return "COMPILE ERROR"
    if record["spill_stores"] or record["spill_loads"]:
        return f"SPILLS {record['spill_stores']}/{record['spill_loads']} B"
    return "SMEM > 227 KB" if record["failures"] else "ok"


def table(records: Sequence[dict]) -> str:
    """One line per configuration: name, constexprs, pointer dtypes, warps/stages, registers, shared memory (KB),
    CTAs/SM, the main loop's instruction classes and tensor-core instructions, status."""
    header = (f"{'config':<19} {'constexprs':<41} {'pointers':<16} {'w/s':>4} {'regs':>4} {'smemKB':>6} {'CTA':>3}"
              f"  {'mem':>4} {'cvt':>4} {'fma':>4} {'shr':>4} {'oth':>4}  {'tensor core':<11}  status")
    lines = [header, "-" * len(header)]
    for r in records:
        pointers = ",".join(dict.fromkeys(v[1:] for v in r["signature"].values() if v.startswith("*")))
        head = f"{r['name']:<19} {_constexpr_text(r):<41} {pointers:<16} {r['num_warps']:>2}/{r['num_stages']}"
        if "error" in r:
            lines.append(f"{head}  {r['failures'][0][:90]}")
            continue
        loop = r["main_loop"] or {"classes": dict.fromkeys(INSTRUCTION_CLASSES, 0), "mnemonics": {}}
        counts = " ".join(f"{loop['classes'][name]:>4}" for name in INSTRUCTION_CLASSES)
        mma = ",".join(f"{m}x{n}" for m, n in loop["mnemonics"].items() if m in TENSOR_CORE_MNEMONICS) or "-"
        lines.append(f"{head} {r['registers']:>4} {r['shared_memory']['total'] / 1024:>6.1f} "
                     f"{r['occupancy']['ctas_per_sm']:>3}  {counts}  {mma:<11}  {_status(r)}")
    return "\n".join(lines)


def record_provenance(argv: Sequence[str]) -> dict:
    """The provenance fields of a record (`lab.core.records.provenance`) for this check."""
    fields = provenance(torch.device("cpu"), "python -m lab.kernels.compile " + shlex.join(argv))
    fields.update(device=DEVICE_LABEL, device_type="cuda", host=device_name(torch.device("cpu")))
    return fields


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.kernels.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON record (default {DEFAULT_OUT})")
    parser.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1,
                        help="compile processes (default: the CPU count)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a directory; give the path of the JSON file to write")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; write the record; print the table; return the exit status (1 if any configuration fails)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from lab.core.atomic import atomic_write_json

    start = time.perf_counter()
    configs = configurations()
    n_launches = sum(len(c.sources) for c in configs)
    print(f"triton {triton.__version__}: {len(configs)} distinct compilations for {n_launches} launches, "
          f"target sm_{ARCH}, {args.jobs} processes")
    records = compile_all(configs, args.jobs, progress=not args.no_progress)
    failed = [r for r in records if r["failures"]]
    record = {**record_provenance(argv), "target": {"backend": "cuda", "arch": ARCH, "warp_size": WARP_SIZE},
              "limits": {"registers_per_sm": REGISTERS_PER_SM, "register_allocation_unit": REGISTER_ALLOCATION_UNIT,
                         "shared_per_sm": SHARED_PER_SM, "shared_per_block_max": SHARED_PER_BLOCK_MAX,
                         "shared_reserved_per_block": SHARED_RESERVED_PER_BLOCK, "max_warps_per_sm": MAX_WARPS_PER_SM,
                         "max_blocks_per_sm": MAX_BLOCKS_PER_SM},
              "ok": not failed, "n_configurations": len(records), "n_launches": n_launches,
              "seconds": round(time.perf_counter() - start, 1), "configurations": records}
    path = atomic_write_json(args.out, record)
    print(table(records))
    print(f"wrote {path} ({len(records)} configurations, {record['seconds']} s)")
    for r in failed:
        print(f"FAILED {r['name']} ({_constexpr_text(r)}, {r['num_warps']} warps; from {r['sources'][0]}): "
              + "; ".join(r["failures"]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
