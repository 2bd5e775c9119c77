"""The environment of a CPU code path: all three libraries that pick one, what the user set kept."""

from __future__ import annotations

import pytest

from tests.code_paths import CODE_PATHS, code_path_env


def test_code_paths_set_all_three_libraries_and_keep_what_is_set(monkeypatch):
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert code_path_env("avx2") == {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert code_path_env(None) == {} and code_path_env("avx512") == {}
    assert set(CODE_PATHS["default"]) == {"ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA"}
    with pytest.raises(ValueError, match="capability='sse9' is not allowed"):
        code_path_env("sse9")
    assert code_path_env("") == {}          # ATEN_CPU_CAPABILITY= (empty): torch ignores it, so do we
