"""N:M semi-structured storage: compress a pruned weight into values + index metadata, and back.

A weight W of shape (out, in) is N:M sparse when every group of m consecutive input weights
W[r, g·m : (g+1)·m] has at most n nonzeros (2:4 is what sparse tensor cores accelerate).
`compress` keeps n entries per group:

* ``values`` (out, in·n/m), W's dtype: the kept entries of group g in slots g·n … g·n+n−1, in
  increasing position order (a group with fewer than n nonzeros also keeps some zeros).
* ``meta`` (out, ⌈in/m · n · b / 8⌉) uint8: the position p ∈ {0 … m−1} of each kept value
  within its group, b = max(1, ⌈log₂ m⌉) bits per index, packed LSB-first per row: index
  j = g·n + s (group g, slot s) occupies bits [j·b, (j+1)·b) of the row's bit string, and bit t
  of that string is bit (t mod 8) of byte ⌊t/8⌋. Each row starts on a fresh byte.

For 2:4 (b = 2): 4 bits per group, two groups per byte. Byte k of a row holds group 2k in its
low nibble and group 2k+1 in its high nibble; within a nibble, bits 0-1 are the first kept
position and bits 2-3 the second. So ``meta`` is (out, in/8) and the row stores
values: in/2 elements + meta: in/8 bytes, i.e. (n/m)·dense bytes + in·n/m·b bits.

NVIDIA's sparse tensor cores (mma.sp, cuSPARSELt, the CUTLASS path of
`torch.sparse.to_sparse_semi_structured`) use the same 2 bits per kept value — 4 bits per
group — but NOT this layout: their metadata is interleaved/reordered so that each thread of
a warp-level mma.sp tile finds its indices in one 16- or 32-bit register (rows of a tile are
interleaved and the words permuted, and the exact order depends on the dtype and backend).
This module's row-major layout is chosen to be readable and to be decoded by
`lab.kernels.sparse24`; it cannot be handed to those libraries as is. For the tensor-core
speed path use `lab.prune.semi_structured.to_semi_structured_torch`, which lets PyTorch build
its own.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_divisor, check_float_dtype, check_int, check_tensor

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_nm(n: int, m: int, in_features: int | None = None) -> None:
    """n, m are ints with 1 <= n <= m, and m divides ``in_features`` when it is given."""
    check_int("n", n)
    check_int("m", m)
    if n > m:
        raise ValueError(f"n={n}, m={m} is not allowed; N:M sparsity needs n <= m")
    if in_features is not None:
        check_divisor("m", m, in_features, "in_features")


def index_bits(m: int) -> int:
    """Bits b = max(1, ⌈log₂ m⌉) needed to store one position 0 … m−1."""
    check_int("m", m)
    return max(1, (m - 1).bit_length())


def meta_shape(out_features: int, in_features: int, n: int = 2, m: int = 4) -> tuple[int, int]:
    """Shape (out, ⌈in/m · n · b / 8⌉) of the uint8 metadata; (out, in/8) for 2:4 with 8 | in."""
    check_int("out_features", out_features, 0)
    check_nm(n, m, check_int("in_features", in_features))
    return out_features, -(-(in_features // m) * n * index_bits(m) // 8)


def compressed_nbytes(out_features: int, in_features: int, dtype: torch.dtype,
                      n: int = 2, m: int = 4) -> dict[str, int]:
    """Bytes of the dense weight, of ``values`` (= n/m of dense) and of ``meta``, and their sum."""
    elem = torch.empty((), dtype=check_float_dtype("dtype", dtype)).element_size()
    dense = out_features * in_features * elem
    values = out_features * (in_features // m) * n * elem
    rows, cols = meta_shape(out_features, in_features, n, m)
    return {"dense": dense, "values": values, "meta": rows * cols, "compressed": values + rows * cols}


def pack_bits(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """Indices (out, L) int64 < 2^bits → (out, ⌈L·bits/8⌉) uint8, LSB-first per row."""
    out_features, length = check_tensor("idx", idx, 2, INT_DTYPES).shape
    check_int("bits", bits, 1, 32)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= 1 << bits):   # else cut to their low bits
        raise ValueError(f"idx must hold values in [0, 2^bits = {1 << bits}), got [{int(idx.min())}, {int(idx.max())}]")
    weights = 1 << torch.arange(bits, device=idx.device)
    stream = ((idx.unsqueeze(-1) & weights) != 0).reshape(out_features, length * bits).to(torch.int64)
    stream = torch.nn.functional.pad(stream, (0, -stream.shape[1] % 8))
    return (stream.view(out_features, -1, 8) << torch.arange(8, device=idx.device)).sum(-1).to(torch.uint8)


def unpack_bits(meta: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of `pack_bits`: (out, bytes) uint8 → (out, length) int64."""
    check_tensor("meta", meta, 2, (torch.uint8,))
    if check_int("length", length, 0) * check_int("bits", bits, 1, 32) > 8 * meta.shape[1]:
        raise ValueError(f"length={length} indices of bits={bits} need {length * bits} bits; meta's rows hold "
                         f"{8 * meta.shape[1]}")
    stream = (meta.to(torch.int64).unsqueeze(-1) >> torch.arange(8, device=meta.device)) & 1
    stream = stream.reshape(meta.shape[0], -1)[:, : length * bits].view(meta.shape[0], length, bits)
    return (stream << torch.arange(bits, device=meta.device)).sum(-1)


def compress(weight: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """N:M-sparse weight (out, in) → (values (out, in·n/m) weight.dtype, meta uint8).

    See the module docstring for the layout. Raises ValueError if ``weight`` is not 2-D, m does
    not divide ``in``, or a group holds more than n nonzeros (naming the first such row/group).
    """
    check_tensor("weight", weight, 2)
    out_features, in_features = weight.shape
    check_nm(n, m, in_features)
    groups = weight.reshape(out_features, in_features // m, m)
    nonzero = groups != 0
    too_many = nonzero.sum(-1) > n
    if too_many.any():
        row, group = (int(i) for i in too_many.nonzero()[0])
        raise ValueError(f"weight is not {n}:{m} sparse: row {row}, group {group} (inputs "
                         f"{group * m}..{group * m + m - 1}) has {int(nonzero[row, group].sum())} "
                         f"nonzeros > n={n}")
    # nonzeros first (stable: in position order), padded with zero positions, then sorted
    order = torch.argsort((~nonzero).to(torch.int8), dim=-1, stable=True)[..., :n]
    idx = order.sort(dim=-1).values                                          # (out, G, n)
    values = groups.gather(-1, idx).reshape(out_features, -1)
    return values.contiguous(), pack_bits(idx.reshape(out_features, -1), index_bits(m))


def decompress(values: torch.Tensor, meta: torch.Tensor, in_features: int,
               n: int = 2, m: int = 4) -> torch.Tensor:
    """(values, meta) of `compress` → the dense weight (out, in_features) in values.dtype.

    W[r, g·m + p_{g,s}] = values[r, g·n + s], every other entry 0. Raises ValueError on
    inconsistent shapes/dtypes or metadata whose positions are ≥ m or not increasing in a group.
    """
    check_nm(n, m)
    check_int("in_features", in_features)
    check_tensor("values", values)
    check_tensor("meta", meta)
    if in_features % m:
        raise ValueError(f"in_features={in_features} is not allowed; use a multiple of m={m}")
    if values.dim() != 2 or values.shape[1] != in_features // m * n:
        raise ValueError(f"values must have shape (out, {in_features // m * n}) for in_features="
                         f"{in_features}, {n}:{m}; got {tuple(values.shape)}")
    expected = meta_shape(values.shape[0], in_features, n, m)
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must be uint8 (its 2-bit positions packed), got {meta.dtype}")
    if tuple(meta.shape) != expected:
        raise ValueError(f"meta must have shape {expected}, got {tuple(meta.shape)}")
    out_features, groups = values.shape[0], in_features // m
    idx = unpack_bits(meta, index_bits(m), groups * n).view(out_features, groups, n)
    if (idx >= m).any() or (idx.diff(dim=-1) <= 0).any():
        raise ValueError(f"meta holds positions outside 0..{m - 1} or not increasing within a group")
    dense = values.new_zeros(out_features, groups, m)
    dense.scatter_(-1, idx, values.reshape(out_features, groups, n))
    return dense.view(out_features, in_features)
