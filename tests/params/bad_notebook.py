"""The bad-input cases of the lab.params names the notebooks call for their measurements (memory model terms,
measured bytes, precision helpers, the fine-tuning runs; part of tests/params/test_bad_input.py's table)."""

from __future__ import annotations

import torch
from torch import nn

from lab.params import (activation_bytes, adafactor_state_bytes, add_lora, block_param_count,
                        blockwise_error_vs_float64, cache_nbytes, checkpoint_gradient_error, document_sample,
                        document_tokens, finetune, gpt3_layer_activation_bytes, llama_layer_activation_bytes,
                        lora_training_memory, lr_sweep, matmul_param_count, max_param_diff_vs_transformers,
                        measure_saved_activations_cpu, measure_training_memory_cpu, merge_logit_error, offload_nbytes,
                        optimizer_state_bytes, optimizer_state_tensors, plot_format_ranges, plot_parameter_breakdown,
                        plot_rounding, recompute_time_ratio, round_to, share_layers, spacing, state_bytes,
                        storage_bytes, underflow_fraction, unique_parameters, untied_state_dict)
from tests.bad_input import NOT_GPT, Bad
from tests.tiny_models import tiny_config, tiny_gpt

CFG = tiny_config()   # 2 layers, d_model 32, context 16, vocab 61
IDS = torch.zeros(1, 4, dtype=torch.int64)
BATCHES = [(IDS, IDS)]
DOC = torch.arange(40) % 61
NAN = float("nan")


def T(call, match: str) -> Bad:
    """A call refused with TypeError (a wrong type) whose message matches ``match``."""
    return Bad(call, TypeError, match)


def V(call, match: str) -> Bad:
    """A call refused with ValueError (the right type, a wrong value) whose message matches ``match``."""
    return Bad(call, ValueError, match)


def _lora_gpt() -> nn.Module:
    model = tiny_gpt()
    add_lora(model, r=2)
    return model


def _sample():
    return document_sample(DOC, 30, window=4, context=4)


def _sweep(rates=(1e-3,), **kw):
    return lambda: lr_sweep(tiny_gpt(), BATCHES, rates, kw.pop("sample", _sample()), **kw)


def _finetune(**kw):
    return lambda: finetune(tiny_gpt(), kw.pop("batches", BATCHES), kw.pop("optimizer", "adamw"),
                            lr=kw.pop("lr", 1e-3), **kw)


NOTEBOOK: dict[str, list[Bad]] = {
    "activation_bytes": [
        T(lambda: activation_bytes({"d_model": 8}, 1, 4), r"config must be a lab\.models\.gpt\.GPTConfig, got dict"),
        V(lambda: activation_bytes(CFG, 1, 17), r"seq_len=17 is not allowed; it must be <= context_length=16"),
        V(lambda: activation_bytes(CFG, 1, 4, "bf16"), r"precision='bf16' is not allowed"),
        T(lambda: activation_bytes(CFG, 1, 4, "fp32", True), r"checkpoint_every must be an int, got True"),
    ],
    "adafactor_state_bytes": [
        T(lambda: adafactor_state_bytes("ab"), r"shapes must be an iterable of parameter shapes .* got 'ab'"),
        T(lambda: adafactor_state_bytes([6]), r"shapes\[0\] must be a shape \(a tuple of ints\), got 6"),
        T(lambda: adafactor_state_bytes([(2, 3.0)]), r"shapes\[0\]\[1\] must be an int, got 3\.0"),
        V(lambda: adafactor_state_bytes([(2, 3)], beta1=1.0), r"beta1=1\.0 is out of range"),
        V(lambda: adafactor_state_bytes([(2, 3)], dtype_bytes=0), r"dtype_bytes=0 is out of range"),
    ],
    "block_param_count": [
        T(lambda: block_param_count({"d_model": 8}), r"config must be a GPTConfig, got dict"),
    ],
    "blockwise_error_vs_float64": [
        T(lambda: blockwise_error_vs_float64([1.0, 2.0], True), r"x must be a torch\.Tensor, got list"),
        T(lambda: blockwise_error_vs_float64(torch.ones(4), 1), r"signed must be a bool, got 1"),
        V(lambda: blockwise_error_vs_float64(torch.zeros(0), True), r"x is empty"),
        V(lambda: blockwise_error_vs_float64(-torch.ones(4), False), r"x has negative entries .* \(signed=False\)"),
        V(lambda: blockwise_error_vs_float64(torch.tensor([NAN]), True), r"x contains NaN"),
        V(lambda: blockwise_error_vs_float64(torch.ones(4), True, 3), r"block_size=3 is not allowed"),
    ],
    "cache_nbytes": [
        T(lambda: cache_nbytes(None), r"cache must be a transformers cache .* got NoneType"),
        T(lambda: cache_nbytes([torch.ones(2), torch.ones(2)]), r"cache layer 0 must be a \(key, value\) pair"),
    ],
    "checkpoint_gradient_error": [
        T(lambda: checkpoint_gradient_error(nn.Linear(2, 2), 1, 1, 4), rf"model {NOT_GPT}"),
        V(lambda: checkpoint_gradient_error(tiny_gpt(), 0, 1, 4), r"every=0 is out of range"),
        V(lambda: checkpoint_gradient_error(tiny_gpt(), 1, 1, 17), r"seq_len=17 is out of range; allowed: \[1, 16\]"),
        V(lambda: checkpoint_gradient_error(share_layers(tiny_gpt(), 1), 2, 1, 4), r"every=2 is not allowed"),
        V(lambda: checkpoint_gradient_error(tiny_gpt().requires_grad_(False), 1, 1, 4),
          r"model has no parameter with requires_grad=True"),
    ],
    "document_sample": [
        T(lambda: document_sample(DOC.tolist(), 5), r"tokens must be a 1-D int64 tensor"),
        V(lambda: document_sample(DOC[:1], 1), r"tokens has 1 token\(s\)"),
        V(lambda: document_sample(DOC - 5, 5), r"tokens must hold token ids ≥ 0, got a minimum of -5"),
        V(lambda: document_sample(DOC, 40), r"start=40 is out of range; allowed: \[1, 39\]"),
        V(lambda: document_sample(DOC, 5, 0), r"window=0 is out of range"),
    ],
    "document_tokens": [
        T(lambda: document_tokens(3, len), r"path must be a str"),
        T(lambda: document_tokens("library/sqlite3.rst.txt", None), r"tokenizer must be a transformers tokenizer"),
    ],
    "finetune": [
        T(lambda: finetune("model", BATCHES, lr=1e-3), r"model must be a torch\.nn\.Module, got str"),
        T(_finetune(batches=[]), r"batches must be a non-empty sequence"),
        V(_finetune(optimizer="lion"), r"optimizer='lion' is not allowed"),
        V(_finetune(lr=0.0), r"lr=0\.0 is out of range"),
        V(_finetune(warmup=-1), r"warmup=-1 is out of range"),
        V(_finetune(grad_clip=NAN), r"grad_clip=nan is out of range"),
        T(_finetune(progress=1), r"progress must be one of \(False, True\), got the int 1"),
        T(_finetune(sample=DOC), r"sample must be a lab\.perplexity\.EvalSample .* got Tensor"),
        V(_finetune(sample=document_sample(DOC, 5)), r"sample has windows of 40 tokens, more than the model's"),
        V(lambda: finetune(tiny_gpt().requires_grad_(False), BATCHES, lr=1e-3), r"model has no parameter with"),
    ],
    "gpt3_layer_activation_bytes": [
        T(lambda: gpt3_layer_activation_bytes({"d_model": 8}, 1, 4), r"config must be a lab\.models\.gpt\.GPTConfig"),
        V(lambda: gpt3_layer_activation_bytes(CFG, 0, 4), r"batch=0 is out of range"),
        T(lambda: gpt3_layer_activation_bytes(CFG, 1, 4, dropout="no"), r"dropout must be one of \(False, True\)"),
    ],
    "llama_layer_activation_bytes": [
        T(lambda: llama_layer_activation_bytes({"d_model": 8}, 1, 4), r"config must be a lab\.models\.gpt\.GPTConfig"),
        V(lambda: llama_layer_activation_bytes(CFG, 1, -4), r"seq_len=-4 is out of range"),
        T(lambda: llama_layer_activation_bytes(CFG, 1, 4, fused_attention="yes"),
          r"fused_attention must be one of \(False, True\)"),
    ],
    "lora_training_memory": [
        T(lambda: lora_training_memory({"d_model": 8}, 2), r"config must be a lab\.models\.gpt\.GPTConfig"),
        V(lambda: lora_training_memory(CFG, 0), r"r=0 is out of range; allowed: \[1, 16\]"),
        T(lambda: lora_training_memory(CFG, 2, "q_proj"), r"targets must be an iterable of linear names"),
        V(lambda: lora_training_memory(CFG, 2, ("q",)), r"targets=\('q',\) is not allowed"),
        V(lambda: lora_training_memory(CFG, 2, base="int8"), r"base='int8' is not allowed"),
        V(lambda: lora_training_memory(CFG, 2, base="int4"), r"group_size=None is not allowed with base='int4'"),
        V(lambda: lora_training_memory(CFG, 2, base="int4", group_size=64), r"group_size=64 is not allowed"),
    ],
    "lr_sweep": [
        T(lambda: lr_sweep("model", BATCHES, [1e-3], _sample()), r"model must be a torch\.nn\.Module, got str"),
        T(_sweep("1e-3"), r"rates must be a non-empty sequence of peak learning rates, got '1e-3'"),
        V(_sweep([1e-3, -1.0]), r"rates\[1\]=-1\.0 is out of range"),
        V(_sweep([1e-3, 1e-3]), r"rates=\[0\.001, 0\.001\] repeats a rate"),
        T(_sweep(sample=None), r"sample must be a lab\.perplexity\.EvalSample .* got NoneType"),
        T(_sweep(lora=["q_proj"]), r"lora must be None or a dict"),
    ],
    "matmul_param_count": [
        T(lambda: matmul_param_count("cfg"), r"config must be a lab\.models\.gpt\.GPTConfig, got str"),
    ],
    "max_param_diff_vs_transformers": [
        T(lambda: max_param_diff_vs_transformers("model", BATCHES), r"model must be a torch\.nn\.Module, got str"),
        T(lambda: max_param_diff_vs_transformers(tiny_gpt(), IDS), r"batches must be a sequence .* got Tensor"),
        V(lambda: max_param_diff_vs_transformers(tiny_gpt(), []), r"batches=\[\] is empty"),
        V(lambda: max_param_diff_vs_transformers(tiny_gpt().requires_grad_(False), BATCHES),
          r"model \(GPT\) has no parameter with requires_grad=True"),
        V(lambda: max_param_diff_vs_transformers(tiny_gpt(), BATCHES, lr=1e-3), r"lr=0\.001 is not allowed"),
    ],
    "measure_saved_activations_cpu": [
        T(lambda: measure_saved_activations_cpu(nn.Linear(2, 2), 1, 4), rf"model {NOT_GPT}, got Linear"),
        V(lambda: measure_saved_activations_cpu(tiny_gpt(), 1, 17), r"seq_len=17 is out of range; allowed: \[1, 16\]"),
        V(lambda: measure_saved_activations_cpu(tiny_gpt(), 1, 4, "bf16"), r"precision='bf16' is not"),
        V(lambda: measure_saved_activations_cpu(tiny_gpt().to("meta"), 1, 4), r"model must be on the CPU"),
        V(lambda: measure_saved_activations_cpu(tiny_gpt().requires_grad_(False), 1, 4), r"model has no parameter"),
    ],
    "measure_training_memory_cpu": [
        T(lambda: measure_training_memory_cpu(nn.Linear(2, 2), 1, 4), rf"model {NOT_GPT}, got Linear"),
        V(lambda: measure_training_memory_cpu(tiny_gpt(), 1, 17), r"seq_len=17 is out of range; allowed: \[1, 16\]"),
        V(lambda: measure_training_memory_cpu(tiny_gpt(), 1, 4, "lion"), r"optimizer='lion' is not allowed"),
        V(lambda: measure_training_memory_cpu(tiny_gpt(), 1, 4, precision="bf16"), r"precision='bf16' is not"),
        V(lambda: measure_training_memory_cpu(tiny_gpt().to("meta"), 1, 4), r"model must be on the CPU"),
        V(lambda: measure_training_memory_cpu(tiny_gpt().requires_grad_(False), 1, 4), r"model has no parameter"),
    ],
    "merge_logit_error": [
        T(lambda: merge_logit_error("model", IDS), r"model must be a torch\.nn\.Module, got str"),
        V(lambda: merge_logit_error(tiny_gpt(), IDS), r"model \(GPT\) has no LoRALinear to merge"),
        T(lambda: merge_logit_error(_lora_gpt(), IDS.float()), r"idx must have a dtype in"),
        V(lambda: merge_logit_error(_lora_gpt(), IDS + 61), r"idx must hold token ids in \[0, vocab_size=61\)"),
    ],
    "offload_nbytes": [
        T(lambda: offload_nbytes(nn.Linear(2, 2)), r"model must be a lab GPT \(or an OffloadedGPT\), got Linear"),
    ],
    "optimizer_state_bytes": [
        V(lambda: optimizer_state_bytes("lion", 10), r"optimizer='lion' is not allowed"),
        V(lambda: optimizer_state_bytes("adamw", -10), r"n_params=-10 is out of range"),
        T(lambda: optimizer_state_bytes("adamw", 10, True), r"state_bytes must be an int, got True"),
        V(lambda: optimizer_state_bytes("adafactor", 6), r"optimizer='adafactor' needs the parameter shapes"),
        V(lambda: optimizer_state_bytes("adam8bit", 7, 4, [(2, 3)]), r"shapes hold 6 parameters but n_params=7"),
    ],
    "optimizer_state_tensors": [
        T(lambda: optimizer_state_tensors(tiny_gpt()), r"opt must be a torch\.optim\.Optimizer, got GPT"),
    ],
    "plot_format_ranges": [
        T(lambda: plot_format_ranges(ax="left"), r"ax must be a matplotlib Axes or None, got str"),
    ],
    "plot_parameter_breakdown": [
        T(lambda: plot_parameter_breakdown("model"), r"model must be a torch\.nn\.Module, got str"),
        V(lambda: plot_parameter_breakdown(nn.Linear(2, 2), by="layer"), r"by='layer' is not allowed"),
        T(lambda: plot_parameter_breakdown(nn.Linear(2, 2), ax="left"), r"ax must be a matplotlib Axes or None"),
    ],
    "plot_rounding": [
        T(lambda: plot_rounding([1.0, 2.0]), r"x must be a torch\.Tensor, got list"),
        V(lambda: plot_rounding(torch.tensor([0.0, 2.0])), r"x must hold positive finite numbers"),
        V(lambda: plot_rounding(torch.ones(2, 2)), r"x must have 1 dimensions"),
        T(lambda: plot_rounding(ax=3), r"ax must be a matplotlib Axes or None, got int"),
    ],
    "recompute_time_ratio": [
        T(lambda: recompute_time_ratio(nn.Linear(2, 2), 1, 4, 1), rf"model {NOT_GPT}"),
        V(lambda: recompute_time_ratio(tiny_gpt(), 1, 4, 1, repeats=0), r"repeats=0 is out of range"),
        T(lambda: recompute_time_ratio(tiny_gpt(), 1, 4, None), r"every must be an int, got None"),
        V(lambda: recompute_time_ratio(tiny_gpt(), 0, 4, 1), r"batch=0 is out of range"),
    ],
    "round_to": [
        T(lambda: round_to([1.0], torch.bfloat16), r"x must be a torch\.Tensor, got list"),
        T(lambda: round_to(torch.ones(1, dtype=torch.complex64), torch.bfloat16), r"x must hold real numbers"),
        T(lambda: round_to(torch.ones(1), "bf16"), r"dtype must be a torch dtype .* got 'bf16'"),
        V(lambda: round_to(torch.ones(1), torch.float8_e8m0fnu), r"dtype=torch\.float8_e8m0fnu is not allowed"),
    ],
    "spacing": [
        T(lambda: spacing(1.0, torch.bfloat16), r"x must be a torch\.Tensor, got float"),
        V(lambda: spacing(torch.tensor([NAN]), torch.bfloat16), r"x contains NaN or infinite entries"),
        T(lambda: spacing(torch.ones(1, dtype=torch.bool), torch.bfloat16), r"x must hold real numbers"),
        V(lambda: spacing(torch.ones(1), torch.int8), r"dtype=torch\.int8 is not allowed"),
    ],
    "state_bytes": [
        T(lambda: state_bytes("model"), r"model must be a torch\.nn\.Module, got str"),
        T(lambda: state_bytes(tiny_gpt(), "bf16"), r"dtype must be a torch dtype .* got 'bf16'"),
        V(lambda: state_bytes(tiny_gpt(), torch.int8), r"dtype=torch\.int8 is not allowed"),
    ],
    "storage_bytes": [
        T(lambda: storage_bytes({"a": torch.ones(2)}), r"tensors must be an iterable of tensors \(a dict: pass"),
        T(lambda: storage_bytes([torch.ones(2), None]), r"tensors\[1\] must be a torch\.Tensor, got None"),
        V(lambda: storage_bytes([torch.ones(2, device="meta")]), r"tensors\[0\] is on the meta device"),
    ],
    "underflow_fraction": [
        T(lambda: underflow_fraction("grads"), r"grads must be an iterable of gradient tensors"),
        T(lambda: underflow_fraction([None]), r"grads\[0\] must be a torch\.Tensor, got NoneType"),
        V(lambda: underflow_fraction([torch.tensor([NAN, 1e-9])]), r"grads\[0\] contains NaN or infinite entries"),
        V(lambda: underflow_fraction([torch.ones(2)], scale=0), r"scale=0 is out of range"),
        V(lambda: underflow_fraction([torch.zeros(2)]), r"grads hold no nonzero value"),
    ],
    "unique_parameters": [
        T(lambda: unique_parameters("model"), r"model must be a torch\.nn\.Module, got str"),
        T(lambda: unique_parameters(nn.Linear), r"model must be a torch\.nn\.Module, got type"),
    ],
    "untied_state_dict": [
        T(lambda: untied_state_dict({"weight": torch.ones(2)}), r"model must be a torch\.nn\.Module, got dict"),
    ],
}
