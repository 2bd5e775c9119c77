"""Bad input to every public name of lab.params is refused with a message naming the argument."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from torch import nn

from lab.params import (Adafactor, Adam8bit, DynamicLossScaler, LoRALinear, OffloadedGPT, add_lora, build_on_meta,
                        checkpoint_layers, checkpoint_segments, compare_sharing, count_parameters, float_format_info,
                        gpt_param_count, inference_memory, kv_cache_bytes, load_eager, load_lazy, load_safetensors,
                        load_sharded, lora_memory, measure_activation_peak_cpu, measure_load_peak_rss, merge_lora,
                        model_bytes, optimal_segments, parameter_table, qlora_model, save_safetensors, save_sharded,
                        segment_checkpoint_bytes, segment_gradient_error, segment_time_ratio, share_layers,
                        sharing_variant, tie_weights, training_memory, untie_weights)
from lab.params.lazy import untied_state_dict
from tests.bad_input import NOT_GPT, Bad, T, V, merged
from tests.params.bad_notebook import NOTEBOOK
from tests.params.bad_stable_embedding import STABLE
from tests.tiny_models import tiny_config, tiny_gpt

CFG = tiny_config()   # 2 layers, d_model 32, context 16, vocab 61
IDS = torch.zeros(1, 4, dtype=torch.int64)
NAN = float("nan")
_KEEP: list[tempfile.TemporaryDirectory] = []   # the folder lives as long as the module


@functools.cache
def _folder() -> Path:
    """A temporary folder (removed at exit) holding a tiny GPT's checkpoint, file and sharded."""
    folder = tempfile.TemporaryDirectory()
    _KEEP.append(folder)
    root = Path(folder.name)
    state = untied_state_dict(tiny_gpt())
    save_safetensors(state, root / "model.safetensors")
    save_sharded(state, root / "sharded", 10_000)
    return root


def _file() -> Path:
    return _folder() / "model.safetensors"


@functools.cache
def _offloaded() -> OffloadedGPT:
    return OffloadedGPT(tiny_gpt())


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(2, 2))]


def _lora(**kw) -> list[str]:
    return add_lora(tiny_gpt(), **kw)


def _sharing(**kw) -> list[dict]:
    return compare_sharing(kw.pop("cfg", CFG), torch.arange(100), progress=False, **kw)


def _shared_view() -> dict[str, torch.Tensor]:
    base = torch.arange(12.0).view(3, 4)
    return {"col": base[:, 0], "last": base[2:, :1]}   # element 8 in both; a strided view reaches past numel


CASES: dict[str, list[Bad]] = merged(NOTEBOOK, STABLE, {  # tests.params.bad_notebook, tests.params.bad_stable_embedding
    "Adafactor": [
        Bad(lambda: Adafactor(nn.Linear(2, 2)), TypeError, r"params must be an iterable .* got the module Linear"),
        Bad(lambda: Adafactor(_params(), lr=1e-3), ValueError, r"lr=0\.001 is not allowed with relative_step=True"),
        Bad(lambda: Adafactor(_params(), relative_step=False), ValueError, r"lr=None is not allowed"),
        Bad(lambda: Adafactor(_params(), eps=[1e-30, 1e-3]), TypeError, r"eps must be a tuple"),
        Bad(lambda: Adafactor(_params(), beta1=True), TypeError, r"beta1 must be a real number, got True"),
        Bad(lambda: Adafactor(_params(), clip_threshold=0), ValueError, r"clip_threshold=0 is out of range"),
        Bad(lambda: Adafactor(_params(), decay_rate=0.8), ValueError, r"decay_rate=0\.8 is out of range"),
        Bad(lambda: Adafactor(_params(), weight_decay=NAN), ValueError, r"weight_decay=nan is out of range"),
        Bad(lambda: Adafactor(_params(), warmup_init=1), TypeError, r"warmup_init must be a bool"),
    ],
    "Adam8bit": [
        Bad(lambda: Adam8bit(nn.Linear(2, 2)), TypeError, r"params must be an iterable .* got the module Linear"),
        Bad(lambda: Adam8bit(_params(), lr=-1.0), ValueError, r"lr=-1\.0 is out of range"),
        Bad(lambda: Adam8bit(_params(), betas=[0.9, 0.999]), TypeError, r"betas must be a tuple"),
        Bad(lambda: Adam8bit(_params(), betas=(0.9, 1.0)), ValueError, r"betas\[1\]=1\.0 is out of range"),
        Bad(lambda: Adam8bit(_params(), eps=0.0), ValueError, r"eps=0\.0 is out of range"),
        Bad(lambda: Adam8bit(_params(), block_size=3), ValueError, r"block_size=3 is not allowed"),
        Bad(lambda: Adam8bit(_params(), block_size=True), TypeError, r"block_size must be an int, got True"),
        V(lambda: Adam8bit(_params(), min_8bit_size=-1), r"min_8bit_size=-1 is out of range"),
        T(lambda: Adam8bit(_params(), min_8bit_size=True), r"min_8bit_size must be an int, got True"),
        T(lambda: Adam8bit(_params(), min_8bit_size=4096.0), r"min_8bit_size must be an int, got 4096\.0"),
        V(lambda: Adam8bit([{"params": _params(), "optim_bits": 16}]), r"optim_bits=16 is not allowed"),
        T(lambda: Adam8bit([{"params": _params(), "optim_bits": "32"}]), r"optim_bits must be an int, got '32'"),
        V(lambda: Adam8bit([{"params": _params(), "min_8bit_size": -5}]), r"min_8bit_size=-5 is out of range"),
    ],
    "DynamicLossScaler": [
        Bad(lambda: DynamicLossScaler(init_scale=0), ValueError, r"init_scale=0 is out of range"),
        Bad(lambda: DynamicLossScaler(init_scale=float("inf")), ValueError, r"init_scale=inf is out of range"),
        Bad(lambda: DynamicLossScaler(growth_factor=1.0), ValueError, r"growth_factor=1\.0 is out of range"),
        Bad(lambda: DynamicLossScaler(backoff_factor=1.5), ValueError, r"backoff_factor=1\.5 is out of range"),
        Bad(lambda: DynamicLossScaler(growth_interval=True), TypeError, r"growth_interval must be an int, got True"),
        Bad(lambda: DynamicLossScaler().scale_loss(1.0), TypeError, r"loss must be a torch\.Tensor, got float"),
        Bad(lambda: DynamicLossScaler().unscale_(3), TypeError, r"optimizer_or_grads must be .* got int"),
        Bad(lambda: DynamicLossScaler().unscale_("g"), TypeError, r"optimizer_or_grads must be .* got str"),
        Bad(lambda: DynamicLossScaler().step([]), TypeError, r"optimizer must be a torch\.optim\.Optimizer"),
    ],
    "LoRALinear": [
        Bad(lambda: LoRALinear(nn.Conv1d(4, 4, 1), 2, 4.0), TypeError, r"base must be an nn\.Linear"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 0, 4.0), ValueError, r"r=0 is out of range"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 5, 4.0), ValueError, r"r=5 is out of range; allowed: \[1, 4\]"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), True, 4.0), TypeError, r"r must be an int, got True"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 2.0, 4.0), TypeError, r"r must be an int, got 2\.0"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 2, 0.0), ValueError, r"alpha=0\.0 is out of range"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 2, NAN), ValueError, r"alpha=nan is out of range"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 2, 4.0)(torch.ones(3, 5)), ValueError,
            r"x must have shape \(\.\.\., 4\), got \(3, 5\)"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 2, 4.0)(torch.ones(3, 4, dtype=torch.int64)), TypeError,
            r"x must be a floating-point tensor"),
        Bad(lambda: LoRALinear(nn.Linear(4, 4), 2, 4.0)([1.0] * 4), TypeError, r"x must be a torch\.Tensor"),
    ],
    "OffloadedGPT": [
        Bad(lambda: OffloadedGPT(nn.Linear(2, 2)), TypeError, rf"model {NOT_GPT}, got Linear"),
        Bad(lambda: OffloadedGPT(tiny_gpt(), None), TypeError, r"device must be a torch\.device or a str"),
        Bad(lambda: OffloadedGPT(tiny_gpt(), "gpu"), ValueError, r"device='gpu' is not a device"),
        Bad(lambda: OffloadedGPT(tiny_gpt(), "mps"), ValueError, r"device='mps' is not allowed"),
        Bad(lambda: _offloaded().forward([[1, 2]]), TypeError, r"idx must be a torch\.Tensor, got list"),
        Bad(lambda: _offloaded().forward(IDS[0]), ValueError, r"idx must be \(B, T\) int64, got shape \(4,\)"),
        Bad(lambda: _offloaded().forward(IDS.int()), ValueError, r"idx must be \(B, T\) int64.*int32"),
        Bad(lambda: _offloaded().forward(IDS + 61), ValueError, r"idx must hold token ids in \[0, vocab_size=61\)"),
        Bad(lambda: _offloaded().forward(IDS - 1), ValueError, r"idx must hold token ids .* \[-1, -1\]"),
        Bad(lambda: _offloaded().forward(torch.zeros(1, 17, dtype=torch.int64)), ValueError,
            r"idx has sequence length 17, which exceeds context_length=16"),
        Bad(lambda: _offloaded().forward(IDS, mode="eager"), ValueError, r"mode='eager' is not allowed"),
        Bad(lambda: _offloaded().forward(IDS, mode=True), TypeError, r"mode must be one of .* got the bool True"),
    ],
    "add_lora": [
        Bad(lambda: add_lora("model"), TypeError, r"model must be a torch\.nn\.Module, got str"),
        Bad(lambda: _lora(targets="q_proj"), TypeError, r"targets must be an iterable .* got 'q_proj'"),
        Bad(lambda: _lora(targets="all_linear"), TypeError, r"targets must be an iterable .* or 'all-linear', got"),
        Bad(lambda: _lora(targets=("q_prj",)), ValueError, r"targets=\('q_prj',\): \['q_prj'\] match no module"),
        Bad(lambda: _lora(targets=(3,)), TypeError, r"targets must hold non-empty strings"),
        Bad(lambda: _lora(targets=("attn",)), TypeError, r"targets=\('attn',\) match 'layers\.0\.attn'"),
        Bad(lambda: _lora(r=0), ValueError, r"r=0 is out of range"),
        Bad(lambda: _lora(r=2.5), TypeError, r"r must be an int, got 2\.5"),
        Bad(lambda: _lora(r=64), ValueError, r"r=64 is out of range; allowed: \[1, 32\]"),
        Bad(lambda: _lora(alpha=0), ValueError, r"alpha=0 is out of range"),
        Bad(lambda: _lora(alpha="16"), TypeError, r"alpha must be a real number, got '16'"),
    ],
    "build_on_meta": [
        Bad(lambda: build_on_meta({"d_model": 8}), TypeError, r"config must be a .*GPTConfig, got dict"),
    ],
    "checkpoint_layers": [
        Bad(lambda: checkpoint_layers(nn.Linear(2, 2), 1), TypeError, rf"model {NOT_GPT}"),
        Bad(lambda: checkpoint_layers(tiny_gpt(), 0), ValueError, r"every=0 is out of range"),
        Bad(lambda: checkpoint_layers(tiny_gpt(), True), TypeError, r"every must be an int, got True"),
        Bad(lambda: checkpoint_layers(tiny_gpt(), 1.0), TypeError, r"every must be an int, got 1\.0"),
        Bad(lambda: checkpoint_layers(share_layers(tiny_gpt(), 1), 2), ValueError, r"every=2 is not allowed"),
    ],
    "checkpoint_segments": [
        Bad(lambda: checkpoint_segments(nn.Linear(2, 2), 1), TypeError, rf"model {NOT_GPT}, got Linear"),
        Bad(lambda: checkpoint_segments(tiny_gpt(), 0), ValueError, r"segments=0 is out of range; allowed: \[1, 2\]"),
        Bad(lambda: checkpoint_segments(tiny_gpt(), 3), ValueError, r"segments=3 is out of range; allowed: \[1, 2\]"),
        Bad(lambda: checkpoint_segments(tiny_gpt(), True), TypeError, r"segments must be an int, got True \(bool\)"),
        Bad(lambda: checkpoint_segments(tiny_gpt(), 2.0), TypeError, r"segments must be an int, got 2\.0 \(float\)"),
        Bad(lambda: checkpoint_segments(share_layers(tiny_gpt(), 1), 2), ValueError,
            r"segments=2 is not allowed for this model: layer 1 shares its block with layer 0"),
    ],
    "compare_sharing": [
        Bad(lambda: _sharing(cfg=CFG.to_dict()), TypeError, r"cfg must be a lab\.models\.gpt\.GPTConfig, got dict"),
        Bad(lambda: _sharing(variants="tied"), TypeError, r"variants must be a list or tuple, got 'tied'"),
        Bad(lambda: _sharing(variants=()), ValueError, r"variants=\(\) is empty"),
        Bad(lambda: _sharing(variants=("lora",)), ValueError, r"variants\[0\]='lora' is not allowed; use one of"),
        Bad(lambda: _sharing(n_groups=3), ValueError, r"n_groups=3 must be a positive int dividing n_layer=2"),
        Bad(lambda: _sharing(n_groups=True), TypeError, r"n_groups must be an int, got True"),
        Bad(lambda: _sharing(steps=0), ValueError, r"steps=0 is out of range"),
        Bad(lambda: _sharing(batch_size=2.0), TypeError, r"batch_size must be an int, got 2\.0"),
        Bad(lambda: _sharing(seq_len=-1), ValueError, r"seq_len=-1 is out of range"),
        Bad(lambda: _sharing(lr=0.0), ValueError, r"lr=0\.0 is out of range"),
        Bad(lambda: compare_sharing(CFG, torch.arange(100.0)), TypeError, r"train_tokens must have a dtype in"),
        Bad(lambda: compare_sharing(CFG, torch.arange(100), torch.arange(100)), TypeError,
            r"sample must be a lab\.perplexity\.EvalSample or None, got Tensor"),
    ],
    "count_parameters": [
        Bad(lambda: count_parameters("model"), TypeError, r"model must be a torch\.nn\.Module, got str"),
        Bad(lambda: count_parameters(nn.Linear(2, 2), by="layer"), ValueError, r"by='layer' is not allowed"),
        Bad(lambda: count_parameters(nn.Linear(2, 2), by=True), TypeError, r"by must be one of .* the bool True"),
    ],
    "float_format_info": [
        Bad(lambda: float_format_info("float32"), TypeError, r"dtype must be a torch dtype .* got 'float32'"),
        Bad(lambda: float_format_info([torch.float32]), TypeError, r"dtype must be a torch dtype"),
        Bad(lambda: float_format_info(torch.int8), ValueError, r"dtype=torch\.int8 is not allowed"),
        Bad(lambda: float_format_info(torch.float8_e8m0fnu), ValueError, r"dtype=torch\.float8_e8m0fnu is not allowed"),
    ],
    "gpt_param_count": [
        Bad(lambda: gpt_param_count({"d_model": 8}), TypeError, r"config must be a GPTConfig, got dict"),
        Bad(lambda: gpt_param_count(CFG, 0), ValueError, r"n_groups=0 is out of range"),
        Bad(lambda: gpt_param_count(CFG, -1), ValueError, r"n_groups=-1 is out of range"),
        Bad(lambda: gpt_param_count(CFG, True), TypeError, r"n_groups must be an int, got True"),
        Bad(lambda: gpt_param_count(CFG, 2.5), TypeError, r"n_groups must be an int, got 2\.5"),
        Bad(lambda: gpt_param_count(CFG, 3), ValueError, r"n_groups=3 is not allowed; use a divisor of n_layer=2"),
    ],
    "inference_memory": [
        Bad(lambda: inference_memory({"d_model": 8}, 1, 4), TypeError, r"config must be a .*GPTConfig, got dict"),
        Bad(lambda: inference_memory(CFG, 0, 4), ValueError, r"batch=0 is out of range"),
        Bad(lambda: inference_memory(CFG, 1, True), TypeError, r"seq_len must be an int, got True"),
        Bad(lambda: inference_memory(CFG, 1, 4, "int3"), ValueError, r"dtype='int3' is not allowed"),
        Bad(lambda: inference_memory(CFG, 1, 4, [torch.bfloat16]), TypeError, r"dtype must be a torch\.dtype or"),
    ],
    "kv_cache_bytes": [
        Bad(lambda: kv_cache_bytes({"d_model": 8}, 1, 4), TypeError, r"config must be a .*GPTConfig, got dict"),
        Bad(lambda: kv_cache_bytes(CFG, 1.5, 4), TypeError, r"batch must be an int, got 1\.5"),
        Bad(lambda: kv_cache_bytes(CFG, 1, 0), ValueError, r"seq_len=0 is out of range"),
        Bad(lambda: kv_cache_bytes(CFG, 1, 4, 2), TypeError, r"dtype must be a torch\.dtype or one of .* got 2"),
    ],
    "load_eager": [
        Bad(lambda: load_eager(CFG.to_dict(), _file()), TypeError, r"config must be a .*GPTConfig, got dict"),
        Bad(lambda: load_eager(CFG, 123), TypeError, r"checkpoint must be a path \(a str or pathlib\.Path\), got 123"),
        Bad(lambda: load_eager(CFG, _file(), dtype=torch.int8), ValueError, r"dtype=torch\.int8 is not allowed"),
        Bad(lambda: load_eager(CFG, _file(), dtype="bf16"), TypeError, r"dtype must be a torch dtype"),
        Bad(lambda: load_eager(CFG, _file(), device=True), TypeError, r"device must be a torch\.device or a str"),
        Bad(lambda: load_eager(tiny_config(d_model=16), _file()), ValueError, r"checkpoint=.* has shape \[61, 32\]"),
    ],
    "load_lazy": [
        Bad(lambda: load_lazy(CFG.to_dict(), _file()), TypeError, r"config must be a .*GPTConfig, got dict"),
        Bad(lambda: load_lazy(CFG, None), TypeError, r"checkpoint must be a path \(a str or pathlib\.Path\), got None"),
        Bad(lambda: load_lazy(CFG, _file(), dtype=torch.int64), ValueError, r"dtype=torch\.int64 is not allowed"),
        Bad(lambda: load_lazy(CFG, _file(), device="gpu"), ValueError, r"device='gpu' is not a device"),
        Bad(lambda: load_lazy(CFG, _file(), device=None), TypeError, r"device must be a torch\.device or a str"),
        Bad(lambda: load_lazy(CFG, _folder() / "sharded", dtype=torch.bool), ValueError, r"dtype=torch\.bool"),
    ],
    "load_safetensors": [
        Bad(lambda: load_safetensors(123), TypeError, r"path must be a path \(a str or pathlib\.Path\), got 123"),
        Bad(lambda: load_safetensors(_file(), device=True), TypeError, r"device must be a torch\.device or a str"),
        Bad(lambda: load_safetensors(_file(), device="gpu"), ValueError, r"device='gpu' is not a device"),
    ],
    "load_sharded": [
        Bad(lambda: load_sharded(None), TypeError, r"directory must be a path \(a str or pathlib\.Path\), got None"),
        Bad(lambda: load_sharded(_folder() / "sharded", device=0.0), TypeError,
            r"device must be a torch\.device or a str"),
        Bad(lambda: load_sharded(_folder() / "sharded", device="tpu:0"), ValueError, r"device='tpu:0' is not a device"),
    ],
    "lora_memory": [
        Bad(lambda: lora_memory("model"), TypeError, r"model must be a torch\.nn\.Module, got str"),
    ],
    "measure_activation_peak_cpu": [
        Bad(lambda: measure_activation_peak_cpu(nn.Linear(2, 2), 1, 4), TypeError, rf"model {NOT_GPT}"),
        Bad(lambda: measure_activation_peak_cpu(tiny_gpt(), 0, 4), ValueError, r"batch=0 is out of range"),
        Bad(lambda: measure_activation_peak_cpu(tiny_gpt(), 1, 17), ValueError,
            r"seq_len=17 is out of range; allowed: \[1, 16\]"),
        Bad(lambda: measure_activation_peak_cpu(tiny_gpt(), 1, 4.0), TypeError, r"seq_len must be an int, got 4\.0"),
        Bad(lambda: measure_activation_peak_cpu(tiny_gpt().requires_grad_(False), 1, 4), ValueError,
            r"model has no parameter with requires_grad=True"),
    ],
    "measure_load_peak_rss": [
        Bad(lambda: measure_load_peak_rss("fast", _file(), CFG), ValueError, r"mode='fast' is not allowed"),
        Bad(lambda: measure_load_peak_rss(True, _file(), CFG), TypeError, r"mode must be one of .* the bool True"),
        Bad(lambda: measure_load_peak_rss("lazy", _file(), CFG.to_dict()), TypeError, r"config must be a .*GPTConfig"),
        Bad(lambda: measure_load_peak_rss("lazy", 5, CFG), TypeError, r"checkpoint must be a path"),
    ],
    "merge_lora": [
        Bad(lambda: merge_lora("model"), TypeError, r"model must be a torch\.nn\.Module, got str"),
        Bad(lambda: merge_lora(nn.Linear(2, 2)), ValueError, r"model \(Linear\) has no LoRALinear to merge"),
    ],
    "model_bytes": [
        Bad(lambda: model_bytes("model"), TypeError, r"model must be a torch\.nn\.Module, got str"),
        Bad(lambda: model_bytes(nn.Linear(2, 2), "float32"), TypeError, r"dtype must be a torch\.dtype, got 'float32'"),
    ],
    "optimal_segments": [
        Bad(lambda: optimal_segments(0, 1, 1), ValueError, r"n_layer=0 is out of range; allowed: \[1, inf\)"),
        Bad(lambda: optimal_segments(24, -1, 1), ValueError, r"a=-1 is out of range; allowed: \[0, inf\)"),
        Bad(lambda: optimal_segments(24, 1, 2.5), TypeError, r"m must be an int, got 2\.5 \(float\)"),
    ],
    "parameter_table": [
        Bad(lambda: parameter_table(nn.Linear(2, 2), "layer"), ValueError, r"by='layer' is not allowed"),
        Bad(lambda: parameter_table(nn.ReLU()), ValueError, r"model \(ReLU\) has no parameters to tabulate"),
        Bad(lambda: parameter_table(nn.ParameterList([nn.Parameter(torch.empty(0))])), ValueError,
            r"model \(ParameterList\) has no parameters"),
    ],
    "save_safetensors": [
        Bad(lambda: save_safetensors({"a": torch.ones(1)}, 5), TypeError, r"path must be a path"),
        Bad(lambda: save_safetensors([torch.ones(1)], _folder() / "x.safetensors"), TypeError,
            r"tensors must be a dict str -> torch\.Tensor, got list"),
        Bad(lambda: save_safetensors({"a": [1.0]}, _folder() / "x.safetensors"), TypeError,
            r"tensors\['a'\] is a list"),
        Bad(lambda: save_safetensors({"a": torch.ones(1)}, _folder() / "x.safetensors", {"k": 1}), TypeError,
            r"metadata=\{'k': 1\} is not allowed"),
        Bad(lambda: save_safetensors(_shared_view(), _folder() / "x.safetensors"), ValueError,
            r"tensors 'col' and 'last' share memory"),
    ],
    "save_sharded": [
        Bad(lambda: save_sharded({"a": torch.ones(1)}, None, 10), TypeError, r"directory must be a path"),
        Bad(lambda: save_sharded([torch.ones(1)], _folder() / "s", 10), TypeError, r"state_dict must be a dict"),
        Bad(lambda: save_sharded({"a": 3}, _folder() / "s", 10), TypeError, r"state_dict: tensors\['a'\] is a int"),
        Bad(lambda: save_sharded({"a": torch.ones(1)}, _folder() / "s", 0), ValueError,
            r"max_shard_bytes=0 is out of range"),
        Bad(lambda: save_sharded({"a": torch.ones(1)}, _folder() / "s", True), TypeError,
            r"max_shard_bytes must be an int, got True"),
        Bad(lambda: save_sharded(_shared_view(), _folder() / "s", 10), ValueError,
            r"state_dict: tensors 'col' and 'last' share memory"),
    ],
    "segment_checkpoint_bytes": [
        Bad(lambda: segment_checkpoint_bytes(24, 0, 1, 1), ValueError, r"segments=0 is out of range; allowed: \[1, 24"),
        Bad(lambda: segment_checkpoint_bytes(24, 25, 1, 1), ValueError, r"segments=25 is out of range; allowed: \["),
        Bad(lambda: segment_checkpoint_bytes(24, False, 1, 1), TypeError, r"segments must be an int, got False"),
        Bad(lambda: segment_checkpoint_bytes(24, 4, 1, -5), ValueError, r"m=-5 is out of range; allowed: \[0, inf\)"),
        Bad(lambda: segment_checkpoint_bytes(24.0, 4, 1, 1), TypeError, r"n_layer must be an int, got 24\.0"),
    ],
    "segment_gradient_error": [
        Bad(lambda: segment_gradient_error(nn.Linear(2, 2), 1, 1, 4), TypeError, rf"model {NOT_GPT}"),
        Bad(lambda: segment_gradient_error(tiny_gpt(), 3, 1, 4), ValueError,
            r"segments=3 is out of range; allowed: \[1, 2\]"),
        Bad(lambda: segment_gradient_error(tiny_gpt(), None, 1, 4), TypeError, r"segments must be an int, got None"),
        Bad(lambda: segment_gradient_error(tiny_gpt(), 1, 1, 17), ValueError, r"seq_len=17 is out of range"),
    ],
    "segment_time_ratio": [
        Bad(lambda: segment_time_ratio(nn.Linear(2, 2), 1, 4, 1), TypeError, rf"model {NOT_GPT}"),
        Bad(lambda: segment_time_ratio(tiny_gpt(), 1, 4, 0), ValueError, r"segments=0 is out of range"),
        Bad(lambda: segment_time_ratio(tiny_gpt(), 1, 4, 1, repeats=0), ValueError, r"repeats=0 is out of range"),
        Bad(lambda: segment_time_ratio(tiny_gpt(), 0, 4, 1), ValueError, r"batch=0 is out of range"),
    ],
    "sharing_variant": [
        Bad(lambda: sharing_variant(CFG.to_dict(), "tied"), TypeError,
            r"cfg must be a lab\.models\.gpt\.GPTConfig, got dict"),
        Bad(lambda: sharing_variant(CFG, "lora"), ValueError, r"name='lora' is not allowed"),
        Bad(lambda: sharing_variant(CFG, "albert", 3), ValueError, r"n_groups=3 must be a positive int dividing"),
    ],
    "share_layers": [
        Bad(lambda: share_layers("model"), TypeError, rf"model {NOT_GPT}, got str"),
        Bad(lambda: share_layers(tiny_gpt(), 3), ValueError, r"n_groups=3 must be a positive int dividing n_layer=2"),
        Bad(lambda: share_layers(tiny_gpt(), 0), ValueError, r"n_groups=0 is out of range"),
        Bad(lambda: share_layers(tiny_gpt(), True), TypeError, r"n_groups must be an int, got True"),
        Bad(lambda: share_layers(tiny_gpt(), 1.0), TypeError, r"n_groups must be an int, got 1\.0"),
    ],
    "tie_weights": [
        Bad(lambda: tie_weights(nn.Linear(2, 2)), TypeError, rf"model {NOT_GPT}, got Linear"),
    ],
    "training_memory": [
        Bad(lambda: training_memory(-1), ValueError, r"n_params=-1 is out of range"),
        Bad(lambda: training_memory(2.5), TypeError, r"n_params must be an int, got 2\.5"),
        Bad(lambda: training_memory(10, "adagrad"), ValueError, r"optimizer='adagrad' is not allowed"),
        Bad(lambda: training_memory(10, precision="fp8"), ValueError, r"precision='fp8' is not allowed"),
        Bad(lambda: training_memory(10, activations_bytes=True), TypeError, r"activations_bytes must be an int"),
        Bad(lambda: training_memory(10, config=CFG), ValueError, r"config, batch and seq_len must be given together"),
        Bad(lambda: training_memory(10, config=CFG.to_dict(), batch=1, seq_len=4), TypeError, r"config must be a"),
        Bad(lambda: training_memory(10, config=CFG, batch=1, seq_len=17), ValueError, r"seq_len=17 is not allowed"),
        Bad(lambda: training_memory(10, checkpoint_every=2), ValueError, r"checkpoint_every=2 needs config"),
        Bad(lambda: training_memory(10, config=CFG, batch=1, seq_len=4, checkpoint_every=0), ValueError,
            r"checkpoint_every=0 is out of range"),
        Bad(lambda: training_memory(6, "adafactor"), ValueError, r"optimizer='adafactor' needs the parameter shapes"),
        Bad(lambda: training_memory(6, "adafactor", shapes="ab"), TypeError, r"shapes must be a list .* got 'ab'"),
        Bad(lambda: training_memory(6, "adam8bit", shapes=[6]), TypeError, r"shapes\[0\] must be a shape .* got 6"),
        Bad(lambda: training_memory(6, "adam8bit", shapes=[(2, 3.0)]), TypeError, r"shapes\[0\]\[1\] must be an int"),
        Bad(lambda: training_memory(6, "adam8bit", shapes=[(-2, -3)]), ValueError, r"shapes\[0\]\[0\]=-2 is out of"),
        Bad(lambda: training_memory(7, "adafactor", shapes=[(2, 3)]), ValueError, r"shapes hold 6 .* n_params=7"),
    ],
    "qlora_model": [
        T(lambda: qlora_model(nn.Linear(4, 4)), rf"model {NOT_GPT}, got Linear"),
        V(lambda: qlora_model(tiny_gpt(), r=0, block_size=16), r"r=0 is out of range"),
        V(lambda: qlora_model(tiny_gpt(), r=32, block_size=16), r"r=32 is out of range; allowed: \[1, 16\]"),
        T(lambda: qlora_model(tiny_gpt(), r=2.0, block_size=16), r"r must be an int, got 2\.0"),
        V(lambda: qlora_model(tiny_gpt(), alpha=0.0, block_size=16), r"alpha=0\.0 is out of range"),
        V(lambda: qlora_model(tiny_gpt()), r"block_size=64 is not allowed; use an even divisor of K=32"),
        T(lambda: qlora_model(tiny_gpt(), block_size=16.0), r"block_size must be an int, got 16\.0"),
    ],
    "untie_weights": [
        Bad(lambda: untie_weights("model"), TypeError, rf"model {NOT_GPT}, got str"),
    ],
})

NO_INPUT: dict[str, str] = {}
