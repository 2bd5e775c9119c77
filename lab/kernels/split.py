"""How many ways to split the reduction dimension of a decode GEMV (split-K), shared by int4 v2 and the dense
kernel: the split that balances the SMs of an H100 / H200.

A GEMV of ``tiles`` output tiles whose reduction has ``steps`` steps (groups of g columns, or BLOCK_K columns)
split S ways launches tiles · S programs, placed round-robin on the 132 SMs: the busiest SM runs
⌈tiles · S / 132⌉ programs of up to ⌈steps / S⌉ steps each. `balanced_split` takes the S ≤ ``most`` that
minimises that product; of the splits that tie, the fewest programs that still give every SM one (fewer fp32
partial sums to write and add), or the most programs when none does. At M = 1 on an 8192 × 8192 int4 layer
(32 tiles of 256 outputs, 64 groups of 128) "about 4 programs per SM" would be S = 17: 544 programs, 5 on
some SMs, 20 group-steps on the busiest; S = 8 gives 256 programs and 16, an even share rounded up.
"""

from __future__ import annotations

import math

from lab.core.checks import check_int

SMS = 132                         # streaming multiprocessors of an H100 / H200 SXM


def busiest_sm_steps(tiles: int, steps: int, split: int) -> int:
    """⌈tiles · S / 132⌉ · ⌈steps / S⌉: the reduction steps the busiest SM runs."""
    return math.ceil(tiles * split / SMS) * math.ceil(steps / split)


def balanced_split(tiles: int, steps: int, most: int) -> int:
    """S in [1, min(steps, most)] (module docstring)."""
    for name, value in dict(tiles=tiles, steps=steps, most=most).items():
        check_int(name, value)
    splits = range(1, min(steps, most) + 1)
    fewest = min(busiest_sm_steps(tiles, steps, S) for S in splits)
    ties = [S for S in splits if busiest_sm_steps(tiles, steps, S) == fewest]
    filling = [S for S in ties if tiles * S >= SMS]
    return min(filling) if filling else max(ties)
