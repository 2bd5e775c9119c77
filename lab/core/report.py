"""Headline metrics of a notebook, written to a JSON file the tests read back.

A chapter notebook calls ``record("n_parameters", 6_524_160)`` for each number its text
states; ``tests/test_notebooks.py`` runs the notebook with papermill and checks every
recorded value against a stated tolerance. The file is one flat JSON object
``{name: value}``; each call rewrites it atomically (temporary file + ``os.replace``),
so a reader never sees half a file.

Where the file goes: the ``path`` argument, else ``$LAB_REPORT_PATH`` (the notebook test
sets it to ``<output dir>/<notebook stem>.metrics.json``, next to the executed notebook),
else ``lab.metrics.json`` in the working directory (the notebook's folder when Jupyter
Book, papermill or nbval run it).

Inside a Jupyter kernel each recorded value is also *glued* (``myst_nb.glue``, not displayed)
under its name, so a chapter page pastes the executed figure instead of typing it:
``{glue:text}`../notebooks/02_pruning.ipynb::ppl_ratio_wanda_50:.3f```.

The comparisons of one table or figure (`lab.core.stats.compare` results) are recorded together
with `record_comparisons`, each as a change of perplexity in percent with its 95% interval,
``[Δ%, low%, high%]``, with 100·(e^Δ − 1) for Δ = log PPL_b − log PPL_a, plus its text
(``name_text``, e.g. "+0.34% (95% CI +0.21% to +0.47%; 31 documents resampled)") and the verb
(``name_verdict``: "lower", "higher", "equivalent" or "inconclusive", after Holm's correction across
the family). The notebook test checks the verb the chapter uses against the recorded one.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from lab.core.atomic import atomic_write_json
from lab.core.checks import check_choice, check_int, check_number, check_path
from lab.core.stats import EQUIVALENCE_MARGIN, seed_spread, verdict, verdicts

DEFAULT_FILENAME = "lab.metrics.json"
ENV_VAR = "LAB_REPORT_PATH"

Value = int | float | str | bool | list
COMPARISON_KEYS = {"delta_log_ppl", "ci_low", "ci_high", "p", "n_seeds", "n_documents"}   # of a compare result
MAX_LOG = math.log(sys.float_info.max)           # e^Δ beyond this overflows a float


def report_path(path: str | os.PathLike | None = None) -> Path:
    """The metrics file: ``path``, else ``$LAB_REPORT_PATH``, else ``./lab.metrics.json``."""
    if path is not None:
        return check_path("path", path)
    env = os.environ.get(ENV_VAR, "").strip()
    return check_path(ENV_VAR, env) if env else Path.cwd() / DEFAULT_FILENAME


def _plain(value, name: str):
    """``value`` as a JSON-ready int/float/str/bool/list; 0-d NumPy/torch values are unwrapped."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"record({name!r}, value={value!r}): value must be finite")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, name) for v in value]
    raise TypeError(f"record({name!r}, value={value!r}): value must be an int, float, str, bool "
                    f"or a list of those, got {type(value).__name__}")


def read(path: str | os.PathLike | None = None) -> dict:
    """All recorded metrics ``{name: value}``; FileNotFoundError if nothing was recorded."""
    file = report_path(path)
    if not file.exists():
        raise FileNotFoundError(f"no metrics file at {file}: nothing was recorded with lab.core.report.record")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"path={str(file)!r} is not a metrics file (a JSON object): {error}") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"path={str(file)!r} holds a JSON {type(metrics).__name__}, not a metrics file (an object)")
    return metrics


def record(name: str, value: Value, *, path: str | os.PathLike | None = None) -> None:
    """Store ``value`` under ``name`` in the metrics file (other names are kept).

    Raises TypeError/ValueError for an empty or non-string name, a value that is not an
    int/float/str/bool/list, or a NaN/infinite float.
    """
    _store({name: value}, path)


def _check_name(name, what: str = "name") -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__} {name!r}")
    if not name.strip():
        raise ValueError(f"{what} must be a non-empty str, got {name!r}")


def _store(entries: dict, path: str | os.PathLike | None) -> None:
    """Check every name and value of ``entries`` and the file, then write them all at once (or nothing)."""
    plain = {}
    for name, value in entries.items():
        _check_name(name)
        plain[name] = _plain(value, name)
    file = report_path(path)
    metrics = read(file) if file.exists() else {}
    metrics.update(plain)
    atomic_write_json(file, dict(sorted(metrics.items())))
    for name, value in plain.items():
        _glue(name, value)


def _glue(name: str, value: Value) -> None:
    """``myst_nb.glue(name, value, display=False)`` when running in a Jupyter kernel with myst-nb."""
    try:
        from IPython import get_ipython
        from myst_nb import glue
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        glue(name, value, display=False)


def below_text(value: float, bound: float) -> str:
    """A small non-negative quantity printed at the precision it carries: "< 1e-05" for ``bound`` =
    1e-5 when 0 <= ``value`` < ``bound`` (the bound in scientific notation, rounded up to at most two
    significant digits: "< 2.4e-07" for 2⁻²² ≈ 2.38e-7); else ``value`` itself, to two significant digits.

    Below its bound a quantity has no digits worth printing: an error against a float64 reference or
    a difference of two float32 computations that should agree is rounding noise, and another CPU
    (other vector units, other summation orders) prints other digits of the same noise; a p-value far
    in the tail moves by a larger fraction of itself than the statistic it comes from. Its bound, the
    largest value the text accepts as such, is the same on every CPU. Above the bound the value is a
    finding and is printed.
    """
    value = check_number("value", value, 0.0)
    bound = check_number("bound", bound, 0.0, closed=(False, True))
    if value >= bound:
        return f"{value:.2g}"
    exponent = math.floor(math.log10(bound))
    tenths = math.ceil(round(bound / 10.0 ** (exponent - 1), 9))     # two digits, rounded up: 2⁻²² → 24
    if tenths == 100:
        tenths, exponent = 10, exponent + 1
    mantissa = f"{tenths // 10}" if tenths % 10 == 0 else f"{tenths / 10:.1f}"
    return f"< {mantissa}e{exponent:+03d}"


def percent(delta_log_ppl: float) -> float:
    """A log-perplexity difference Δ as a change of perplexity in percent, 100·(e^Δ − 1)."""
    return 100.0 * math.expm1(check_number("delta_log_ppl", delta_log_ppl, high=MAX_LOG))


def record_comparisons(results: dict[str, dict], *, scale: str = "ppl", margin: float | None = None,
                       unit_name: str = "documents", path: str | os.PathLike | None = None) -> dict[str, str]:
    """Record the comparisons of one family (a table or figure), each a `lab.core.stats.compare` result.

    For each name: ``name`` = [Δ, low, high], ``name_text`` and ``name_verdict``, the verb after
    Holm's correction across the family (`lab.core.stats.verdicts`). ``scale`` "ppl": the compared
    values are per-token losses and Δ is the change of perplexity in percent, 100·(e^Δ − 1); "points":
    they are rates (e.g. 1 − correct per example) and Δ is in percentage points, 100·Δ. ``margin``: the
    equivalence margin in the compared unit (log-perplexity or rate); default `EQUIVALENCE_MARGIN` for
    "ppl" (±1% perplexity), 0.01 (one point) for "points". Returns {name: verdict}. Everything is checked
    before the file is written: a refused call leaves it as it was.
    """
    if not isinstance(results, dict) or not results:
        raise TypeError(f"results must be a non-empty dict of lab.core.stats.compare results, got {results!r:.200}")
    for name, r in results.items():
        _check_name(name, "each name of results")
        if not (isinstance(r, dict) and COMPARISON_KEYS <= r.keys()):
            raise TypeError(f"results[{name!r}] must be a lab.core.stats.compare result, got {r!r:.200}")
    check_choice("scale", scale, ("ppl", "points"))
    _check_name(unit_name, "unit_name")
    if margin is None:
        margin = EQUIVALENCE_MARGIN if scale == "ppl" else 0.01
    verbs = verdicts(results, margin)
    to_unit, unit = (percent, "%") if scale == "ppl" else ((lambda d: 100.0 * d), " points")
    entries = {}
    for name, r in results.items():
        mid, low, high = (to_unit(check_number(f"results[{name!r}][{k!r}]", r[k], high=MAX_LOG))
                          for k in ("delta_log_ppl", "ci_low", "ci_high"))
        n_seeds, n_documents = (check_int(f"results[{name!r}][{k!r}]", r[k]) for k in ("n_seeds", "n_documents"))
        seeds = f"{n_seeds} seeds and " if n_seeds > 1 else ""
        entries[name] = [mid, low, high]
        entries[f"{name}_text"] = (f"{mid:+.2f}{unit} (95% CI {low:+.2f}{unit} to {high:+.2f}{unit}; "
                                   f"{seeds}{n_documents} {unit_name} resampled)")
        entries[f"{name}_verdict"] = verbs[name]
    _store(entries, path)
    return verbs


def record_comparison(name: str, result: dict, *, scale: str = "ppl", margin: float | None = None,
                      unit_name: str = "documents", path: str | os.PathLike | None = None) -> str:
    """`record_comparisons` for a family of one comparison; returns its verdict."""
    _check_name(name)
    if not (isinstance(result, dict) and COMPARISON_KEYS <= result.keys()):
        raise TypeError(f"result must be a lab.core.stats.compare result, got {result!r:.200}")
    return record_comparisons({name: result}, scale=scale, margin=margin, unit_name=unit_name, path=path)[name]


def record_spread(name: str, values, unit: str = "%", margin: float = 1.0, *,
                  path: str | os.PathLike | None = None) -> list[float]:
    """Record one result over seeds (`lab.core.stats.seed_spread`): ``name`` = [mean, ci_low, ci_high]
    (Student-t 95% interval of the mean), ``name_text`` and ``name_verdict`` (against 0, a family of
    one; "equivalent" when the interval lies inside ±``margin``, in ``unit``).
    Returns [mean, ci_low, ci_high]. Everything is checked before the file is written."""
    _check_name(name)
    if not isinstance(unit, str):
        raise TypeError(f"unit must be a str such as '%', got {unit!r}")
    s = seed_spread(values)
    _store({name: [s["mean"], s["ci_low"], s["ci_high"]],
            f"{name}_text": f"{s['mean']:+.2f}{unit} (mean of {s['n']} seeds, sd {s['sd']:.2f}{unit}; "
                            f"95% CI {s['ci_low']:+.2f}{unit} to {s['ci_high']:+.2f}{unit})",
            f"{name}_verdict": verdict(s, margin=margin)}, path)
    return [s["mean"], s["ci_low"], s["ci_high"]]
