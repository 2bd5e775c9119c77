"""The stored outputs of a notebook against those of a fresh execution: numbers within a tolerance,
everything else exactly.

`make test` executes every notebook once (tests/test_notebooks.py). That executed copy is checked
twice: its recorded metrics against ``EXPECTED``, and its outputs against the outputs stored in the
repository, here. The rules are nbval's (``pytest --nbval``): the same sanitizers
(tests/nbval_sanitize.cfg), the same cell markers (the tag ``nbval-ignore-output`` or the comment
``# NBVAL_IGNORE_OUTPUT`` skips a cell's comparison, ``nbval-skip`` skips the cell), the same merging
of stream outputs and the same keys left out (metadata, execution counts, tracebacks, images, widget
ids), with one change: the numbers inside stdout, ``text/plain``, ``text/html`` tables and glued
values (``lab.core.report.record``) are compared with a tolerance, because another CPU (other vector units
in torch, MKL and oneDNN, so other summation orders) prints other last digits. The text around the
numbers (words, table markup, how many numbers) must match exactly, whitespace aside.

A printed number ``a`` (stored) and ``b`` (computed) agree when

    integers (no decimal point, no exponent):   a = b
    changes in percent:                          |a − b| ≤ points + u
    any other number:                            |a − b| ≤ rel · max(|a|, |b|) + abs + u

where u is the unit of the last printed digit of the less precise of the two (0.01 for "3.14",
1e-5 for "3.0262e-01"): values a hair apart print one digit apart when they straddle a rounding
boundary. A glued number is the ``repr`` of the recorded value, that value exactly: u = 0 (a glued
string was formatted, and its numbers have their printed u). A change in
percent is a number followed by "%" or " points", or the [Δ, low, high] of a comparison that
``lab.core.report.record_comparison`` glued; its ``_verdict`` may differ only when an end of the stored
interval lies within ``points`` of 0.

Tolerances live here, in ``TOLERANCE``, by class: "default" for every cell, unless the cell carries
the tag ``tolerance-<class>``. "quantized": cells whose numbers come out of rounding decisions that
float noise can tip (GPTQ and AWQ calibration, quantization-aware training, 8-bit optimizer states,
the LM's activations rounded by W8A8, gradients flushed to zero in fp16); "outliers": W8A8 on the
MiniLM encoder, whose outlier channels set the activation scales, so that a tipped decision moves
its error by several percent. Each tolerance is ``MULTIPLE`` times the largest spread its class
showed across torch's CPU code paths (tests/code_paths.py), every notebook executed on each with
``make output-spread`` (tests/output_spread.py): for each kind (rel: numbers of magnitude >=
``SMALL`` = 1e-3, relative to the larger; abs: smaller ones; points), the largest difference beyond
the printed rounding between any two paths, rounded up to one significant digit after the
multiplication.

Measured spread (2026-12-06; one Intel Xeon with AVX-512 and AMX, 2 cores; torch 2.13.0; every
notebook on the six code paths of tests/code_paths.py, except 01b on aten-avx2 and aten-default,
where torch's bf16 attention fails on an AMX CPU; 15 pairs of paths). Per notebook and class: how
many numbers were compared (over all pairs), then for each kind the largest difference beyond the
printed rounding (rel: relative, |x| >= SMALL; abs: |x| < SMALL; points: percentage points) and the
two values that showed it:

    nb  class          pairs       rel (numbers)               abs (numbers)            points (numbers)
    01  default         5580   3.2e-07 (29.24 29.24      )  0.0e+00 (0 0              )  0.0e+00 (-                )
    01  quantized        405   2.7e-04 (0.002892 0.002893)  4.6e-07 (8.737e-06 8.277e-06)  0.0e+00 (-                )
    01b default         1956   3.7e-07 (27.37 27.37      )  0.0e+00 (2.4e-07 2.4e-07  )  2.0e-05 (14.13 14.13      )
    01b quantized        420   6.4e-05 (51.31 51.3       )  0.0e+00 (-                )  1.5e-02 (0.2558 0.2413    )
    02  default         6570   3.2e-07 (29.24 29.24      )  6.8e-20 (9.803e-05 9.803e-05)  1.2e-05 (4.18 4.18        )
    03  default        11745   7.8e-07 (0.6887 0.6887    )  0.0e+00 (4.19e-05 4.19e-05)  6.9e-06 (0.002368 0.002361)
    03  outliers         570   9.5e-02 (0.0021 0.0018    )  0.0e+00 (-                )  0.0e+00 (-                )
    03  quantized       5010   7.8e-04 (1.002 1.001      )  0.0e+00 (0.0009 0.0009    )  1.7e-01 (3.609 3.777      )
    04  default         6420   1.3e-04 (1039 1039        )  0.0e+00 (1e-05 1e-05      )  1.7e-04 (-28.33 -28.33    )
    05  default         6300   0.0e+00 (9.02 9.02        )  0.0e+00 (1e-05 1e-05      )  0.0e+00 (-                )
    06  default         5985   5.0e-05 (0.03832 0.03832  )  0.0e+00 (0.0001 0.0001    )  0.0e+00 (-                )
    07  default         7590   0.0e+00 (1e+72 1e+72      )  0.0e+00 (0 0              )  0.0e+00 (0.3654 0.3654    )

Hence, times MULTIPLE = 5 and rounded up: the tolerances of ``TOLERANCE`` below. No integer
differed between any two paths, and no text but one verb: gptq_vs_rtn_3_channel_verdict, "lower" on
some paths and "level" on others (its interval ends 0.01 to 0.02 points from 0), which the book
states without a verb.
"""

from __future__ import annotations

import copy
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbval.plugin import (coalesce_streams, find_comment_markers, find_metadata_tags, get_sanitize_patterns,
                          transform_streams_for_comparison)

SANITIZE_CFG = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
# nbval's own list of keys it never compares (plugin.IPyNbFile.skip_compare, without --nbdime)
SKIP_KEYS = frozenset({"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                       "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"})
# values glued by lab.core.report.record (myst_nb.glue, display=False): the key names the glued value
GLUE_PREFIX = "application/papermill.record/"
TAG_PREFIX = "tolerance-"


# Below this magnitude a number is measured absolutely (the ``abs`` term of its tolerance), above it
# relatively: fractions near 0 (a few underflowing gradients out of millions) move by a large part of
# themselves when a count near a threshold changes by one.
SMALL = 1e-3


@dataclass(frozen=True)
class Tolerance:
    """How far another CPU may move a printed number: ``points`` for a change in percent (percentage
    points), else ``rel`` · max(|a|, |b|) + ``abs``; always plus u, the unit of the last printed
    digit. Integers are exact."""

    rel: float
    abs: float
    points: float

    def __post_init__(self) -> None:
        for name in ("rel", "abs", "points"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Tolerance {name}={value!r} is not allowed; it must be a finite number >= 0")

    def allows(self, a: Number, b: Number) -> bool:
        """Whether ``b`` (computed) may stand where ``a`` (stored) was printed."""
        if a.integer and b.integer:
            return a.value == b.value
        unit = max(a.unit, b.unit) * (1 + 1e-9)  # 0.30263 − 0.30262 is 1.000000000001e-05 in binary
        if a.percent or b.percent:
            return abs(a.value - b.value) <= self.points + unit
        return abs(a.value - b.value) <= self.rel * max(abs(a.value), abs(b.value)) + self.abs + unit


# How many times the measured spread a tolerance is (the table above).
MULTIPLE = 5
TOLERANCE: dict[str, Tolerance] = {
    "default": Tolerance(rel=7e-4, abs=4e-19, points=9e-4),
    "quantized": Tolerance(rel=4e-3, abs=3e-6, points=0.9),
    "outliers": Tolerance(rel=0.5, abs=0.0, points=0.0),
}


# A number as printed: an optional sign, digits (optionally grouped by commas), an optional
# fraction and exponent; not part of a word ("int4", "sm_90") nor of a dotted version ("2.13.0").
NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+)|\.(?=[eE][-+]?\d))?"
                    r"(?:[eE]([-+]?\d+))?(?!\.?\d)")  # "4.e-05": numpy's float without decimals


# Whitespace between numbers is not compared: a table's columns are as wide as its numbers.
SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Number:
    """A number as printed: its text, its value, the unit of its last printed digit, whether it is an
    integer (no decimal point, no exponent) and whether it is a change in percent."""

    text: str
    value: float
    unit: float
    integer: bool = False
    percent: bool = False


def numbers(text: str, exact: bool = False, percent: bool = False) -> tuple[list[str], list[Number]]:
    """``text`` split into the strings between its numbers and the numbers. ``exact``: the numbers
    are exact values (a glued float's repr), u = 0. A number followed by "%" or " points" is a
    change in percent, and so is every number when ``percent`` (a comparison's glued [Δ, low, high])."""
    parts, found, start = [], [], 0
    for m in NUMBER.finditer(text):
        parts.append(text[start:m.start()])
        start = m.end()
        digits, exponent = m.group(1), m.group(2)
        integer = "." not in m.group(0) and exponent is None
        place = int(exponent or 0) - len(digits or "")             # the last digit's power of ten
        unit = 0.0 if exact or integer else 10.0 ** min(max(place, -320), 300)
        value = float(m.group(0).replace(",", "").replace("\u2212", "-"))
        in_percent = percent or text.startswith(("%", " points"), m.end())
        found.append(Number(m.group(0), value, unit, integer, in_percent))
    parts.append(text[start:])
    return [SPACES.sub("", part) for part in parts], found


def sanitizer(cfg: Path = SANITIZE_CFG) -> Callable[[object], object]:
    """The function nbval applies to every compared string: each (regex, replace) of ``cfg`` in order."""
    patterns = get_sanitize_patterns(cfg.read_text())

    def sanitize(value: object) -> object:
        if not isinstance(value, str):
            return value
        for regex, replace in patterns:
            value = re.sub(regex, replace, value)
        return value

    return sanitize


def glue_name(output: dict) -> str | None:
    """The name an output glues a value under (lab.core.report.record), or None for any other output."""
    return output.get("metadata", {}).get("scrapbook", {}).get("name")


def _flatten(outputs: list, sanitize: Callable[[object], object]) -> dict[str, list]:
    """Output key (stream name, MIME type, glue name) → list of sanitized strings, as nbval groups
    a cell's outputs."""
    flat: dict[str, list] = defaultdict(list)
    for out in transform_streams_for_comparison(coalesce_streams(copy.deepcopy(outputs))):
        glue = glue_name(out)
        for key, value in out.items():
            if key in SKIP_KEYS:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime.startswith(GLUE_PREFIX):
                        flat[f"glue {glue}"].append(sanitize(data))
                    elif mime not in SKIP_KEYS:
                        flat[mime].append(sanitize(data))
            else:
                flat[key].append(sanitize(value))
    return flat


def _options(cell: nbformat.NotebookNode) -> dict:
    return dict([*find_comment_markers(cell.source), *find_metadata_tags(cell.metadata)])


def tolerance_class(cell: nbformat.NotebookNode) -> str:
    """The cell's tolerance class: its tag ``tolerance-<name>``, else "default"."""
    tags = [t for t in cell.metadata.get("tags", []) if t.startswith(TAG_PREFIX)]
    if len(tags) > 1 or (tags and tags[0][len(TAG_PREFIX):] not in TOLERANCE):
        raise ValueError(f"cell tags {tags!r} in the cell that starts {cell.source[:60]!r}: a cell takes "
                         f"at most one of {[TAG_PREFIX + name for name in TOLERANCE]}")
    return tags[0][len(TAG_PREFIX):] if tags else "default"


@dataclass(frozen=True)
class Pair:
    """One number of one output of one cell, stored (a) and computed (b)."""

    cell: int
    key: str
    a: Number
    b: Number
    tolerance: str


def code_cells(notebook: Path) -> list[nbformat.NotebookNode]:
    """The code cells of ``notebook`` (an executed copy's injected parameters left out)."""
    return [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"
            and "injected-parameters" not in c.metadata.get("tags", [])]


def compared_cells(stored: Path, executed: Path,
                   tagged: Path | None = None) -> Iterator[tuple[int, str, dict, dict]]:
    """(cell number, tolerance class, stored outputs, executed outputs) of every compared code
    cell, under the cell tags of ``tagged`` (default: ``stored``); ValueError when the notebooks
    do not have the same code cells."""
    sanitize = sanitizer()
    ref_cells, run_cells = code_cells(stored), code_cells(executed)
    tag_cells = ref_cells if tagged is None else code_cells(tagged)
    if not len(ref_cells) == len(run_cells) == len(tag_cells):
        raise ValueError(f"{len(ref_cells)} stored code cells, {len(run_cells)} executed ones and "
                         f"{len(tag_cells)} tagged ones")
    for number, (ref, run, tags) in enumerate(zip(ref_cells, run_cells, tag_cells)):
        options = _options(tags)
        if options.get("skip") or options.get("check") is False or ref.execution_count is None:
            continue
        yield number, tolerance_class(tags), _flatten(ref.outputs, sanitize), _flatten(run.outputs, sanitize)


def _verdict_at_edge(key: str, want: dict, tolerance: str) -> bool:
    """A comparison's verb (glue ``name_verdict``, lab.core.report.record_comparison) may differ when an end of
    its stored interval (glue ``name`` = [Δ, low, high]) lies within the tolerance of 0 or of the equivalence
    margin, ±1 (% or points; lab.core.stats.EQUIVALENCE_MARGIN): the interval itself is compared number by
    number, and its verb flips with rounding there."""
    interval = want.get(key.removesuffix("_verdict")) if key.endswith("_verdict") else None
    if not interval:
        return False
    ends = numbers(interval[0], exact=True, percent=True)[1][1:]
    edges = [Number(str(x), x, 0.0, percent=True) for x in (0.0, -1.0, 1.0)]
    return any(TOLERANCE[tolerance].allows(end, edge) for end in ends for edge in edges)


def _exact(key: str, text: str) -> bool:
    """A glued number is the repr of the recorded value, exact; a glued str was formatted, rounded."""
    return key.startswith("glue ") and "'" not in text and '"' not in text


def pairs(stored: Path, executed: Path, tagged: Path | None = None) -> tuple[list[Pair], list[str]]:
    """Every number pair of the compared outputs, and one message per output whose text around the
    numbers differs (those outputs contribute no pairs)."""
    found, problems = [], []
    for cell, tolerance, want, got in compared_cells(stored, executed, tagged):
        if want.keys() != got.keys():
            problems.append(f"cell {cell}: output fields {sorted(want)} stored, {sorted(got)} computed")
            continue
        for key in want:
            glue = key.startswith("glue ")
            percent = glue and f"{key}_verdict" in want   # lab.core.report.record_comparison's [Δ, low, high]
            split_a = [numbers(v, _exact(key, v), percent) for v in want[key]]
            split_b = [numbers(v, _exact(key, v), percent) for v in got[key]]
            if [s[0] for s in split_a] != [s[0] for s in split_b] and not _verdict_at_edge(key, want, tolerance):
                problems.append(f"cell {cell}, {key!r}: the text differs\n"
                                f"    stored:   {want[key]!r:.400}\n    computed: {got[key]!r:.400}")
                continue
            found += [Pair(cell, key, a, b, tolerance) for (_, na), (_, nb) in zip(split_a, split_b)
                      for a, b in zip(na, nb)]
    return found, problems


def differences(stored: Path, executed: Path) -> list[str]:
    """One message per output whose text differs or whose numbers differ beyond the tolerance."""
    ref_cells, run_cells = code_cells(stored), code_cells(executed)
    if len(ref_cells) != len(run_cells):
        return [f"{len(ref_cells)} stored code cells but {len(run_cells)} executed ones"]
    found, problems = pairs(stored, executed)
    reported = set()
    for p in found:
        if not TOLERANCE[p.tolerance].allows(p.a, p.b) and (p.cell, p.key) not in reported:
            reported.add((p.cell, p.key))
            problems.append(f"cell {p.cell}, {p.key!r}: {p.a.text} stored, {p.b.text} computed, "
                            f"beyond {TOLERANCE[p.tolerance]} (tolerance class {p.tolerance!r})")
    return problems


def glued(notebook: Path) -> dict[str, str]:
    """Every value the stored ``notebook`` glues (lab.core.report.record): name → its text/plain."""
    found = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            name = glue_name(out)
            if name is not None:
                found[name] = out["data"][f"{GLUE_PREFIX}text/plain"]
    return found
