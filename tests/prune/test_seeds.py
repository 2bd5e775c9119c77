"""Suite ``prune-seeds`` (`lab.prune.seeds`): its runs are the notebook's sweep and block sensitivity, each prunes
what it names, and the suite refuses a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from lab.prune import sparsity_of
from lab.prune.seeds import QUICK, SETTINGS, methods, run, sweep_name
from tests.tiny_models import tiny_gpt

CALIBS = {0: torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(0))}


def test_the_runs_are_the_notebooks_sweep_and_one_block_at_a_time():
    runs = methods(SETTINGS, CALIBS, n_layer=2)
    assert list(runs["sweep"]) == [sweep_name(m, p) for m in ("magnitude", "wanda", "sparsegpt")
                                   for p in ("30%", "50%", "60%", "70%", "2:4")]
    assert {name for name, (seeded, _) in runs["sweep"].items() if not seeded} == {
        sweep_name("magnitude", p) for p in ("30%", "50%", "60%", "70%", "2:4")}
    assert list(runs["sensitivity"]) == ["block 0", "block 1"]


@pytest.mark.parametrize("name", ["magnitude 50%", "sparsegpt 2:4"])
def test_a_sweep_run_prunes_every_decoder_linear_to_its_sparsity(name):
    model = tiny_gpt()
    methods(QUICK, CALIBS, n_layer=2)["sweep"][name][1](model, 0)
    assert sparsity_of(model) == pytest.approx(0.5, abs=0.01)


def test_a_sensitivity_run_prunes_its_block_only():
    before = tiny_gpt()
    model = copy.deepcopy(before)
    methods(QUICK, CALIBS, n_layer=2)["sensitivity"]["block 1"][1](model, 0)
    assert torch.equal(model.layers[0].mlp.up_proj.weight, before.layers[0].mlp.up_proj.weight)
    assert (model.layers[1].mlp.up_proj.weight == 0).double().mean() == pytest.approx(0.5, abs=0.01)


def test_the_suite_refuses_a_gpu():
    with pytest.raises(ValueError, match=r"device='cuda'.*runs on the cpu"):
        run(torch.device("cuda"))
