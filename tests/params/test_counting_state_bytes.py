"""lab.params.counting.unique_state_dict and state_bytes: what a checkpoint stores, in memory and on disk.

References: the closed-form parameter count (`gpt_param_count`), the storage bytes of the unique
parameters (`model_bytes`), and the safetensors file layout (8-byte header length + JSON header +
raw tensor bytes) as read back by the `safetensors` library.
"""

from __future__ import annotations

import os

import pytest
import safetensors.torch as st
import torch

from lab.models import GPT, GPTConfig
from lab.params.counting import gpt_param_count, model_bytes, state_bytes, unique_state_dict
from lab.params.safetensors_io import save_safetensors
from lab.quant import int4_model, quantize_model

CFG = GPTConfig(vocab_size=128, context_length=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64)


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_tied_head_is_stored_once(tiny):
    tensors = unique_state_dict(tiny)
    assert "embed_tokens.weight" in tensors and "lm_head.weight" not in tensors
    assert sum(t.numel() for t in tensors.values()) == gpt_param_count(CFG)
    untied = GPT(GPTConfig(**{**CFG.to_dict(), "tie_embeddings": False}))
    assert "lm_head.weight" in unique_state_dict(untied)
    assert state_bytes(untied)["memory"] - state_bytes(tiny)["memory"] == 4 * CFG.vocab_size * CFG.d_model


def test_memory_bytes_follow_the_dtype(tiny):
    assert state_bytes(tiny)["memory"] == model_bytes(tiny) == 4 * gpt_param_count(CFG)
    assert state_bytes(tiny, torch.bfloat16)["memory"] == 2 * gpt_param_count(CFG)
    cast = unique_state_dict(tiny, torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in cast.values())
    assert next(tiny.parameters()).dtype == torch.float32                      # the model is not changed


def test_disk_bytes_are_the_safetensors_file(tiny, tmp_path):
    sizes = state_bytes(tiny, torch.bfloat16)
    path = tmp_path / "model.safetensors"
    save_safetensors(unique_state_dict(tiny, torch.bfloat16), path)
    assert sizes["disk"] == os.path.getsize(path)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert sizes["disk"] == 8 + header + sizes["memory"]
    back = st.load_file(path)
    assert all(torch.equal(back[k], v) for k, v in unique_state_dict(tiny, torch.bfloat16).items())


def test_int4_codes_are_not_cast():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    calib = torch.randint(0, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, "rtn", 4, 32, calib, progress=False)
    before = state_bytes(model, torch.bfloat16)["memory"]
    packed = int4_model(model, report)                                      # in place
    tensors = unique_state_dict(packed, torch.bfloat16)
    integer = [t for t in tensors.values() if not t.is_floating_point()]
    assert integer and all(t.dtype in (torch.uint8, torch.int8, torch.int32) for t in integer)
    assert state_bytes(packed, torch.bfloat16)["memory"] < before


def test_bad_arguments_are_named(tiny):
    with pytest.raises(TypeError, match="model"):
        state_bytes("not a model")
    with pytest.raises(TypeError, match="dtype"):
        unique_state_dict(tiny, "bf16")
