"""Every public name of `lab` has a bad-input test.

The public names of a package or top-level module of `lab` are its ``__all__``. The package ``lab.X`` has
``tests/X/test_bad_input.py``, the module ``lab.X`` has ``tests/test_X_bad_input.py``; each table's ``CASES``
(calls that must be refused, see `tests.bad_input`) and ``NO_INPUT`` (names that take no argument a caller could
get wrong, with the reason) together cover ``__all__`` exactly. Every function or class a notebook imports from
`lab` is a public name. A name added to a
package without a case, or a case left behind for a name that is gone, fails here; and every case of every table
runs here (`test_refused`), so a table cannot be left out of the run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest

import lab
from tests.bad_input import assert_refused

# lab.bench is the command line at the top of the import graph: its arguments are argparse's.
NOT_A_LIBRARY = {"lab.bench"}


PARTS = {info.name: info.ispkg for info in pkgutil.iter_modules(lab.__path__, "lab.") if info.name not in NOT_A_LIBRARY}


def _table(part: str) -> str:
    """The test module that holds ``part``'s table."""
    short = part.removeprefix("lab.")
    return f"tests.{short}.test_bad_input" if PARTS[part] else f"tests.test_{short}_bad_input"


def _every_case() -> list:
    """Every table's calls, as pytest parameters with ids ``<part>:<name>-<index>``."""
    return [pytest.param(bad, id=f"{part.removeprefix('lab.')}:{name}-{i}") for part in sorted(PARTS)
            for name, bads in importlib.import_module(_table(part)).CASES.items() for i, bad in enumerate(bads)]


@pytest.mark.parametrize("bad", _every_case())
def test_refused(bad):
    assert_refused(bad)


def test_every_part_declares_its_public_names():
    undeclared = [part for part in sorted(PARTS) if not hasattr(importlib.import_module(part), "__all__")]
    assert undeclared == [], "give these an __all__"


@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_public_name_has_a_bad_input_case(part):
    public = set(importlib.import_module(part).__all__)
    table = importlib.import_module(_table(part))
    cased, exempt = set(table.CASES), set(table.NO_INPUT)
    assert public - cased - exempt == set(), "add a bad-input case (or a NO_INPUT reason) for these"
    assert (cased | exempt) - public == set(), "these cases name no public name"
    assert cased & exempt == set(), "a name is either cased or exempt"
    assert all(table.CASES[name] for name in cased), "every cased name needs at least one call"
    assert all(reason.strip() for reason in table.NO_INPUT.values()), "every exemption needs its reason"


def _notebook_imports() -> set[tuple[str, str]]:
    """(module, name) of every ``from lab... import name`` in the notebooks' code cells."""
    found = set()
    for notebook in (Path(lab.__file__).parent.parent / "notebooks").glob("*.ipynb"):
        for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            lines = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            found |= {(node.module, alias.name) for node in ast.walk(ast.parse(lines))
                      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lab")
                      for alias in node.names}
    return found


def test_every_function_a_notebook_imports_is_public():
    """What the book's notebooks call is what a reader calls: each function or class they import from `lab` is
    some part's public name (so the tables above cover it); modules and constants are not checked."""
    def key(obj) -> tuple:            # where it is defined: a module reloaded by another test keeps its names
        return getattr(obj, "__module__", None), getattr(obj, "__qualname__", id(obj))

    public = {key(getattr(importlib.import_module(part), name)) for part in PARTS
              for name in importlib.import_module(part).__all__}
    imported = {(module, name): getattr(importlib.import_module(module), name, None)   # None: a submodule
                for module, name in _notebook_imports()}
    private = sorted(f"{module}.{name}" for (module, name), obj in imported.items()
                     if callable(obj) and not inspect.ismodule(obj) and key(obj) not in public)
    assert private == [], "add these to their package's __all__ and its bad-input table"
