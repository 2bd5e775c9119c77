"""lab.parallel.tensor_parallel on 2 gloo processes against the unsplit layers and lab GPT (outputs and
gradients) and the all-reduce traffic it implies; `job_model_parallel` (also the pipeline's) runs in conftest's launch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lab.parallel.comm import CommCounter
from lab.parallel.pipeline import PipelineSchedule, gpt_stage
from lab.parallel.strategies import lm_loss
from lab.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel_gpt
from tests.parallel.test_strategies import CFG, B, N, T, batch, fresh_gpt, grads_by_name

# ---------------------------------------------------------------------------------------------
# tensor parallel (job_model_parallel also runs the pipeline that test_pipeline checks)
# ---------------------------------------------------------------------------------------------

def job_model_parallel() -> dict:
    rank = dist.get_rank()
    x, y = batch()
    out = {}
    # ColumnParallelLinear then RowParallelLinear on a plain MLP-like pair, with biases
    torch.manual_seed(3)
    lin1, lin2 = nn.Linear(6, 8), nn.Linear(8, 5)
    col, row = ColumnParallelLinear(lin1), RowParallelLinear(lin2)
    inp = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)
    y_par = row(torch.relu(col(inp)))
    y_par.sum().backward()
    out["linear"] = (y_par.detach(), inp.grad.clone(), col.weight.grad.clone(), row.weight.grad.clone(),
                     col.bias.grad.clone(), row.bias.grad.clone())
    # tensor-parallel GPT
    tp = tensor_parallel_gpt(fresh_gpt())
    with CommCounter() as fwd:
        logits = tp(x)
    loss = lm_loss(logits, y)
    with CommCounter() as bwd:
        loss.backward()
    out["tp_logits"], out["tp_grads"] = logits.detach(), grads_by_name(tp)
    out["tp_comm"] = (fwd.summary(), bwd.summary())
    # pipeline, both schedules
    for schedule in ("gpipe", "1f1b"):
        stage = gpt_stage(fresh_gpt())
        pipe = PipelineSchedule(stage, 2, schedule, (B // 2, T, CFG.d_model), loss_fn=lm_loss)
        with CommCounter() as counter:
            loss = pipe.run(x if rank == 0 else None, y if rank == N - 1 else None)
        out[schedule] = {"loss": loss, "grads": grads_by_name(stage), "comm": counter.summary(),
                         "order": [(e["kind"], e["micro"]) for e in pipe.events]}
    return out


def test_column_and_row_parallel_linears_equal_the_unsplit_layers(mp_results):
    torch.manual_seed(3)
    lin1, lin2 = nn.Linear(6, 8), nn.Linear(8, 5)
    inp = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)
    y = lin2(torch.relu(lin1(inp)))
    y.sum().backward()
    for r, rank_out in enumerate(mp_results):
        y_par, g_in, g_col, g_row, g_cb, g_rb = rank_out["linear"]
        torch.testing.assert_close(y_par, y.detach())
        torch.testing.assert_close(g_in, inp.grad)
        torch.testing.assert_close(g_col, lin1.weight.grad[4 * r: 4 * (r + 1)])
        torch.testing.assert_close(g_row, lin2.weight.grad[:, 4 * r: 4 * (r + 1)])
        torch.testing.assert_close(g_cb, lin1.bias.grad[4 * r: 4 * (r + 1)])
        torch.testing.assert_close(g_rb, lin2.bias.grad)


def _shard(name: str, full: torch.Tensor, r: int) -> torch.Tensor:
    """Rank r's slice of an unsplit gradient, following the tensor-parallel layout."""
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
        return full.chunk(N, 0)[r]
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return full.chunk(N, 1)[r]
    return full


def test_tensor_parallel_gpt_outputs_and_gradients_equal_the_unsplit_model(mp_results):
    model = fresh_gpt()
    x, y = batch()
    logits = model(x)
    lm_loss(logits, y).backward()
    full = {n.replace("attn_norm.", "attn_norm.0.").replace("mlp_norm.", "mlp_norm.0."): g
            for n, g in grads_by_name(model).items()}
    for r, rank_out in enumerate(mp_results):
        torch.testing.assert_close(rank_out["tp_logits"], logits.detach(), rtol=1e-5, atol=1e-5)
        assert rank_out["tp_grads"].keys() == full.keys()
        for name, g in rank_out["tp_grads"].items():
            torch.testing.assert_close(g, _shard(name, full[name], r), rtol=1e-5, atol=1e-6, msg=name)


def test_tensor_parallel_traffic_is_two_all_reduces_per_layer_each_way(mp_results):
    fwd, bwd = mp_results[0]["tp_comm"]
    act_bytes = B * T * CFG.d_model * 4
    for summary in (fwd, bwd):
        assert set(summary["ops"]) == {"all_reduce"}
        assert summary["ops"]["all_reduce"]["calls"] == 2 * CFG.n_layer
        assert summary["payload_bytes"] == 2 * CFG.n_layer * act_bytes
        assert summary["sent_bytes"] == pytest.approx(2 * (N - 1) / N * 2 * CFG.n_layer * act_bytes)
