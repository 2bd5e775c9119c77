"""lab.params.lazy: building on the meta device and loading checkpoints lazily.

References: eager loading, the saved tensors, and the book's pretrained LM loaded by `load_pretrained_lm`.
"""

from __future__ import annotations

import pytest
import torch

from lab.models.gpt import GPT, GPTConfig
from lab.params.lazy import build_on_meta, load_eager, load_lazy, measure_load_peak_rss, untied_state_dict
from lab.params.safetensors_io import save_safetensors
from lab.params.sharded import save_sharded
from tests.params.test_safetensors_io import TINY, assert_same

# --- lazy loading ----------------------------------------------------------------------------------

def test_meta_model_has_no_storage():
    model = build_on_meta(TINY)
    assert all(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight


@pytest.mark.parametrize("sharded_dir", [False, True])
def test_lazy_equals_eager_equals_saved(tmp_path, sharded_dir):
    torch.manual_seed(0)
    model = GPT(TINY)
    state = untied_state_dict(model)
    if sharded_dir:
        save_sharded(state, tmp_path, max_shard_bytes=10_000)
        checkpoint = tmp_path
    else:
        checkpoint = tmp_path / "m.safetensors"
        save_safetensors(state, checkpoint)
    lazy = load_lazy(TINY, checkpoint, progress=False)
    eager = load_eager(TINY, checkpoint)
    for loaded in (lazy, eager):
        assert loaded.lm_head.weight is loaded.embed_tokens.weight
        assert_same(untied_state_dict(loaded), state)


def test_lazy_errors(tmp_path):
    torch.manual_seed(0)
    state = untied_state_dict(GPT(TINY))
    path = tmp_path / "m.safetensors"
    with pytest.raises(FileNotFoundError, match=r"checkpoint=.*m.safetensors' does not exist"):
        load_lazy(TINY, path, progress=False)
    save_safetensors({k: v for k, v in state.items() if k != "norm.weight"}, path)
    with pytest.raises(ValueError, match=r"has no tensor for parameter 'norm.weight'"):
        load_lazy(TINY, path, progress=False)
    save_safetensors({**state, "extra": torch.ones(1)}, path)
    with pytest.raises(ValueError, match=r"holds tensors the model does not use: \['extra'\]"):
        load_lazy(TINY, path, progress=False)
    save_safetensors({**state, "norm.weight": torch.ones(5)}, path)
    with pytest.raises(ValueError, match=r"'norm.weight' has shape \[5\], but parameter 'norm.weight' needs \[32\]"):
        load_lazy(TINY, path, progress=False)


def test_lazy_load_of_the_real_lm_matches_load_pretrained_lm():
    from transformers import LlamaConfig

    from lab.models.pretrained import LM_DIR, gpt_config_from_llama, load_pretrained_lm

    if not (LM_DIR / "model.safetensors").exists():
        pytest.skip("pretrained LM checkpoint not present")
    config = gpt_config_from_llama(LlamaConfig.from_pretrained(LM_DIR))
    lazy = load_lazy(config, LM_DIR / "model.safetensors", progress=False)  # HF names, bf16, lm_head tied
    reference = load_pretrained_lm("lab")
    idx = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lazy(idx), reference(idx))
    assert lazy.lm_head.weight is lazy.embed_tokens.weight


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A 64 MB float32 GPT checkpoint (16M parameters)."""
    config = GPTConfig(vocab_size=8192, context_length=64, d_model=512, n_layer=4, n_head=8, n_kv_head=4, d_ff=1408)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    save_safetensors(untied_state_dict(GPT(config)), path)
    return config, path


def test_lazy_peak_rss_is_below_eager(big_checkpoint):
    config, path = big_checkpoint
    size = path.stat().st_size
    peak = {mode: measure_load_peak_rss(mode, path, config) for mode in ("baseline", "eager", "lazy")}
    # eager holds file + model (≈ 2 S above baseline), lazy the model plus one layer (≈ S + S/4)
    assert peak["eager"] - peak["baseline"] > 1.8 * size
    assert peak["baseline"] + size < peak["lazy"] < peak["eager"] - size / 2


def test_measure_bad_mode(big_checkpoint):
    config, path = big_checkpoint
    with pytest.raises(ValueError, match=r"mode='fast' is not allowed; use one of \('baseline', 'eager', 'lazy'\)"):
        measure_load_peak_rss("fast", path, config)
    with pytest.raises(FileNotFoundError, match=r"checkpoint=.*missing' does not exist"):
        measure_load_peak_rss("lazy", path.parent / "missing", config)
