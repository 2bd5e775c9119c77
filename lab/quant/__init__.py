"""Chapter 3, quantization: affine grids, observers, GPTQ, SmoothQuant/AWQ scaling, int4 packing, quantized linears
(int4, W8A8 and LLM.int8()'s decomposition, and QLoRA's NF4 base), minifloats and the MX / NVFP4 block formats,
per-tensor FP8 scaling and FP8 training (chapter 5's FP8 section)."""

from lab.formats.int4 import pack_int4, pack_int4_v2, unpack_int4, unpack_int4_v2
from lab.quant.affine import (QuantizedTensor, dequantize, fake_quantize, fake_quantize_with, qparams, quantize,
                              quantize_with, rtn_quantize)
from lab.quant.calibration import size_comparisons
from lab.quant.fp8_linear import LowPrecisionLinear, low_precision_model, restore_linears
from lab.quant.fp8_scaling import FP8Scaler, fp8_scale
from lab.quant.fp8_training import train_with_recipe
from lab.quant.gptq import gptq_quantize
from lab.quant.int8_decomposition import Int8DecomposedLinear, int8_decomposed_model, outlier_columns
from lab.quant.linear import Int4Linear, W8A8Linear, int4_model, w8a8_quantize_model
from lab.quant.model import quantize_model, rtn_quantize_model
from lab.quant.mx import MXTensor, fp4_weight, mx_quantize_model, quantize_mx
from lab.quant.nf4_linear import NF4Linear, nf4_model
from lab.quant.observers import ChannelAbsMaxObserver, MinMaxObserver, MSEObserver, PercentileObserver
from lab.quant.packing import pack_quantized_weight
from lab.quant.qat import finish_qat, prepare_qat
from lab.quant.scaling import (activation_abs_max, awq_scale_search, group_smoothing_factors, plant_outliers,
                               smoothing_factors, smoothquant)
from lab.quant.seeds import weight_name, weight_runs

__all__ = [
    "QuantizedTensor", "dequantize", "fake_quantize", "fake_quantize_with", "qparams", "quantize", "quantize_with",
    "gptq_quantize", "Int4Linear", "W8A8Linear", "int4_model", "w8a8_quantize_model", "quantize_model", "rtn_quantize",
    "rtn_quantize_model", "ChannelAbsMaxObserver", "MinMaxObserver", "MSEObserver", "PercentileObserver",
    "pack_int4", "pack_int4_v2", "pack_quantized_weight", "unpack_int4", "unpack_int4_v2", "activation_abs_max",
    "awq_scale_search",
    "group_smoothing_factors", "smoothing_factors", "smoothquant", "plant_outliers", "prepare_qat", "finish_qat",
    "Int8DecomposedLinear", "int8_decomposed_model", "outlier_columns", "size_comparisons",
    "NF4Linear", "nf4_model", "weight_name", "weight_runs",
    "FP8Scaler", "fp8_scale", "LowPrecisionLinear", "low_precision_model", "restore_linears", "train_with_recipe",
    "MXTensor", "quantize_mx", "fp4_weight", "mx_quantize_model",
]
