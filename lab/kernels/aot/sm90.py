"""The sm_90 (Hopper) target of the ahead-of-time compile: its resource limits and the occupancy they allow.

CTAs per SM = min(registers, shared memory, warps, blocks) where, per SM: 65,536 registers allocated per warp
in units of 256; 228 KB of shared memory with 1 KB reserved per block (a block may have at most 227 KB);
64 warps; 32 blocks.
"""

from __future__ import annotations

import math

ARCH = 90
WARP_SIZE = 32
DEVICE_LABEL = "sm_90 (ahead-of-time compile, no GPU)"
REGISTERS_PER_SM = 65_536
REGISTER_ALLOCATION_UNIT = 256          # registers are allocated per warp in units of 256
SHARED_PER_SM = 228 * 1024
SHARED_PER_BLOCK_MAX = 227 * 1024
SHARED_RESERVED_PER_BLOCK = 1024
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
LIMITS = {"registers_per_sm": REGISTERS_PER_SM, "register_allocation_unit": REGISTER_ALLOCATION_UNIT,
          "shared_per_sm": SHARED_PER_SM, "shared_per_block_max": SHARED_PER_BLOCK_MAX,
          "shared_reserved_per_block": SHARED_RESERVED_PER_BLOCK, "max_warps_per_sm": MAX_WARPS_PER_SM,
          "max_blocks_per_sm": MAX_BLOCKS_PER_SM}


def target():
    """Triton's ``GPUTarget("cuda", 90, 32)``."""
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", ARCH, WARP_SIZE)


def occupancy(registers: int, shared_bytes: int, num_warps: int) -> dict:
    """CTAs per SM on sm_90 and the limit of each resource."""
    registers_per_warp = math.ceil(max(registers, 1) * WARP_SIZE / REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    limits = {"registers": REGISTERS_PER_SM // registers_per_warp // num_warps,
              "shared_memory": SHARED_PER_SM // (shared_bytes + SHARED_RESERVED_PER_BLOCK),
              "warps": MAX_WARPS_PER_SM // num_warps, "blocks": MAX_BLOCKS_PER_SM}
    ctas = min(limits.values())
    return {"ctas_per_sm": ctas, "warps_per_sm": ctas * num_warps,
            "limited_by": [name for name, value in limits.items() if value == ctas], "limits": limits}
