"""lab.doctor: what it reports follows the machine (no GPU here) and the TRITON_INTERPRET switch."""

import subprocess
import sys

import pytest
import torch

from lab import doctor

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU report")
def test_without_a_gpu_every_accelerated_path_names_its_fallback(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert doctor.triton_mode() == ("unavailable", "no CUDA GPU")
    assert all(status == "PyTorch fallback: no CUDA GPU" for status in doctor.paths().values())
    line = doctor.summary()
    assert "device cpu" in line and f"torch {torch.__version__}" in line
    assert f"{len(doctor.ACCELERATED)} of {len(doctor.ACCELERATED)} accelerated paths" in line


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU report")
def test_the_interpreter_runs_the_triton_kernels_on_the_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert doctor.triton_mode()[0] == "interpreted"
    statuses = doctor.paths()
    kernels = [name for name, needs in doctor.ACCELERATED.items() if needs == "triton"]
    assert all(statuses[name] == "Triton interpreter (CPU)" for name in kernels)
    assert all(statuses[name].startswith("PyTorch fallback") for name in statuses if name not in kernels)


def test_the_command_prints_versions_device_mode_and_paths():
    out = subprocess.run([sys.executable, "-m", "lab.doctor"], capture_output=True, text=True, check=True).stdout
    for fragment in ("versions:", f"torch         {doctor.versions()['torch']}", "device:", "triton mode:",
                     "paths:", *doctor.ACCELERATED, "kernels on a CUDA device:"):
        assert fragment in out


def test_the_kernel_list_follows_the_layers_rules():
    rows = {(layer, shapes): kernel for layer, shapes, kernel in doctor.kernels()}
    assert rows["Sparse24Linear", "in_features a multiple of 32, any M"] == "sparse24_matmul_v2"
    assert rows["Sparse24Linear", "other in_features"] == "sparse24_matmul"
    assert rows["PagedKVCache", "decode, head_dim and block_size ≥ 16"] == "paged_attention_decode_v2"
    assert rows["PagedKVCache", "decode, smaller heads or blocks"] == "paged_attention_decode"
    assert rows["Int4Linear", "g in (64, 128), M ≤ 16"] == "int4_gemv_v2"
    assert rows["Int4Linear", "g in (64, 128), 16 < M ≤ 128"] == "int4_gemv_v2 on chunks of 16 rows"
    assert rows["Int4Linear", "g in (64, 128), M > 128"].startswith("dequantize_int4")
    assert rows["Int4Linear", "other g, any M"] == "int4_weight_only_matmul"
