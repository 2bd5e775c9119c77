"""The tiny lab GPT the unit tests build (random weights, a few thousand parameters)."""

import torch

from lab.models import GPT, GPTConfig


def tiny_config(**overrides) -> GPTConfig:
    cfg = dict(vocab_size=61, context_length=16, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48)
    cfg.update(overrides)
    return GPTConfig(**cfg)


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()
