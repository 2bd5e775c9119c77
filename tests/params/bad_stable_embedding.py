"""The bad-input cases of lab.params' stable embedding names (`lab.params.stable_embedding`; part of
tests/params/test_bad_input.py's table; `Adam8bit`'s own cases, "optim_bits" and "min_8bit_size" included, are
in that file)."""

from __future__ import annotations

import torch
from torch import nn

from lab.params import StableEmbedding, adam8bit_param_groups, stable_embedding
from tests.bad_input import NOT_GPT, T, V
from tests.tiny_models import tiny_gpt

STABLE = {
    "StableEmbedding": [
        V(lambda: StableEmbedding(0, 8), r"num_embeddings=0 is out of range"),
        T(lambda: StableEmbedding(10, 8.0), r"embedding_dim must be an int, got 8\.0"),
        V(lambda: StableEmbedding(10, 8, eps=0.0), r"eps=0\.0 is out of range"),
        T(lambda: StableEmbedding(10, 8)([[1, 2]]), r"idx must be a torch\.Tensor, got list"),
        T(lambda: StableEmbedding(10, 8)(torch.ones(2)), r"idx must have a dtype in .* got torch\.float32"),
    ],
    "adam8bit_param_groups": [
        T(lambda: adam8bit_param_groups([nn.Parameter(nn.Linear(2, 2).weight)]), r"model must be a torch\.nn\.Module"),
    ],
    "stable_embedding": [
        T(lambda: stable_embedding(nn.Embedding(4, 4)), rf"model {NOT_GPT}, got Embedding"),
        V(lambda: stable_embedding(stable_embedding(tiny_gpt())), r"model already has a StableEmbedding"),
    ],
}
