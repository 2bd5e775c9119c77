"""Chapter 1, parameter management: counting, memory, precision, storage, offloading, sharing, and
training with fewer bytes (activation checkpointing, Adafactor, 8-bit Adam, LoRA / QLoRA).

One module per idea; the most used functions are re-exported here.
"""

from lab.params.adafactor import Adafactor
from lab.params.adam8bit import Adam8bit
from lab.params.checkpointing import checkpoint_layers
from lab.params.counting import count_parameters, gpt_param_count, model_bytes, parameter_table
from lab.params.lazy import build_on_meta, load_eager, load_lazy, measure_load_peak_rss
from lab.params.lora import LoRALinear, add_lora, lora_memory, merge_lora
from lab.params.memory import inference_memory, kv_cache_bytes, training_memory
from lab.params.offload import OffloadedGPT
from lab.params.precision import DynamicLossScaler, float_format_info
from lab.params.safetensors_io import load_safetensors, save_safetensors
from lab.params.sharded import load_sharded, save_sharded
from lab.params.sharing import compare_sharing, share_layers, tie_weights, untie_weights

__all__ = [
    "Adafactor",
    "Adam8bit",
    "DynamicLossScaler",
    "LoRALinear",
    "OffloadedGPT",
    "add_lora",
    "build_on_meta",
    "checkpoint_layers",
    "compare_sharing",
    "count_parameters",
    "float_format_info",
    "gpt_param_count",
    "inference_memory",
    "kv_cache_bytes",
    "load_eager",
    "load_lazy",
    "load_safetensors",
    "load_sharded",
    "lora_memory",
    "measure_load_peak_rss",
    "merge_lora",
    "model_bytes",
    "parameter_table",
    "save_safetensors",
    "save_sharded",
    "share_layers",
    "tie_weights",
    "training_memory",
    "untie_weights",
]
