"""Chapter 1, parameter management: counting, memory, precision, storage, offloading, sharing.

One module per idea; the most used functions are re-exported here.
"""

from lab.params.counting import count_parameters, gpt_param_count, model_bytes, parameter_table
from lab.params.lazy import build_on_meta, load_eager, load_lazy, measure_load_peak_rss
from lab.params.memory import inference_memory, kv_cache_bytes, training_memory
from lab.params.offload import OffloadedGPT
from lab.params.precision import DynamicLossScaler, float_format_info
from lab.params.safetensors_io import load_safetensors, save_safetensors
from lab.params.sharded import load_sharded, save_sharded
from lab.params.sharing import compare_sharing, share_layers, tie_weights, untie_weights

__all__ = [
    "count_parameters", "gpt_param_count", "model_bytes", "parameter_table",
    "build_on_meta", "load_eager", "load_lazy", "measure_load_peak_rss",
    "inference_memory", "kv_cache_bytes", "training_memory",
    "OffloadedGPT", "DynamicLossScaler", "float_format_info",
    "load_safetensors", "save_safetensors", "load_sharded", "save_sharded",
    "compare_sharing", "share_layers", "tie_weights", "untie_weights",
]
