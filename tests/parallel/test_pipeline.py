"""lab.parallel.pipeline (GPipe and 1F1B) on 2 gloo processes against the unsplit lab GPT (loss and gradients),
the activation traffic and the schedules' order; the processes run `job_model_parallel` of test_tensor_parallel."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lab.parallel.pipeline import gpt_stage
from lab.parallel.strategies import lm_loss
from tests.parallel.test_strategies import CFG, B, N, T, batch, fresh_gpt, grads_by_name


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_loss_and_gradients_equal_the_unsplit_model(mp_results, schedule):
    model = fresh_gpt()
    x, y = batch()
    loss = lm_loss(model(x), y)
    loss.backward()
    full = grads_by_name(model)
    first, last = mp_results[0][schedule], mp_results[1][schedule]
    assert first["loss"] is None
    assert last["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for rank_out in (first, last):
        for name, g in rank_out["grads"].items():
            if name.startswith("layers."):   # stage-local layer index → global index
                i, rest = name.split(".", 2)[1:]
                name = f"layers.{int(i) + (CFG.n_layer // N if rank_out is last else 0)}.{rest}"
            name = name.replace("lm_head.", "embed_tokens.")  # tied: both copies get the summed gradient
            torch.testing.assert_close(g, full[name], rtol=1e-5, atol=1e-6, msg=name)
    # traffic: activations forward and their gradients backward, (B/m, T, C) fp32 each, plus the tied weight
    act = B // 2 * T * CFG.d_model * 4
    assert first["comm"]["ops"]["send"]["payload_bytes"] == 2 * act
    assert last["comm"]["ops"]["send"]["payload_bytes"] == 2 * act
    assert first["comm"]["ops"]["all_reduce"]["payload_bytes"] == CFG.vocab_size * CFG.d_model * 4


def test_pipeline_schedules_run_in_their_order(mp_results):
    assert mp_results[0]["gpipe"]["order"] == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]
    assert mp_results[0]["1f1b"]["order"] == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]  # warm-up p-1 = 1
    assert mp_results[1]["1f1b"]["order"] == [("F", 0), ("B", 0), ("F", 1), ("B", 1)]


def test_a_single_pipeline_stage_keeps_the_tied_embedding_tied():
    """p = 1: the one stage holds both ends; they must stay one parameter (the bug: two copies)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = fresh_gpt()
        stage = gpt_stage(model)
    finally:
        dist.destroy_process_group()
    assert stage.embed_tokens.weight is stage.lm_head.weight
    x, y = batch()
    lm_loss(stage(x), y).backward()
    lm_loss(model(x), y).backward()
    torch.testing.assert_close(stage.lm_head.weight.grad, model.lm_head.weight.grad)
