"""lab.kernels.paged_attention (v1, and v2: flash-decoding over a paged cache) against a float64 reference.

The reference: softmax attention in float64, one sequence and head at a time, from the slot formula; v1 for
v2. The kernels run under TRITON_INTERPRET=1 (fp32 and fp16) with NaN-filled outputs and partials; the
compiled kernels are compared on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from lab.bench.static import CUDA_TEST_SHAPES
from lab.kernels import paged_attention as paged_module
from tests.kernels.interpreted import reloaded

NO_CUDA = not torch.cuda.is_available()

CUDA_PAGED, = CUDA_TEST_SHAPES["test_paged_decode_kernel_on_gpu"]     # the sm_90 compile covers them
CUDA_LENGTHS = [1, 16, 17, 200, 513]                                  # cached tokens of its B = 5 rows


def _paged_inputs(B, H, H_kv, D, block_size, lengths, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(math.ceil(n / block_size) for n in lengths) + 1
    num_blocks = B * max_blocks + 2
    q = torch.randn(B, H, D, generator=g).to(dtype)
    k_pool = torch.randn(num_blocks, block_size, H_kv, D, generator=g).to(dtype)
    v_pool = torch.randn(num_blocks, block_size, H_kv, D, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[:B * max_blocks].view(B, max_blocks).int()
    return q, k_pool, v_pool, tables, torch.tensor(lengths, dtype=torch.int32)


def _reference(q, k_pool, v_pool, tables, lengths):
    """float64, one sequence and one head at a time, from the slot formula."""
    B, H, D = q.shape
    block_size, H_kv = k_pool.shape[1], k_pool.shape[2]
    out = torch.empty(B, H, D, dtype=torch.float64)
    for b in range(B):
        slots = [int(tables[b, t // block_size]) * block_size + t % block_size for t in range(int(lengths[b]))]
        k, v = k_pool.reshape(-1, H_kv, D)[slots].double(), v_pool.reshape(-1, H_kv, D)[slots].double()
        for h in range(H):
            j = h // (H // H_kv)
            out[b, h] = torch.softmax(k[:, j] @ q[b, h].double() / math.sqrt(D), 0) @ v[:, j]
    return out


@pytest.fixture
def interpreted():
    """The kernel module re-imported under TRITON_INTERPRET=1 for one test (and restored after it): the tests
    without this fixture run the PyTorch path."""
    for (module,) in reloaded(paged_module):
        yield module


# B, H, H_kv, D, block_size, lengths: one token; G = 2 with D = 32 over 1, 2 and 3 blocks (48: a full last block);
# G = 3 padded to 4 rows; one kv head for G = 8, D = 64, blocks of 4
CASES = [(1, 4, 4, 16, 4, [1]), (3, 4, 2, 32, 16, [1, 17, 48]), (2, 6, 2, 16, 8, [9, 8]),
         (4, 8, 1, 64, 4, [5, 2, 13, 4])]


@pytest.mark.parametrize("B, H, H_kv, D, block_size, lengths", CASES)
def test_paged_decode_torch_path_matches_float64(B, H, H_kv, D, block_size, lengths):
    args = _paged_inputs(B, H, H_kv, D, block_size, lengths, torch.float32, seed=B + D)
    out = paged_module.paged_attention_decode(*args)
    assert (out.double() - _reference(*args)).abs().max() < 1e-5


@pytest.mark.parametrize("B, H, H_kv, D, block_size, lengths", CASES)
def test_paged_decode_kernel_under_interpreter_matches_float64(interpreted, monkeypatch, B, H, H_kv, D,
                                                               block_size, lengths):
    args = _paged_inputs(B, H, H_kv, D, block_size, lengths, torch.float32, seed=B * D)
    monkeypatch.setattr(interpreted.torch, "empty_like", lambda t: torch.full_like(t, float("nan")))
    out = interpreted.paged_attention_decode(*args)
    assert not out.isnan().any(), "the kernel left outputs unwritten"
    assert (out.double() - _reference(*args)).abs().max() < 1e-5


def _with_entry(tables: torch.Tensor, b: int, i: int, value: int) -> torch.Tensor:
    tables = tables.clone()
    tables[b, i] = value
    return tables


def test_paged_decode_ignores_table_entries_past_a_sequences_length():
    """Entries a sequence does not use may hold anything (−1 padding): both paths give the same output."""
    args = _paged_inputs(2, 4, 2, 16, 4, [5, 3], torch.float32, seed=0)
    tables = args[3].clone()
    tables[1, 1:] = -1                                   # sequence 1 (3 tokens) uses one block only
    out = paged_module.paged_attention_decode(*args[:3], tables, args[4])
    assert torch.equal(out, paged_module.paged_attention_decode(*args))


def test_paged_decode_kernel_fp16_under_interpreter(interpreted):
    args = _paged_inputs(2, 4, 2, 32, 8, [11, 3], torch.float16, seed=3)
    out = interpreted.paged_attention_decode(*args)
    assert out.dtype == torch.float16 and (out.double() - _reference(*args)).abs().max() < 5e-3


@pytest.mark.parametrize("change, error, match", [
    (lambda a: (a[0].double(), *a[1:]), TypeError, "q must be"),
    (lambda a: (a[0], a[1][..., :8], *a[2:]), ValueError, "k_pool and v_pool"),
    (lambda a: (*a[:3], a[3].long(), a[4]), TypeError, "tables must be int32"),
    (lambda a: (*a[:4], torch.tensor([0, 3], dtype=torch.int32)), ValueError, "lengths must lie"),
    (lambda a: (*a[:4], torch.tensor([99, 3], dtype=torch.int32)), ValueError, "lengths must lie"),
    # a block-table entry a sequence uses must be a block of the pool (−1 silently read the last block)
    (lambda a: (*a[:3], _with_entry(a[3], 0, 1, -1), a[4]), ValueError, r"tables\[0, 1\]=-1 is not a block"),
    (lambda a: (*a[:3], _with_entry(a[3], 1, 0, a[1].shape[0]), a[4]), ValueError,
     r"tables\[1, 0\]=\d+ is not a block of the pool: .* \[0, num_blocks=\d+\)"),
])
def test_paged_decode_rejects_bad_input(change, error, match):
    args = _paged_inputs(2, 4, 2, 16, 4, [5, 3], torch.float32, seed=0)
    with pytest.raises(error, match=match):
        paged_module.paged_attention_decode(*change(args))


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_paged_decode_kernel_on_gpu(dtype):
    s = CUDA_PAGED
    args = _paged_inputs(s.B, s.H, s.H_kv, s.D, s.block_size, CUDA_LENGTHS, dtype, seed=1)
    out = paged_module.paged_attention_decode(*(a.cuda() for a in args))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert (out.cpu().double() - _reference(*args)).abs().max() < tol


def test_call_bytes_follows_the_formula():
    cache, q_o, tables = 2 * 2 * 2 * 16 * 4 * 3 * 8, 2 * 2 * 4 * 16 * 4, 4 * 2 * 3
    assert paged_module.call_bytes(2, 4, 2, 16, 8, 20, 4, "v1") == cache + q_o + tables
    assert paged_module.call_bytes(2, 4, 2, 16, 8, 20, 4, "v2", 3) == cache + q_o + tables + 8 * 2 * 4 * 3 * 18
    with pytest.raises(ValueError, match=r"version='v0'"):
        paged_module.call_bytes(2, 4, 2, 16, 8, 20, 4, "v0")


# --- v2: the sequence split over programs ----------------------------------------------------------------------

def _nan_filled(monkeypatch, module) -> None:
    monkeypatch.setattr(module.torch, "empty", lambda *a, **k: torch.full(a, float("nan"), **k))
    monkeypatch.setattr(module.torch, "empty_like", lambda t: torch.full_like(t, float("nan")))


F32, F16 = torch.float32, torch.float16
# The interpreter's cost grows with programs × blocks × G_PAD·BLOCK_SIZE·D (v1's tl.reduce runs element by
# element), so each case is the smallest shape that reaches its branch; the tables hold one block more than the
# longest sequence needs (`_paged_inputs`), which the split arithmetic below counts.
V2_CASES = [  # B, H, H_kv, D, block_size, lengths, splits, dtype
    (1, 4, 4, 32, 16, [1], None, F32),             # one token, one block; D = 32, G = 1
    (3, 4, 2, 16, 16, [1, 70, 17], 3, F32),        # uneven splits (2, 2, 1 blocks); sequence 0 leaves splits 1
                                                   # and 2 empty
    (2, 6, 2, 16, 16, [64, 9], 1, F16),            # one split = v1's order of operations; a full last block
    (2, 5, 1, 16, 16, [65, 9], None, F16),         # G = 5 query heads per kv head (padded to 16 rows), one kv
                                                   # head; the default splits (2; row 1's second split empty)
    (1, 4, 2, 16, 32, [100], 5, F32),              # as many splits as table entries: one block per split
    (2, 2, 1, 16, 16, [257, 20], 18, F32),         # 18 splits, one block each: the combine's chunks of 16,
]                                                  # row 0's second chunk holds a block, row 1's is all empty


@pytest.mark.parametrize("B, H, H_kv, D, block_size, lengths, splits, dtype", V2_CASES)
def test_v2_under_interpreter_matches_float64_and_v1(interpreted, monkeypatch, B, H, H_kv, D, block_size, lengths,
                                                     splits, dtype):
    args = _paged_inputs(B, H, H_kv, D, block_size, lengths, dtype, seed=B * D + block_size)
    with monkeypatch.context() as patch:
        _nan_filled(patch, interpreted)
        out = interpreted.paged_attention_decode_v2_triton(*args, splits=splits)
    assert out.dtype == dtype and not out.isnan().any(), "the kernels left outputs unwritten"
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert (out.double() - _reference(*args)).abs().max() < tol
    assert (out.double() - interpreted.paged_attention_decode_triton(*args).double()).abs().max() < tol


def test_splits_fill_the_gpu_at_batch_one():
    """A grouped-query layer of Llama-3-8B's shape (8 kv heads) over 2,048 tokens in blocks of 16: ≥ 132 programs at B = 1."""
    S = paged_module.num_splits(1, 8, 2048 // 16)
    assert 8 * S >= 132 and 2048 // 16 / S >= paged_module.MIN_BLOCKS_PER_SPLIT
    assert paged_module.num_splits(32, 8, 128) * 32 * 8 >= 4 * 132
    assert paged_module.num_splits(64, 32, 1) == 1


def test_v2_dispatch_on_the_cpu_is_v1s_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _paged_inputs(2, 4, 2, 16, 16, [5, 20], torch.float32, seed=0)
    assert torch.equal(paged_module.paged_attention_decode_v2(*args), paged_module.paged_attention_decode_torch(*args))


@pytest.mark.parametrize("change, splits, error, match", [
    (lambda a: _paged_inputs(2, 4, 2, 16, 8, [5, 30], torch.float32, seed=0), None, ValueError,
     r"power-of-two block_size >= 16"),
    (lambda a: a, 0, ValueError, r"splits=0 must be an int in \[1, max_blocks=3\]"),
    (lambda a: a, 4, ValueError, r"splits=4 must be an int"),
    (lambda a: (a[0].double(), *a[1:]), None, TypeError, "q must be"),
    (lambda a: (*a[:3], a[3].long(), a[4]), None, TypeError, "tables must be int32"),
])
def test_v2_rejects_bad_input(change, splits, error, match):
    args = _paged_inputs(2, 4, 2, 16, 16, [5, 30], torch.float32, seed=0)
    with pytest.raises(error, match=match):
        paged_module.paged_attention_decode_v2_triton(*change(args), splits=splits)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_v2_on_gpu_matches_float64_and_v1(dtype):
    args = _paged_inputs(5, 32, 8, 128, 16, [1, 16, 17, 200, 2048], dtype, seed=1)
    cuda = [a.cuda() for a in args]
    out = paged_module.paged_attention_decode_v2(*cuda)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert (out.cpu().double() - _reference(*args)).abs().max() < tol
    assert (out - paged_module.paged_attention_decode(*cuda)).abs().max().item() < tol


@pytest.mark.parametrize("version", ["torch", "v1", "v2"])
def test_kernels_read_strided_tables_and_lengths_as_their_values(interpreted, version):
    """A block table and lengths passed as non-contiguous views (a transposed table, every other length) give
    the outputs of their contiguous copies: the kernels index them with unit inner strides."""
    B, H, H_kv, D, block_size, lengths = 3, 4, 2, 16, 16, [20, 9, 7]
    q, k_pool, v_pool, tables, lens = _paged_inputs(B, H, H_kv, D, block_size, lengths, torch.float32, seed=5)
    strided_tables = tables.T.contiguous().T                              # same values, strides (1, B)
    strided_lengths = torch.stack([lens, torch.zeros_like(lens)], 1)[:, 0]  # same values, stride 2
    assert not strided_tables.is_contiguous() and strided_lengths.stride(0) == 2
    decode = {"torch": paged_module.paged_attention_decode_torch, "v1": interpreted.paged_attention_decode,
              "v2": interpreted.paged_attention_decode_v2}[version]
    out = decode(q, k_pool, v_pool, strided_tables, strided_lengths)
    assert torch.equal(out, decode(q, k_pool, v_pool, tables, lens))
    assert (out.double() - _reference(q, k_pool, v_pool, tables, lens)).abs().max() < 1e-5
