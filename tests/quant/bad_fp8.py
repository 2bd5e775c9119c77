"""The bad-input cases of lab.quant's FP8 training (lab.quant.fp8_scaling, fp8_linear, fp8_training; part of
tests/quant/test_bad_input.py's table)."""

from __future__ import annotations

import torch
from torch import nn

from lab.quant import FP8Scaler, LowPrecisionLinear, fp8_scale, low_precision_model, restore_linears, train_with_recipe
from tests.bad_input import NOT_GPT, T, V
from tests.tiny_models import tiny_gpt

NAN = torch.tensor([1.0, float("nan")])
TOKENS = torch.randint(0, 61, (16,), generator=torch.Generator().manual_seed(3))

FP8 = {
    "FP8Scaler": [V(lambda: FP8Scaler("e4m2"), r"fmt='e4m2' is not allowed"),
                  V(lambda: FP8Scaler("e4m3", "dynamic"), r"scaling='dynamic' is not allowed"),
                  V(lambda: FP8Scaler("e4m3", "delayed", history_len=0), r"history_len=0 is out of range"),
                  T(lambda: FP8Scaler("e4m3").quantize(torch.arange(3)), r"x must be a floating-point tensor"),
                  V(lambda: FP8Scaler("e4m3").quantize(NAN), r"x holds NaN or infinite entries")],
    "fp8_scale": [V(lambda: fp8_scale(0.0, "e4m3"), r"amax=0.0 is out of range"),
                  V(lambda: fp8_scale(1.0, "fp8"), r"fmt='fp8' is not allowed"),
                  V(lambda: fp8_scale(1.0, "e5m2", margin=-1), r"margin=-1 is out of range")],
    "LowPrecisionLinear": [
        T(lambda: LowPrecisionLinear(nn.Conv1d(2, 2, 1)), r"linear must be an nn.Linear, got Conv1d"),
        V(lambda: LowPrecisionLinear(nn.Linear(16, 8), "fp16"), r"recipe='fp16' is not allowed"),
        V(lambda: LowPrecisionLinear(nn.Linear(16, 8))(torch.ones(2, 3)), r"x must be float32 \(\.\.\., 16\)"),
        V(lambda: LowPrecisionLinear(nn.Linear(16, 8))(torch.ones(2, 16, dtype=torch.float64)), r"x must be float32")],
    "low_precision_model": [T(lambda: low_precision_model(nn.Linear(16, 8), "bf16"), NOT_GPT),
                            V(lambda: low_precision_model(tiny_gpt(), "fp4"), r"recipe='fp4' is not allowed"),
                            T(lambda: low_precision_model(tiny_gpt().to(torch.bfloat16), "bf16"),
                              r"must be a float32 nn.Linear")],
    "restore_linears": [T(lambda: restore_linears(nn.Linear(16, 8)), NOT_GPT),
                        V(lambda: restore_linears(tiny_gpt()), r"model has no LowPrecisionLinear to restore")],
    "train_with_recipe": [
        V(lambda: train_with_recipe(tiny_gpt(), "fp4", TOKENS, {}, 0), r"recipe='fp4' is not allowed"),
        V(lambda: train_with_recipe(tiny_gpt(), "bf16", TOKENS, {}, -1), r"seed=-1 is out of range"),
        T(lambda: train_with_recipe(tiny_gpt(), "bf16", TOKENS, {"steps": 1}, 0),
          r"settings must be a dict with the keys of lab.quant.fp8_training.SETTINGS")],
}
