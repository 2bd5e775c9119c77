"""lab.parallel.mesh on 4 gloo processes (one launch for the module): the groups of a 2 × 2 grid; tp × dp and
pp × dp trained through `lab.parallel.strategies.train` against one-process training of the same model on the same
global batch (float64); the bytes each rank sends per step, by process group, against `formulas.mesh_traffic` (the
terms `parallel_plan` composes) and the payload against `experiments.traffic_formula`, exactly.

The parameters agree to float64 round-off. The logged losses only to fp32 rounding: `lm_loss` computes the
cross-entropy in fp32 even for a float64 model, and the mean over the ranks is taken in fp32.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lab.parallel.comm import CommCounter
from lab.parallel.experiments import local_param_count, traffic_formula
from lab.parallel.formulas import mesh_traffic
from lab.parallel.launch import launch
from lab.parallel.mesh import build_mesh, mesh_ranks, tensor_data_parallel_gpt
from lab.parallel.strategies import MESHED, lm_loss, train
from tests.parallel.test_strategies import CFG, TOKENS, B, T, batch, fresh_gpt
from tests.parallel.test_tensor_parallel import _shard

WORLD, INNER, STEPS, N_MICRO = 4, 2, 3, 2
REPLICAS = WORLD // INNER                                  # N_d
SIGMA = 8                                                  # float64 bytes per element


def job_mesh(steps: int) -> dict:
    """On each of the 4 ranks: its mesh coordinates and groups, both 2-D strategies trained in float64, and one
    tp × dp step under ``no_sync`` (its tensor-parallel all-reduces alone)."""
    torch.set_default_dtype(torch.float64)
    mesh = build_mesh(REPLICAS, INNER)
    out = {"mesh": (mesh.outer_rank, mesh.inner_rank, dist.get_process_group_ranks(mesh.inner_group),
                    dist.get_process_group_ranks(mesh.outer_group))}
    for strategy in MESHED:
        record = train(strategy, CFG, TOKENS, steps, B, T, lr=1e-2, n_micro=N_MICRO, return_state=True)
        out[strategy] = {k: record[k] for k in ("loss", "comm", "state")}
    model = tensor_data_parallel_gpt(fresh_gpt(), mesh)
    x, y = batch()
    rows = slice(mesh.outer_rank * B // REPLICAS, (mesh.outer_rank + 1) * B // REPLICAS)
    with CommCounter() as tp_only, model.no_sync():
        lm_loss(model(x[rows]), y[rows]).backward()
    out["tp_only"] = tp_only.summary()
    return out


@pytest.fixture(scope="module")
def mesh_results() -> list[dict]:
    return launch(job_mesh, WORLD, STEPS, timeout=60)


@pytest.fixture(scope="module")
def single() -> dict:
    """One process, float64: the loss per step and the parameters after the last step."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return train("single", CFG, TOKENS, STEPS, B, T, lr=1e-2, return_state=True)
    finally:
        torch.set_default_dtype(default)


def test_mesh_ranks_put_the_inner_axis_on_consecutive_ranks():
    assert mesh_ranks(2, 2) == ([[0, 1], [2, 3]], [[0, 2], [1, 3]])         # tp {0,1},{2,3}; dp {0,2},{1,3}
    assert mesh_ranks(2, 4) == ([[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 4], [1, 5], [2, 6], [3, 7]])
    assert mesh_ranks(1, 3) == ([[0, 1, 2]], [[0], [1], [2]])


def test_every_rank_holds_its_row_and_column_groups(mesh_results):
    rows, columns = mesh_ranks(REPLICAS, INNER)
    for r, out in enumerate(mesh_results):
        o, i, inner, outer = out["mesh"]
        assert (o, i) == divmod(r, INNER) and inner == rows[o] and outer == columns[i]


def _full_name(strategy: str, name: str, i: int) -> str:
    """The one-process GPT's name of rank i's parameter ``name`` (inside DataParallel: ``module.``)."""
    name = name.removeprefix("module.")
    if strategy == "tp×dp":
        return name.replace("_norm.0.", "_norm.")
    if name.startswith("layers."):                           # stage-local layer index → global index
        j, rest = name.split(".", 2)[1:]
        name = f"layers.{int(j) + i * CFG.n_layer // INNER}.{rest}"
    return name.replace("lm_head.", "embed_tokens.")         # the last stage's copy of the tied weight


@pytest.mark.parametrize("strategy", MESHED)
def test_2d_strategies_train_like_one_process(mesh_results, single, strategy):
    """Every rank's parameters after 3 AdamW steps equal one-process training to float64 round-off (≤ 1e-13; the
    steps moved them by up to 1e-2), replicas bit for bit; the loss per step, the global-batch mean on every rank,
    to fp32 rounding (< 1e-6, about 2 units in the last place of an fp32 loss near 4)."""
    for r, out in enumerate(mesh_results):
        assert out[strategy]["loss"] == mesh_results[0][strategy]["loss"]
        state, i = out[strategy]["state"], r % INNER
        assert len(state) > 0 and all(t.dtype == torch.float64 for t in state.values())
        for name, p in state.items():
            full = single["state"][_full_name(strategy, name, i)]
            torch.testing.assert_close(p, _shard(name, full, i) if strategy == "tp×dp" else full, rtol=0, atol=1e-13,
                                       msg=f"{strategy} rank {r} {name}")
        if r >= INNER:                                        # replica 1 holds what replica 0 holds, bit for bit
            assert all(torch.equal(p, mesh_results[r - INNER][strategy]["state"][n]) for n, p in state.items())
    assert max(abs(a - b) for a, b in zip(mesh_results[0][strategy]["loss"], single["loss"])) < 1e-6
    assert abs(single["loss"][-1] - single["loss"][0]) > 1e-3


@pytest.mark.parametrize("strategy", MESHED)
def test_local_param_count_is_what_each_rank_holds(mesh_results, strategy):
    for r, out in enumerate(mesh_results):
        held = sum(p.numel() for p in out[strategy]["state"].values())
        assert held == local_param_count(strategy, CFG, INNER, r % INNER)


def _per_step(summary: dict, op: str, key: str = "sent_bytes") -> float:
    return summary["ops"][op][key] / STEPS


def test_tp_dp_bytes_per_group_equal_the_plan_formula(mesh_results):
    """tp all-reduces (counted alone in a step under no_sync) and the dp all-reduce of the rank's shard:
    `mesh_traffic` with N_t = 2, N_p = 1, N_d = 2, m = 1 micro-batch of B/N_d rows, σ = 8."""
    for r, out in enumerate(mesh_results):
        psi = local_param_count("tp×dp", CFG, INNER, r % INNER)
        want = mesh_traffic(psi, INNER, 1, REPLICAS, 0, CFG.n_layer, B // REPLICAS, 1, T, CFG.d_model, SIGMA)
        assert out["tp_only"]["ops"]["all_reduce"]["calls"] == 4 * CFG.n_layer
        assert out["tp_only"]["sent_bytes"] == want["tp"] and want["pp"] == 0
        comm = out["tp×dp"]["comm"]
        assert set(comm["ops"]) == {"all_reduce"}
        assert _per_step(comm, "all_reduce") == want["tp"] + want["dp"]
        assert comm["payload_bytes"] / STEPS == SIGMA / 4 * traffic_formula("tp×dp", CFG, WORLD, B, T, r, INNER)


def test_pp_dp_bytes_per_group_equal_the_plan_formula(mesh_results):
    """pp sends (activations on, gradients back: one boundary per stage of 2, m = 2 micro-batches of 1 row) and the
    all-reduces: the dp one of the stage's Ψ_local plus the tied embedding's V·C between the two stages."""
    for r, out in enumerate(mesh_results):
        i = r % INNER
        psi = local_param_count("pp×dp", CFG, INNER, i)
        want = mesh_traffic(psi, 1, INNER, REPLICAS, i, CFG.n_layer // INNER, B // REPLICAS // N_MICRO, N_MICRO, T,
                            CFG.d_model, SIGMA)
        comm = out["pp×dp"]["comm"]
        assert set(comm["ops"]) == {"send", "recv", "all_reduce"} and want["tp"] == 0
        assert _per_step(comm, "send") == want["pp"] and _per_step(comm, "recv") == 0
        assert _per_step(comm, "send", "payload_bytes") == _per_step(comm, "recv", "payload_bytes")
        assert _per_step(comm, "all_reduce") == want["dp"] + CFG.vocab_size * CFG.d_model * SIGMA
        assert comm["payload_bytes"] / STEPS == SIGMA / 4 * traffic_formula("pp×dp", CFG, WORLD, B, T, r, INNER)
