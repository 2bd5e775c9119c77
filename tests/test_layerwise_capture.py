"""lab.layerwise.capture_inputs: the rows a linear receives, against the same activations computed by hand.

References: for a lab `GPT`, the input of layer 0's q/k/v projections is RMSNorm(embedding(ids)) and the
input of its down-projection is silu(x W_gateᵀ) ⊙ (x W_upᵀ) with x = RMSNorm(h); the Gram matrix of the
captured rows is the one `InputStats` accumulates during `for_each_layer`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lab.layerwise import InputStats, capture_inputs, for_each_layer
from lab.models import GPT, GPTConfig

CFG = GPTConfig(vocab_size=97, context_length=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48)


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))


def test_first_projection_sees_the_normalised_embedding(tiny, ids):
    block = tiny.layers[0]
    X = capture_inputs(tiny, block.attn.q_proj, ids)
    with torch.no_grad():
        expected = block.attn_norm(tiny.embed_tokens(ids)).reshape(-1, CFG.d_model)
    assert X.shape == (3 * 16, CFG.d_model) and X.dtype == torch.float32
    torch.testing.assert_close(X, expected, rtol=0, atol=0)


def test_down_projection_by_name_equals_the_swiglu_product(tiny, ids):
    mlp = tiny.layers[1].mlp
    inner = capture_inputs(tiny, "layers.1.mlp.gate_proj", ids)      # x: the MLP's normalised input
    X = capture_inputs(tiny, "layers.1.mlp.down_proj", ids)
    with torch.no_grad():
        expected = F.silu(mlp.gate_proj(inner)) * mlp.up_proj(inner)
    assert X.shape == (3 * 16, CFG.d_ff)
    torch.testing.assert_close(X, expected, rtol=1e-6, atol=1e-6)


def test_gram_matrix_equals_the_layerwise_statistics(tiny, ids):
    X = capture_inputs(tiny, tiny.layers[0].mlp.up_proj, ids).double()
    seen = {}
    for_each_layer(tiny, ids, lambda i, block, stats: seen.update({i: stats}), layers=[0], progress=False)
    stats: InputStats = seen[0]["mlp.up_proj"]
    assert stats.n_tokens == X.shape[0]
    torch.testing.assert_close(stats.gram, X.T @ X, rtol=1e-10, atol=1e-10)


def test_rows_of_every_call_are_concatenated_in_order():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)          # one module, two calls
    x = torch.randn(2, 5, 4)
    X = capture_inputs(model, shared, x)
    with torch.no_grad():
        second = torch.tanh(shared(x))
    assert X.shape == (2 * 2 * 5, 4)
    torch.testing.assert_close(X[:10], x.reshape(-1, 4))
    torch.testing.assert_close(X[10:], second.reshape(-1, 4))
    assert not shared._forward_hooks                          # the hook is removed


def test_bad_arguments_are_named(tiny, ids):
    with pytest.raises(ValueError, match="module"):
        capture_inputs(tiny, nn.Linear(4, 4), ids)            # not part of the model
    with pytest.raises(ValueError, match="module"):
        capture_inputs(tiny, "layers.9.mlp", ids)
    with pytest.raises(TypeError, match="inputs"):
        capture_inputs(tiny, "layers.0.mlp.up_proj", ids.tolist())
    unused = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    unused.forward = lambda x: unused["a"](x)
    with pytest.raises(ValueError, match="did not run"):
        capture_inputs(unused, unused["b"], torch.randn(1, 2))
    assert not tiny.layers[0].mlp.up_proj._forward_hooks
