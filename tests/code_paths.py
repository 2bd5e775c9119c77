"""torch's CPU code paths: the environment that makes torch, MKL and oneDNN compute as on another CPU."""

from __future__ import annotations

import os

# A CPU code path of torch, set in the three libraries that each pick one by the CPU: ATen's own kernels
# (ATEN_CPU_CAPABILITY), MKL's BLAS and LAPACK (MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA).
# A CPU with AVX2 and no AVX-512 runs all three on AVX2; capping ATen alone on a CPU with AMX makes torch's
# bf16 attention pack for AMX and fail in ATen's AVX2 kernel ("pack_vnni2 is only supported when avx512
# is supported"). "mkl-avx2": ATen on AVX-512, MKL and oneDNN on AVX2, as on an AMD CPU with AVX-512;
# "aten-avx2" and "aten-default": ATen alone capped (MKL and oneDNN as the CPU has them), the setting of a
# plain `ATEN_CPU_CAPABILITY=avx2` on a CPU without AMX (on this one, the notebooks that train in bf16 fail).
CODE_PATHS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
}


def code_path_env(capability: str | None) -> dict[str, str]:
    """The environment of torch's CPU code path ``capability`` (an ATEN_CPU_CAPABILITY value, or a
    name of ``CODE_PATHS``; None or "": this CPU's own). A variable already set in the environment
    wins: ``MKL_ENABLE_INSTRUCTIONS=AVX512 ATEN_CPU_CAPABILITY=avx2`` keeps its MKL."""
    if not capability:                  # None, or ATEN_CPU_CAPABILITY set empty (torch ignores it)
        return {}
    named = {"avx512": "native"}.get(capability, capability)
    if named not in CODE_PATHS:
        raise ValueError(f"capability={capability!r} is not allowed; allowed: None, 'avx512', "
                         f"{', '.join(map(repr, CODE_PATHS))}")
    return {name: value for name, value in CODE_PATHS[named].items() if name not in os.environ}
