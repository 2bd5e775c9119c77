"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): split each linear layer over N ranks.

A linear layer y = x Wᵀ with W of shape (d_out, d_in) splits two ways:

* column-parallel: rank r holds the rows W_r = W[r·d_out/N:(r+1)·d_out/N] and computes its
  slice of the output, y_r = x W_rᵀ. The input x must be the same on every rank.
* row-parallel: rank r holds the columns W[:, r·d_in/N:(r+1)·d_in/N] and the matching slice
  x_r of the input, and computes a partial sum; y = Σ_r x_r W_rᵀ needs an all-reduce.

Two conjugate operators carry the communication (Megatron's f and g):
``copy_to_tensor_parallel`` (f) is the identity forward and an all-reduce of the gradient
backward (the input feeds every rank's slice, so its gradient is the sum of the slices');
``reduce_from_tensor_parallel`` (g) is an all-reduce forward and the identity backward.

In a transformer block, attention (query/key/value projections column-parallel by heads,
output projection row-parallel) and the MLP (gate/up column-parallel, down row-parallel)
each need one f and one g: two all-reduces of the (B, T, C) activations per layer forward,
two backward. Norms, the embedding and the LM head are replicated; their gradients come out
identical on every rank, because every tensor they touch is either replicated or all-reduced.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lab.core.checks import check_group, check_tensor
from lab.models.gpt import GPT, Block, check_gpt
from lab.parallel import comm


class _CopyToTP(torch.autograd.Function):
    """f: identity forward, all-reduce of the gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        comm.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """g: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        comm.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tensor_parallel(x: torch.Tensor, group=None) -> torch.Tensor:
    return _CopyToTP.apply(x, group)


def reduce_from_tensor_parallel(x: torch.Tensor, group=None) -> torch.Tensor:
    return _ReduceFromTP.apply(x, group)


class CopyToTensorParallel(nn.Module):
    """f as a module, to place after a replicated layer (a norm) that feeds column-parallel ones."""

    def __init__(self, group=None) -> None:
        super().__init__()
        self.group = check_group("group", group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return copy_to_tensor_parallel(x, self.group)


def _check_linear(linear) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")


def _check_input(x: torch.Tensor, in_features: int) -> None:
    """x must be (…, in_features); for a row-parallel layer that is this rank's slice of the input."""
    if check_tensor("x", x).dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"x has shape {tuple(x.shape)}; this rank's layer takes (…, in_features={in_features})")


def _shard_rows(t: torch.Tensor, name: str, group) -> torch.Tensor:
    n, r = dist.get_world_size(group), dist.get_rank(group)
    if t.shape[0] % n:
        raise ValueError(f"{name}={t.shape[0]} is not divisible by the tensor-parallel world size {n}")
    size = t.shape[0] // n
    return t[r * size: (r + 1) * size].detach().clone()


class ColumnParallelLinear(nn.Module):
    """Rank r's output slice of ``linear``: x (…, d_in) → y_r (…, d_out/N), W_r = W[r-th block of rows].

    ``copy_input=True`` applies f to x first. Several column-parallel layers reading the same
    input (q, k, v; gate, up) should share one f placed before them (`CopyToTensorParallel`)
    and set ``copy_input=False``, so the input gradient is all-reduced once, not once per layer.
    Raises ValueError if d_out is not divisible by N.
    """

    def __init__(self, linear: nn.Linear, copy_input: bool = True, group=None) -> None:
        super().__init__()
        _check_linear(linear)
        if not isinstance(copy_input, bool):
            raise TypeError(f"copy_input must be True or False, got {copy_input!r}")
        self.group, self.copy_input = check_group("group", group), copy_input
        self.in_features = linear.in_features
        self.weight = nn.Parameter(_shard_rows(linear.weight, "out_features", group))
        self.out_features = self.weight.shape[0]
        self.bias = None if linear.bias is None else nn.Parameter(_shard_rows(linear.bias, "out_features", group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features)
        if self.copy_input:
            x = copy_to_tensor_parallel(x, self.group)
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """x_r (…, d_in/N) → y = Σ_r x_r W_rᵀ + b (…, d_out), W_r = W[:, r-th block of columns].

    The bias is replicated and added once, after the all-reduce (g).
    Raises ValueError if d_in is not divisible by N.
    """

    def __init__(self, linear: nn.Linear, group=None) -> None:
        super().__init__()
        _check_linear(linear)
        self.group = check_group("group", group)
        self.out_features = linear.out_features
        self.weight = nn.Parameter(_shard_rows(linear.weight.T, "in_features", group).T.contiguous())
        self.in_features = self.weight.shape[1]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features)
        y = reduce_from_tensor_parallel(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


def tensor_parallel_block(block: Block, group=None) -> Block:
    """A copy of a lab GPT ``Block`` holding rank r's heads and MLP channels.

    Query heads [r·H/N, (r+1)·H/N) and key/value heads [r·H_kv/N, (r+1)·H_kv/N) (the groups of
    grouped-query attention stay together), MLP channels [r·F/N, (r+1)·F/N). The block's own
    ``forward`` runs unchanged: ``Attention`` reads its local head counts from the layer widths.
    Raises ValueError if N does not divide H, H_kv or F.
    """
    if not isinstance(block, Block):
        raise TypeError(f"block must be a lab GPT Block, got {type(block).__name__}")
    n = dist.get_world_size(check_group("group", group))
    cfg = block.attn.cfg
    for name, value in (("n_head", cfg.n_head), ("n_kv_head", cfg.n_kv_head), ("d_ff", cfg.d_ff)):
        if value % n:
            raise ValueError(f"{name}={value} is not divisible by the tensor-parallel world size {n}")
    tp = copy.deepcopy(block)
    tp.attn_norm = nn.Sequential(tp.attn_norm, CopyToTensorParallel(group))
    tp.mlp_norm = nn.Sequential(tp.mlp_norm, CopyToTensorParallel(group))
    for parent, names in ((tp.attn, ("q_proj", "k_proj", "v_proj")), (tp.mlp, ("gate_proj", "up_proj"))):
        for name in names:
            setattr(parent, name, ColumnParallelLinear(getattr(parent, name), copy_input=False, group=group))
    tp.attn.o_proj = RowParallelLinear(tp.attn.o_proj, group)
    tp.mlp.down_proj = RowParallelLinear(tp.mlp.down_proj, group)
    return tp


def tensor_parallel_gpt(model: GPT, group=None) -> GPT:
    """A copy of ``model`` whose blocks are `tensor_parallel_block`s; embedding and head replicated."""
    check_gpt("model", model)
    check_group("group", group)
    tp = copy.deepcopy(model)
    tp.layers = nn.ModuleList(tensor_parallel_block(b, group) for b in model.layers)
    return tp
