"""lab.kernels.aot.sm90: CTAs per SM and the resource that limits them."""

from __future__ import annotations

import pytest

from lab.kernels.aot import sm90


@pytest.mark.parametrize("registers, shared, warps, ctas, limit", [
    (255, 147456, 8, 1, "registers"),       # 255 regs → 8192 per warp → 8 warps per SM
    (128, 16384, 4, 4, "registers"),        # 4096 per warp → 16 warps → 4 blocks
    (32, 100 * 1024, 4, 2, "shared_memory"),  # 228 KB / (100 KB + 1 KB reserved)
    (16, 0, 1, 32, "blocks"),
    (32, 0, 16, 4, "warps"),
])
def test_occupancy(registers, shared, warps, ctas, limit):
    result = sm90.occupancy(registers, shared, warps)
    assert result["ctas_per_sm"] == ctas and limit in result["limited_by"]
