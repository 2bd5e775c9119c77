"""A 2-D mesh of ranks, and data parallelism composed with tensor or with pipeline parallelism on it.

N = N_o · N_i ranks form a grid of N_o rows of N_i consecutive ranks:

    rank r = o·N_i + i          inner index i = r mod N_i,  outer index o = ⌊r / N_i⌋

The inner group of row o is {o·N_i + i : 0 ≤ i < N_i} (consecutive ranks), the outer group of column i is
{o·N_i + i : 0 ≤ o < N_o} (stride N_i). Megatron-LM and picotron order the axes tensor (innermost: the GPUs
of one node, joined by NVLink), then pipeline, then data (outermost). Here the inner axis is the tensor or
the pipeline axis, the outer one the data axis: for N_t = 2, N_d = 2 the tensor-parallel groups are {0, 1}
and {2, 3}, the data-parallel groups {0, 2} and {1, 3}.

`torch.distributed.new_group` is a collective of the whole world: every rank creates every group, in the
same order, member or not, and keeps those it belongs to. (torch names a group by the number of groups created
before it, and the name prefixes its gloo rendezvous keys: rank sets created at the same count by different
ranks would share a name and cross their connections. `gpt_stage` creates its tied-embedding group on its own
pipeline's ranks only, so it cannot cut a model on a pipeline subgroup of a larger world;
`pipeline_data_parallel_stage` creates every pipeline's.)

tp × dp (`tensor_data_parallel_gpt`): rank (o, i) holds shard i of every layer (`tensor_parallel_gpt` on its
inner group) and trains replica o of that shard on rows [o·B/N_d, (o+1)·B/N_d) of the batch; `DataParallel`
on its outer group averages each shard's gradient over its N_d replicas.

pp × dp (`pipeline_data_parallel_stage`): rank (o, i) holds stage i, layers [Σ_{j<i} ℓ_j, Σ_{j≤i} ℓ_j), of
replica o. A step's m micro-batches accumulate under `DataParallel.no_sync` (the schedule runs every backward
itself), then `DataParallel.reduce_gradients` averages over the replicas once. The two copies of a tied
embedding / LM-head weight (first and last stage of a pipeline) sum their gradients over a group of their own.

Bytes a rank sends per step (ring algorithms; σ bytes per element, B_d = B/N_d rows per replica, ℓ layers on
the rank, Ψ_local its parameters; `lab.parallel.formulas.mesh_traffic`):

    tp all-reduces    2(N_t−1)/N_t · 4·ℓ·B_d·T·C·σ          2 forward and 2 backward per layer
    pp sends          b · B_d·T·C·σ                         b stage boundaries: activations on, gradients back
                      + V·C·σ on the first and last stage   the tied weight's all-reduce over 2 ranks
    dp all-reduce     2(N_d−1)/N_d · σ·Ψ_local              Ψ_local ≈ Ψ/(N_t·N_p)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from lab.core.checks import check_int, check_number
from lab.models.gpt import GPT, check_gpt
from lab.parallel.ddp import DataParallel
from lab.parallel.pipeline import GPTStage, layer_split
from lab.parallel.tensor_parallel import tensor_parallel_gpt


def mesh_ranks(outer: int, inner: int) -> tuple[list[list[int]], list[list[int]]]:
    """The inner groups (row o: ranks o·N_i … o·N_i + N_i − 1) and the outer groups (column i: i, i + N_i, …)."""
    check_int("outer", outer)
    check_int("inner", inner)
    rows = [[o * inner + i for i in range(inner)] for o in range(outer)]
    return rows, [list(column) for column in zip(*rows)]


@dataclass(frozen=True)
class Mesh:
    """This rank's place (o, i) in an N_o × N_i grid and its two process groups (made by `build_mesh`)."""

    outer: int                          # N_o: the data-parallel size N_d
    inner: int                          # N_i: the tensor- or pipeline-parallel size N_t or N_p
    outer_rank: int                     # o: which replica
    inner_rank: int                     # i: which shard or stage
    inner_group: dist.ProcessGroup      # row o, N_i consecutive ranks
    outer_group: dist.ProcessGroup      # column i, N_o ranks N_i apart


def build_mesh(outer: int, inner: int) -> Mesh:
    """Every group of the ``outer`` × ``inner`` grid, created on every rank in one order (a collective of
    the N = outer·inner ranks of the default group); returns this rank's `Mesh`."""
    rows, columns = mesh_ranks(outer, inner)
    n = dist.get_world_size()
    if outer * inner != n:
        raise ValueError(f"outer={outer} times inner={inner} must equal the world size {n}")
    groups = [dist.new_group(ranks) for ranks in rows + columns]
    o, i = divmod(dist.get_rank(), inner)
    return Mesh(outer, inner, o, i, groups[o], groups[outer + i])


def _check_args(model: GPT, mesh: Mesh, bucket_cap_mb: float) -> None:
    check_gpt("model", model)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a Mesh (lab.parallel.mesh.build_mesh), got {mesh!r:.80} "
                        f"({type(mesh).__name__})")
    check_number("bucket_cap_mb", bucket_cap_mb, low=0, closed=(False, True))


def tensor_data_parallel_gpt(model: GPT, mesh: Mesh, bucket_cap_mb: float = 25.0) -> DataParallel:
    """tp × dp: shard i of ``model`` (`tensor_parallel_gpt` on the inner group) in `DataParallel` on the outer
    group. Input ids (B_d, T) int64, output logits (B_d, T, V); parameters of ``model``'s dtype."""
    _check_args(model, mesh, bucket_cap_mb)
    return DataParallel(tensor_parallel_gpt(model, mesh.inner_group), bucket_cap_mb, mesh.outer_group)


def pipeline_data_parallel_stage(model: GPT, mesh: Mesh, bucket_cap_mb: float = 25.0) -> DataParallel:
    """pp × dp: stage i of ``model`` (N_p = N_i stages of L/N_p layers, as `gpt_stage`) in `DataParallel` on the
    outer group. A collective: with tied embeddings every rank creates every pipeline's end-to-end group.
    Run its ``module`` in a `PipelineSchedule` on the inner group under ``no_sync``, then ``reduce_gradients``."""
    _check_args(model, mesh, bucket_cap_mb)
    p, s = mesh.inner, mesh.inner_rank
    split = layer_split(model.config.n_layer, p)
    tied = None
    if model.config.tie_embeddings and p > 1:
        ends = [dist.new_group([ranks[0], ranks[-1]]) for ranks in mesh_ranks(mesh.outer, p)[0]]
        tied = ends[mesh.outer_rank] if s in (0, p - 1) else None
    first = sum(split[:s])
    stage = GPTStage(model, first, first + split[s], s == 0, s == p - 1, tied)
    return DataParallel(stage, bucket_cap_mb, mesh.outer_group)
