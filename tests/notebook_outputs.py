"""nbval's output comparison, applied to a notebook that papermill has already executed.

`make test` executes every notebook once (tests/test_notebooks.py). That one executed copy is
checked twice: its recorded metrics against ``EXPECTED``, and its outputs against the outputs
stored in the repository, here, with the rules of ``pytest --nbval``: the same sanitizers
(tests/nbval_sanitize.cfg), the same cell markers (the tag ``nbval-ignore-output`` or the
comment ``# NBVAL_IGNORE_OUTPUT`` skips a cell's comparison, ``nbval-skip`` skips the cell), the
same merging of stream outputs and the same keys left out (metadata, execution counts,
tracebacks, images, widget ids). `differences` returns one line per cell that nbval would fail.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from pathlib import Path

import nbformat
from nbval.plugin import (
    coalesce_streams,
    find_comment_markers,
    find_metadata_tags,
    get_sanitize_patterns,
    transform_streams_for_comparison,
)

SANITIZE_CFG = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
# nbval's own list of keys it never compares (plugin.IPyNbFile.skip_compare, without --nbdime)
SKIP_KEYS = frozenset({"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                       "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"})
# values glued by lab.report.record (myst_nb.glue, not displayed): the recorded metrics, which
# test_notebooks.py checks against EXPECTED with tolerances, not by their last digit
GLUE_PREFIX = "application/papermill.record/"


def sanitizer(cfg: Path = SANITIZE_CFG):
    """The function nbval applies to every compared string: each (regex, replace) of ``cfg`` in order."""
    patterns = get_sanitize_patterns(cfg.read_text())

    def sanitize(value):
        if not isinstance(value, str):
            return value
        for regex, replace in patterns:
            value = re.sub(regex, replace, value)
        return value

    return sanitize


def _flatten(outputs: list, sanitize) -> dict[str, list]:
    """MIME type / stream name → list of sanitized values, as nbval groups a cell's outputs."""
    flat: dict[str, list] = defaultdict(list)
    for out in transform_streams_for_comparison(coalesce_streams(copy.deepcopy(outputs))):
        for key, value in out.items():
            if key in SKIP_KEYS:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in SKIP_KEYS and not mime.startswith(GLUE_PREFIX):
                        flat[mime].append(sanitize(data))
            else:
                flat[key].append(sanitize(value))
    return flat


def _options(cell) -> dict:
    return dict([*find_comment_markers(cell.source), *find_metadata_tags(cell.metadata)])


def differences(stored: Path, executed: Path) -> list[str]:
    """One message per code cell whose executed outputs differ from the stored ones under nbval's rules."""
    sanitize = sanitizer()
    ref_cells = [c for c in nbformat.read(stored, as_version=4).cells if c.cell_type == "code"]
    run_cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"
                 and "injected-parameters" not in c.metadata.get("tags", [])]
    if len(ref_cells) != len(run_cells):
        return [f"{len(ref_cells)} stored code cells but {len(run_cells)} executed ones"]
    problems = []
    for number, (ref, run) in enumerate(zip(ref_cells, run_cells)):
        options = _options(ref)
        if options.get("skip") or options.get("check") is False or ref.execution_count is None:
            continue
        want, got = _flatten(ref.outputs, sanitize), _flatten(run.outputs, sanitize)
        if want.keys() != got.keys():
            problems.append(f"cell {number}: output fields {sorted(want)} stored, {sorted(got)} computed")
            continue
        for key in want:
            if want[key] != got[key]:
                problems.append(f"cell {number}, {key!r}:\n    stored:   {want[key]!r:.400}\n"
                                f"    computed: {got[key]!r:.400}")
                break
    return problems
