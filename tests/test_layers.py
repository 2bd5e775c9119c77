"""lab's imports point down: floor by floor, no cycle, nothing below the command line imports `lab.bench`.

The graph is built from the source (module-level and function-level imports alike, so a cycle cannot hide
behind an import inside a function, and ``importlib.import_module("lab....")`` with a literal name). A unit is
a module (``lab/x/y.py`` → ``lab.x.y``); a package's ``__init__`` is the unit ``lab.x``. An import of a package
names its ``__init__``; ``from lab.x import y`` names the module ``lab.x.y`` when it exists, else ``lab.x``.
The ``__init__`` of a parent package that Python runs first is not an edge: a package that re-exports its
modules would otherwise be a cycle with each of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[1] / "lab"
TESTS = LAB.parent / "tests"
MAX_LINES, MAX_BODY_LINES = 400, 50

# Floors, lowest first: a unit may import its own floor and the floors below it, never one above.
FLOORS = (
    ("lab.core",),                                                      # checks, records, timing, ceilings, stats
    ("lab.formats", "lab.data", "lab.perplexity"),                      # storage layouts, the corpus, the metric
    ("lab.kernels", "lab.models", "lab.layerwise", "lab.seeded"),       # one file per op and their AOT tool; the model
    ("lab.params", "lab.prune", "lab.quant", "lab.distill", "lab.parallel", "lab.infer"),   # the chapters
    ("lab.capstone", "lab.plots", "lab.doctor"),                        # views over the chapters
    ("lab.bench",),                                                     # the command line, at the top
)
# What a kernel file may import: the ground floor and the storage layouts, nothing that calls it.
KERNEL_IMPORTS = ("lab.core", "lab.formats", "lab.kernels")


def unit_name(path: Path, root: Path = LAB) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def units(root: Path = LAB) -> dict[str, Path]:
    return {unit_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imported(unit: str, path: Path, known: set[str]) -> Iterator[str]:
    """The lab units that ``unit`` (at ``path``) imports, anywhere in its file."""
    package = unit if path.name == "__init__.py" else unit.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("lab") and name != unit:
                yield name


def graph(root: Path = LAB) -> dict[str, set[str]]:
    found = units(root)
    return {unit: set(imported(unit, path, set(found))) for unit, path in found.items()}


def floor(unit: str) -> int:
    """The floor of ``unit``: that of the longest prefix listed in `FLOORS`; ``lab`` itself is floor 0."""
    best = (0, -1)
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (unit == prefix or unit.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), level)
    if best[1] < 0 and unit != "lab":
        raise KeyError(f"{unit} is on no floor; add it to FLOORS")
    return max(best[1], 0)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return graph()


def test_no_import_cycle(edges):
    assert cycles(edges) == []


def test_no_import_cycle_between_packages(edges):
    """Chapters may build on one another (GPTQ on OBS) only one way: collapsed to ``lab.<package>``, no cycle."""
    packages: dict[str, set[str]] = {}
    for a, targets in edges.items():
        top = ".".join(a.split(".")[:2])
        packages.setdefault(top, set()).update(".".join(b.split(".")[:2]) for b in targets)
    assert cycles({a: targets - {a} for a, targets in packages.items()}) == []


def test_nothing_below_the_command_line_imports_lab_bench(edges):
    offenders = sorted(f"{a} → {b}" for a, targets in edges.items() if not a.startswith("lab.bench")
                       for b in targets if b == "lab.bench" or b.startswith("lab.bench."))
    assert offenders == []


def test_imports_point_down(edges):
    upward = sorted(f"{a} (floor {floor(a)}) → {b} (floor {floor(b)})" for a, targets in edges.items()
                    for b in targets if floor(b) > floor(a))
    assert upward == []


def test_kernel_files_know_nothing_of_their_callers(edges):
    kernels = [u for u in edges if u.startswith("lab.kernels.")]
    assert kernels
    outside = sorted(f"{a} → {b}" for a in kernels for b in edges[a]
                     if not any(b == p or b.startswith(p + ".") for p in KERNEL_IMPORTS))
    assert outside == []


def test_no_source_file_over_400_lines():
    long = sorted(f"{p.relative_to(LAB.parent)}: {n}" for p in [*LAB.rglob("*.py"), *TESTS.rglob("*.py")]
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert long == []


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring left out."""
    body = function.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_functions_are_short_named_steps():
    long = sorted(f"{p.relative_to(LAB.parent)}:{node.lineno} {node.name}: {n} lines" for p in LAB.rglob("*.py")
                  for node in ast.walk(ast.parse(p.read_text()))
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := body_lines(node)) > MAX_BODY_LINES)
    assert long == []


def test_the_checks_see_what_they_look_for(tmp_path):
    """The graph, the cycle finder and the floors on a made-up package with a hidden cycle."""
    pkg = tmp_path / "lab"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "checks.py").write_text("def f():\n    from lab.bench import main\n")
    (pkg / "bench").mkdir()
    (pkg / "bench" / "__init__.py").write_text("from lab.core import checks\nfrom . import gpu\n")
    (pkg / "bench" / "gpu.py").write_text("import lab.core.checks\nimport importlib\nimportlib.import_module('lab.core')\n")
    found = graph(pkg)
    assert found == {"lab": set(), "lab.core": set(), "lab.core.checks": {"lab.bench"},
                     "lab.bench": {"lab.core.checks", "lab.bench.gpu"},
                     "lab.bench.gpu": {"lab.core.checks", "lab.core"}}
    assert cycles(found) == [["lab.bench", "lab.bench.gpu", "lab.core.checks"]]
    assert floor("lab.core.checks") == 0 and floor("lab.bench.gpu") == len(FLOORS) - 1
    assert floor("lab.kernels.aot.sass") == 2 and floor("lab.capstone.routes") == 4
    with pytest.raises(KeyError, match="lab.elsewhere"):
        floor("lab.elsewhere")
