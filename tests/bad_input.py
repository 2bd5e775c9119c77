"""The bad-input table of a package: what a table holds, and how `tests/test_public_api.py` runs every one.

Every package of `lab` with public names (its ``__all__``) has ``tests/<package>/test_bad_input.py`` holding
``CASES``: for each public name, a list of `Bad` calls that must be refused, and ``NO_INPUT``: the public names
that take no argument a caller could get wrong (an exception class, a result record built only by `lab`), each
with the reason. `tests/test_public_api.py` fails when a public name is in neither.

A `Bad` is one call: ``call`` makes it, ``error`` is the exception it must raise (ValueError or TypeError, the
ones `lab.core.checks` raises) and ``match`` a regular expression its message must contain (the argument's
name at least; `lab.core.checks` adds the value and what is allowed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import pytest

NOT_GPT = r"must be a lab GPT \(lab\.models\.GPT\)"      # `lab.models.gpt.check_gpt`'s message


@dataclass(frozen=True)
class Bad:
    """One call that must be refused with ``error`` whose message matches ``match``."""

    call: Callable[[], object]
    error: type[Exception]
    match: str


def T(call, match: str) -> Bad:
    """A call refused with TypeError (a wrong type) whose message matches ``match``."""
    return Bad(call, TypeError, match)


def V(call, match: str) -> Bad:
    """A call refused with ValueError (the right type, a wrong value) whose message matches ``match``."""
    return Bad(call, ValueError, match)


def with_env(name: str, value: str, fn: Callable[[], object]) -> Callable[[], object]:
    """The call ``fn()`` with the environment variable ``name`` set to ``value`` (restored afterwards)."""
    return lambda: mock.patch.dict(os.environ, {name: value})(fn)()


def merged(*tables: dict[str, list[Bad]]) -> dict[str, list[Bad]]:
    """One table from several (a long table split into modules); a name in two of them is an error, not a silent
    overwrite."""
    out: dict[str, list[Bad]] = {}
    for table in tables:
        if twice := out.keys() & table.keys():
            raise ValueError(f"names in two tables: {sorted(twice)}")
        out |= table
    return out


def assert_refused(bad: Bad) -> None:
    """The call raises exactly ``bad.error`` (not a subclass) with a message matching ``bad.match``."""
    with pytest.raises(Exception) as caught:
        bad.call()
    assert type(caught.value) is bad.error, f"raised {type(caught.value).__name__}: {caught.value}"
    assert caught.match(bad.match)
