"""2:4-sparse linears: the book's compressed storage (`lab.formats.sparse24`) behind an nn.Module, and
PyTorch's own semi-structured tensors for the sparse tensor cores.

`Sparse24Linear` keeps a 2:4-sparse weight compressed (values and 2-bit positions) and multiplies with
the kernel `sparse24_kernel` picks: v2 (`lab.kernels.sparse24.sparse24_matmul_v2`: coalesced vector loads,
each value read once, any M) when the layer's inputs are a multiple of 32, else v1 (`sparse24_matmul`);
`lab.quant.linear.Sparse24Int4Linear` stores the values in int4.
`to_semi_structured_torch` hands the weight to PyTorch, which packs it in NVIDIA's reordered metadata
layout for mma.sp (cuSPARSELt / CUTLASS); `sparse_linear_torch` multiplies with it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lab.core.checks import check_float_dtype, check_int, check_tensor
from lab.formats.sparse24 import compress
from lab.kernels.sparse24 import sparse24_matmul, sparse24_matmul_v2


def to_semi_structured_torch(weight: torch.Tensor) -> torch.Tensor:
    """2:4-sparse CUDA weight (out, in), fp16/bf16 → `torch.sparse.SparseSemiStructuredTensor`.

    The speed path: PyTorch packs values + its own (reordered) metadata for cuSPARSELt / CUTLASS
    sparse tensor cores. Raises ValueError on CPU tensors or a weight that is not 2:4 sparse.
    """
    if check_tensor("weight", weight, 2).device.type != "cuda":
        raise ValueError(f"to_semi_structured_torch needs a CUDA tensor (sparse tensor cores), got "
                         f"device={weight.device}; use compress/decompress on the CPU")
    compress(weight, 2, 4)  # validates the 2:4 pattern with a clear error
    return torch.sparse.to_sparse_semi_structured(weight)


def sparse_linear_torch(x: torch.Tensor, w_sparse: torch.Tensor) -> torch.Tensor:
    """y = x Wᵀ for x (..., in) and W from `to_semi_structured_torch` (out, in); y (..., out)."""
    if not isinstance(w_sparse, torch.sparse.SparseSemiStructuredTensor):
        raise TypeError(f"w_sparse must come from to_semi_structured_torch, got {type(w_sparse).__name__}")
    return torch.nn.functional.linear(x, w_sparse)


def sparse24_kernel(in_features: int) -> Callable[..., torch.Tensor]:
    """The kernel a `Sparse24Linear` of ``in_features`` inputs launches, at every M: v2 when in_features is a
    multiple of 32 (it reads the metadata as 32-bit words of 8 groups), else v1. Each dispatches: Triton on
    CUDA tensors or under TRITON_INTERPRET=1, else the PyTorch path."""
    check_int("in_features", in_features)
    return sparse24_matmul_v2 if in_features % 32 == 0 else sparse24_matmul


class Sparse24Linear(torch.nn.Module):
    """y = x Ŵᵀ (+ b) for a 2:4-sparse Ŵ (out, in) held compressed: ``meta`` (out, in/8) uint8 and
    the kept values (out, in/2) in ``dtype``, by the kernel of `sparse24_kernel` (Triton on a GPU,
    decompress + matmul on the CPU).
    """

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        check_float_dtype("dtype", dtype)                 # before any work; an int dtype would truncate
        self.out_features, self.in_features = linear.out_features, linear.in_features
        values, meta = compress(linear.weight.detach().float())          # 2:4 check, named errors
        self.register_buffer("meta", meta)
        self.store_values(values, dtype)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(),
                                                                        requires_grad=False)

    def store_values(self, values: torch.Tensor, dtype: torch.dtype) -> None:
        """Keep the kept values (out, in/2) float32 as the buffer ``values`` in ``dtype``."""
        self.register_buffer("values", values.to(dtype))

    def kept_values(self) -> torch.Tensor:
        """The kept values (out, in/2) the matmul multiplies with."""
        return self.values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not check_tensor("x", x).is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must have shape (..., in_features={self.in_features}), got {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        y = sparse24_kernel(self.in_features)(x2, self.kept_values().to(x.dtype), self.meta, self.out_features,
                                              self.in_features)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)
