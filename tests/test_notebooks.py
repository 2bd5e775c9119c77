"""Regression runs of every notebook: execute it once with papermill, then check that one copy twice.

Each notebook records the numbers its text states with ``lab.core.report.record(name, value)``.
This test executes the notebook (its ``parameters`` cell holds small CPU defaults), reads the
metrics JSON written next to the executed copy and checks every metric in ``EXPECTED`` (tests/expected: a
notebook without an ``EXPECTED`` entry, or a metric that was not recorded, fails), then compares
the executed copy's outputs with the outputs stored in the repository under nbval's rules
(`tests/notebook_outputs.py`: the sanitizers of tests/nbval_sanitize.cfg, the
``nbval-ignore-output`` tag). A stored output that no longer reproduces fails, as
``pytest --nbval`` would; `make outputs` refreshes them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lab.core import report
from tests.code_paths import CODE_PATHS, code_path_env
from tests.expected import EXPECTED
from tests.expected.matchers import Claim
from tests.notebook_outputs import differences

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


# The notebook that `make test` executes on torch's AVX2 code path instead of this CPU's own: a short one
# whose outputs carry every tolerance class (integers, percentages, numbers above and below 1, powers of
# ten). Every other notebook runs on this CPU's code path.
ON_AVX2 = NOTEBOOK_DIR / "04_distillation.ipynb"
# On a CPU with AVX-512 (CI's Xeon) the AVX2 path takes longer: one evaluation of the 8,192-token sample,
# 2.56 s on the native path, took 3.53 s with torch, MKL and oneDNN on AVX2. The halves count ON_AVX2 so.
AVX2_SLOWDOWN = 1.4


def _stored_seconds(notebook: Path) -> float:
    """How long the stored execution took (papermill's record in the notebook's metadata; 0 if none)."""
    return json.loads(notebook.read_text(encoding="utf-8"))["metadata"].get("papermill", {}).get("duration") or 0.0


def _expected_seconds(notebook: Path) -> float:
    """The stored time, scaled by `AVX2_SLOWDOWN` for the notebook that runs on the AVX2 path."""
    return _stored_seconds(notebook) * (AVX2_SLOWDOWN if notebook == ON_AVX2 else 1.0)


NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"), key=lambda nb: (-_expected_seconds(nb), nb.name))


def _two_halves(notebooks: list[Path]) -> dict[Path, str]:
    """Each notebook's half: longest first, each to the half with less expected time so far. `make test`
    runs one half per worker (pytest -n 2 --dist loadgroup), so that both end at about the same time."""
    load = {"notebooks-a": 0.0, "notebooks-b": 0.0}
    half = {}
    for nb in notebooks:
        half[nb] = min(load, key=load.get)
        load[half[nb]] += _expected_seconds(nb)
    return half


HALF = _two_halves(NOTEBOOKS)
KERNEL = "python3"
CELL_TIMEOUT_S = 600




def test_every_notebook_has_expected_metrics_and_every_entry_a_notebook():
    stems = {nb.stem for nb in NOTEBOOKS}
    assert stems - EXPECTED.keys() == set(), "add an EXPECTED entry for these notebooks"
    assert EXPECTED.keys() - stems == set(), "EXPECTED names notebooks that do not exist"
    assert all(EXPECTED.values()), "every EXPECTED entry needs at least one metric"


def test_python3_kernel_is_this_environment():
    """papermill starts the `python3` kernelspec; it must be the interpreter running the tests."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    launcher = spec.argv[0]
    assert launcher in ("python", "python3", sys.executable), (
        f"kernel {KERNEL!r} runs {launcher}, not {sys.executable}; "
        f"run `{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}`")


def _execute_and_check(notebook: Path, tmp_path: Path, monkeypatch, code_path: dict[str, str]) -> None:
    """Execute ``notebook`` with papermill in the environment ``code_path`` (tests/code_paths.py), then
    check its metrics against EXPECTED and its outputs against the stored ones."""
    import papermill

    for name, value in code_path.items():
        monkeypatch.setenv(name, value)  # inherited by the kernel
    metrics_path = tmp_path / f"{notebook.stem}.metrics.json"
    monkeypatch.setenv(report.ENV_VAR, str(metrics_path))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # draw inline, as the book and nbval do
    papermill.execute_notebook(
        str(notebook), str(tmp_path / notebook.name),
        kernel_name=KERNEL, cwd=str(NOTEBOOK_DIR),
        execution_timeout=CELL_TIMEOUT_S, progress_bar=False)

    metrics = report.read(metrics_path)
    failures = []
    for name, tolerance in EXPECTED.get(notebook.stem, {}).items():
        if name not in metrics:
            failures.append(f"{name}: not recorded (recorded: {sorted(metrics)})")
        elif metrics[name] not in tolerance:
            failures.append(f"{name}: {metrics[name]!r} not in {tolerance}")
        elif isinstance(tolerance, Claim) and tolerance.verb != "any" \
                and metrics.get(f"{name}_verdict") != tolerance.verb:
            failures.append(f"{name}: the text says {tolerance.verb!r}, the recorded verdict (Holm across its "
                            f"family) is {metrics.get(f'{name}_verdict')!r}")
    failures += [f"stored output differs: {d}" for d in differences(notebook, tmp_path / notebook.name)]
    assert not failures, f"{notebook.name}:\n  " + "\n  ".join(failures)


@pytest.mark.parametrize("notebook", [
    pytest.param(nb, id=nb.stem + ("-avx2" if nb == ON_AVX2 else ""), marks=pytest.mark.xdist_group(HALF[nb]))
    for nb in NOTEBOOKS])
def test_notebook_runs_and_reproduces_its_metrics(notebook: Path, tmp_path: Path, monkeypatch):
    """The stored outputs come from one CPU; a reader's CPU may have other vector units. Every notebook
    runs on this CPU's code path (or on the one ATEN_CPU_CAPABILITY names, then in MKL and oneDNN
    too), except ON_AVX2, which runs on torch's, MKL's and oneDNN's AVX2 code paths whatever the CPU:
    `make test` always compares two code paths, wherever the outputs were stored."""
    own = code_path_env(os.environ.get("ATEN_CPU_CAPABILITY"))
    _execute_and_check(notebook, tmp_path, monkeypatch, CODE_PATHS["avx2"] if notebook == ON_AVX2 else own)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_code_lines_fit_the_page(notebook: Path):
    """Code lines of at most 88 characters: the book's code cells do not scroll sideways."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    long = [(i, line) for i, cell in enumerate(cells) if cell.cell_type == "code"
            for line in cell.source.splitlines() if len(line) > 88]
    assert not long, f"{notebook.name}: lines over 88 characters (cell, line): {long}"
