"""Kernel modules re-imported under Triton's interpreter for one test module, then restored."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

from lab.core import runtime


def reloaded(*modules: ModuleType) -> Iterator[tuple[ModuleType, ...]]:
    """Yield ``modules`` reloaded under TRITON_INTERPRET=1 (@triton.jit reads it at definition time), in
    order; reload them again, compiled, afterwards. For a module-scoped fixture: ``yield from reloaded(...)``."""
    with runtime.triton_interpret():
        yield tuple(importlib.reload(m) for m in modules)
    for m in modules:
        importlib.reload(m)
