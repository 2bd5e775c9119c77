"""What the property-based tests (tests/*/test_properties.py) share: strategies, seeded tensors, non-contiguous views.
Every hypothesis test runs derandomized, without a deadline (the profile in tests/conftest.py)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

SEEDS = st.integers(0, 2**16)
NOT_INTS = st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=2), st.none())
VIEWS = st.sampled_from(["transposed", "strided"])


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed), dtype=dtype)


def view(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as ``t`` held as a transposed view (first two dimensions), a strided view (every other entry
    of the last dimension) or rows of a wider tensor ("rows": unit stride along the last dimension)."""
    if how == "transposed":
        v = t.transpose(0, 1).contiguous().transpose(0, 1)
    else:
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        part = slice(None, None, 2) if how == "strided" else slice(None, t.shape[-1])
        wide[..., part] = t
        v = wide[..., part]
    assert torch.equal(v, t)
    return v
