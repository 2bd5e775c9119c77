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
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from lab.atomic import atomic_write_json

DEFAULT_FILENAME = "lab.metrics.json"
ENV_VAR = "LAB_REPORT_PATH"

Value = int | float | str | bool | list


def report_path(path: str | os.PathLike | None = None) -> Path:
    """The metrics file: ``path``, else ``$LAB_REPORT_PATH``, else ``./lab.metrics.json``."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env) if env else Path.cwd() / DEFAULT_FILENAME


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
        raise FileNotFoundError(f"no metrics file at {file}: nothing was recorded with lab.report.record")
    return json.loads(file.read_text(encoding="utf-8"))


def record(name: str, value: Value, *, path: str | os.PathLike | None = None) -> None:
    """Store ``value`` under ``name`` in the metrics file (other names are kept).

    Raises TypeError/ValueError for an empty or non-string name, a value that is not an
    int/float/str/bool/list, or a NaN/infinite float.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    if not name.strip():
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    plain = _plain(value, name)
    file = report_path(path)
    metrics = read(file) if file.exists() else {}
    metrics[name] = plain
    atomic_write_json(file, dict(sorted(metrics.items())))
