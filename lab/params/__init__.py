"""Chapter 1, parameter management: counting, memory, precision, storage, offloading, sharing, and
training with fewer bytes (activation checkpointing, Adafactor, 8-bit Adam, LoRA / QLoRA).

One module per idea; the most used functions are re-exported here.
"""

from lab.params.adafactor import Adafactor, adafactor_state_bytes, max_param_diff_vs_transformers
from lab.params.adam8bit import Adam8bit, blockwise_error_vs_float64
from lab.params.checkpointing import (checkpoint_gradient_error, checkpoint_layers, checkpoint_segments,
                                      measure_activation_peak_cpu, optimal_segments, recompute_time_ratio,
                                      segment_checkpoint_bytes, segment_gradient_error, segment_time_ratio)
from lab.params.counting import (block_param_count, count_parameters, gpt_param_count, model_bytes, parameter_table,
                                 plot_parameter_breakdown, state_bytes, unique_parameters)
from lab.params.finetune import document_sample, document_tokens, finetune, lr_sweep
from lab.params.lazy import build_on_meta, load_eager, load_lazy, measure_load_peak_rss, untied_state_dict
from lab.params.lora import (LoRALinear, add_lora, lora_memory, lora_training_memory, merge_logit_error, merge_lora,
                             qlora_model)
from lab.params.measured_memory import (cache_nbytes, measure_saved_activations_cpu, measure_training_memory_cpu,
                                        optimizer_state_tensors, storage_bytes)
from lab.params.memory import (activation_bytes, gpt3_layer_activation_bytes, inference_memory, kv_cache_bytes,
                               llama_layer_activation_bytes, matmul_param_count, optimizer_state_bytes, training_memory)
from lab.params.offload import OffloadedGPT, offload_nbytes
from lab.params.precision import (DynamicLossScaler, float_format_info, plot_format_ranges, plot_rounding, round_to,
                                  spacing, underflow_fraction)
from lab.params.safetensors_io import load_safetensors, save_safetensors
from lab.params.sharded import load_sharded, save_sharded
from lab.params.sharing import compare_sharing, share_layers, sharing_variant, tie_weights, untie_weights
from lab.params.stable_embedding import StableEmbedding, adam8bit_param_groups, stable_embedding

__all__ = [
    "Adafactor",
    "Adam8bit",
    "DynamicLossScaler",
    "LoRALinear",
    "OffloadedGPT",
    "StableEmbedding",
    "activation_bytes",
    "adafactor_state_bytes",
    "adam8bit_param_groups",
    "add_lora",
    "block_param_count",
    "blockwise_error_vs_float64",
    "build_on_meta",
    "cache_nbytes",
    "checkpoint_gradient_error",
    "checkpoint_layers",
    "checkpoint_segments",
    "compare_sharing",
    "count_parameters",
    "document_sample",
    "document_tokens",
    "finetune",
    "float_format_info",
    "gpt3_layer_activation_bytes",
    "gpt_param_count",
    "inference_memory",
    "kv_cache_bytes",
    "llama_layer_activation_bytes",
    "load_eager",
    "load_lazy",
    "load_safetensors",
    "load_sharded",
    "lora_memory",
    "lora_training_memory",
    "lr_sweep",
    "matmul_param_count",
    "max_param_diff_vs_transformers",
    "measure_activation_peak_cpu",
    "measure_load_peak_rss",
    "measure_saved_activations_cpu",
    "measure_training_memory_cpu",
    "merge_logit_error",
    "merge_lora",
    "model_bytes",
    "offload_nbytes",
    "optimal_segments",
    "optimizer_state_bytes",
    "optimizer_state_tensors",
    "parameter_table",
    "plot_format_ranges",
    "plot_parameter_breakdown",
    "plot_rounding",
    "qlora_model",
    "recompute_time_ratio",
    "round_to",
    "save_safetensors",
    "save_sharded",
    "segment_checkpoint_bytes",
    "segment_gradient_error",
    "segment_time_ratio",
    "share_layers",
    "sharing_variant",
    "spacing",
    "stable_embedding",
    "state_bytes",
    "storage_bytes",
    "tie_weights",
    "training_memory",
    "underflow_fraction",
    "unique_parameters",
    "untie_weights",
    "untied_state_dict",
]
