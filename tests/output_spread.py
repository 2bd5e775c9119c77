"""How much a notebook's printed numbers move with the CPU: the measurement behind the tolerances of
tests/notebook_outputs.py.

    python -m tests.output_spread [--paths PATH ...] [--out _build/spread] [--again]

executes every notebook (two at a time, one torch thread each, as `make test` does) once on each of
torch's CPU code paths (`tests.code_paths.CODE_PATHS`, all of them by default) into
``OUT/<path>/``, then prints, for each notebook and tolerance class, the largest difference of any
printed number beyond its printed rounding between any two paths (``spread``), and the claims whose
verb would hang on the CPU (``fragile_claims``). `make output-spread`
runs it. An executed copy whose code is the notebook's is reused (``--again`` executes it anew).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab.core import report
from tests.code_paths import CODE_PATHS
from tests.expected import EXPECTED
from tests.expected.matchers import Claim
from tests.notebook_outputs import MULTIPLE, SMALL, TOLERANCE, Pair, Tolerance, code_cells, pairs
from tests.test_notebooks import KERNEL, NOTEBOOK_DIR, NOTEBOOKS


def _sources(notebook: Path) -> list[str]:
    return [cell.source for cell in code_cells(notebook)]


def execute(notebook: Path, path: str, out: Path, again: bool) -> str:
    """Execute ``notebook`` on the code path ``path`` into ``out/path/``; a line saying how it went."""
    folder = out / path
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / notebook.name).exists() and not again and _sources(folder / notebook.name) == _sources(notebook):
        return f"{path:9} {notebook.stem}: kept"
    chosen = {name for env in CODE_PATHS.values() for name in env}     # every variable a path may set
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND" and k not in chosen}
    env.update(CODE_PATHS[path], OMP_NUM_THREADS="1",
               LAB_REPORT_PATH=str((folder / f"{notebook.stem}.metrics.json").resolve()))
    done = subprocess.run([sys.executable, "-m", "papermill", "--cwd", str(NOTEBOOK_DIR), "--kernel", KERNEL,
                           "--no-progress-bar", str(notebook), str(folder / notebook.name)],
                          env=env, capture_output=True, text=True)
    (folder / f"{notebook.stem}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        (folder / notebook.name).unlink(missing_ok=True)
        return f"{path:9} {notebook.stem}: FAILED (see {folder / notebook.stem}.log)"
    return f"{path:9} {notebook.stem}: executed"


def excess(p: Pair) -> float:
    """How far a pair differs beyond its printed rounding: in percentage points for a change in
    percent, relative to the larger for a number of magnitude >= SMALL, else absolute; for integers,
    0 when equal and infinite when not."""
    if p.a.integer and p.b.integer:
        return 0.0 if p.a.value == p.b.value else math.inf
    beyond = max(0.0, abs(p.a.value - p.b.value) - max(p.a.unit, p.b.unit))
    return beyond / max(abs(p.a.value), abs(p.b.value)) if _kind(p) == "rel" else beyond


def _kind(p: Pair) -> str:
    """Which term of `Tolerance` a pair falls under: "points", "rel" (|x| >= SMALL), "abs" or "integer"."""
    if p.a.integer and p.b.integer:
        return "integer"
    if p.a.percent or p.b.percent:
        return "points"
    return "rel" if max(abs(p.a.value), abs(p.b.value)) >= SMALL else "abs"


KINDS = ("rel", "abs", "points", "integer")


def _worst(found: list[Pair], kind: str) -> tuple[float, str]:
    """The largest excess among the pairs of one kind, with the two numbers that showed it."""
    mine = [p for p in found if _kind(p) == kind]
    if not mine:
        return 0.0, "-"
    p = max(mine, key=excess)
    return excess(p), f"{p.a.value:.4g} {p.b.value:.4g}"


def _one_digit_up(x: float) -> float:
    """``x`` rounded up to one significant digit (0.000643 → 0.0007); 0 stays 0."""
    if x == 0:
        return 0.0
    unit = 10.0 ** math.floor(math.log10(x))
    return float(f"{math.ceil(round(x / unit, 9)) * unit:.1g}")


def derived(found: list[Pair]) -> Tolerance:
    """The tolerance a class's measured pairs give: MULTIPLE × the largest excess of each kind,
    rounded up to one significant digit (every measured pair then passes with MULTIPLE to spare)."""
    return Tolerance(*(_one_digit_up(MULTIPLE * _worst(found, kind)[0]) for kind in KINDS[:3]))


def spread(folders: list[Path], stored: Path) -> list[str]:
    """The measured spread table: for each notebook of ``stored`` (whose cell tags name the tolerance
    classes) and each class, how many numbers were compared and the largest excess of each kind
    (`excess`, with the two values that showed it) between the executed copies of any two
    ``folders`` (one per code path); then the tolerance each class's numbers give (`derived`) beside
    the one in force, and every output whose text differed between two paths."""
    rows = ["nb  class          pairs  " + "".join(f"{kind:>8} (numbers)          " for kind in KINDS[:3])]
    by_class: dict[str, list[Pair]] = defaultdict(list)
    texts = []
    for notebook in sorted(stored.glob("*.ipynb")):
        found = []
        for reference, other in itertools.combinations(folders, 2):
            if (reference / notebook.name).exists() and (other / notebook.name).exists():
                more, problems = pairs(reference / notebook.name, other / notebook.name, notebook)
                found += more
                texts += [f"{notebook.stem} ({reference.name} vs {other.name}): {p}" for p in problems]
        for name in sorted({p.tolerance for p in found}):
            mine = [p for p in found if p.tolerance == name]
            by_class[name] += mine
            worst = [_worst(mine, kind) for kind in KINDS]
            rows.append(f"{notebook.stem.split('_')[0]:3} {name:12} {len(mine):7}  "
                        + "".join(f"{x:8.1e} ({at:17}) " for x, at in worst[:3])
                        + ("" if worst[3][0] == 0 else f" integers differ: {worst[3][1]}"))
    rows.append("")
    for name, found in sorted(by_class.items()):
        rows.append(f"{name}: {MULTIPLE} × spread = {derived(found)}; in force: {TOLERANCE.get(name)}")
    return rows + [f"texts differ: {len(texts)}", *texts]


def fragile_claims(folders: list[Path]) -> list[str]:
    """The claims of EXPECTED whose verb hangs on the CPU: their verb differs between code paths, or
    an end of their interval that the verb rests on (lower: high; higher: low; equivalent: both) comes
    closer to 0, on some path, than MULTIPLE times the distance that end moved between paths. Such a
    claim gets no verb in the text and "any" in EXPECTED."""
    rows = []
    for notebook in NOTEBOOKS:
        runs = [report.read(f / f"{notebook.stem}.metrics.json") for f in folders
                if (f / f"{notebook.stem}.metrics.json").exists()]
        for name, claim in EXPECTED[notebook.stem].items():
            values = [run[name] for run in runs if name in run]
            if not isinstance(claim, Claim) or claim.verb == "any" or len(values) < 2:
                continue
            verb_only = Claim(claim.verb)
            flips = len({v in verb_only for v in values}) > 1
            for end in {"lower": [2], "higher": [1], "equivalent": [1, 2], "inconclusive": []}[claim.verb]:
                moved = max(v[end] for v in values) - min(v[end] for v in values)
                nearest = min(abs(v[end]) for v in values)
                if flips or nearest <= MULTIPLE * moved:
                    side = ("low", "high")[end - 1]
                    rows.append(f"{notebook.stem}: {name} {claim.verb!r}: its {side} end {nearest:.3f} from 0, "
                                f"moved {moved:.3f}" + (" (the verb flips)" if flips else ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", default=list(CODE_PATHS), choices=list(CODE_PATHS),
                        help="code paths (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("_build/spread"))
    parser.add_argument("--again", action="store_true", help="execute notebooks already in OUT again")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("--paths needs at least two code paths to compare")
    runs = [(nb, path) for path in args.paths for nb in NOTEBOOKS]
    with ThreadPoolExecutor(2) as pool:
        for line in pool.map(lambda run: execute(*run, args.out, args.again), runs):
            print(line, flush=True)
    for path in args.paths:
        missing = [nb.stem for nb in NOTEBOOKS if not (args.out / path / nb.name).exists()]
        if missing:
            print(f"{path}: not executed (see its logs): {', '.join(missing)}")
    print("\n".join(spread([args.out / p for p in args.paths], NOTEBOOK_DIR)))
    fragile = fragile_claims([args.out / p for p in args.paths])
    print(f"\nverbs within {MULTIPLE} times their own spread of flipping: {len(fragile)}", *fragile, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
