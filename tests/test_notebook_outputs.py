"""The stored-output comparison tells rounding from regression: it passes another CPU's last digits and
fails a changed number. Each test edits a copy of a stored notebook and compares the two; nothing is
executed."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tests.notebook_outputs import TOLERANCE, Number, Tolerance, differences, glue_name, glued, numbers, tolerance_class

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
QUANT = NOTEBOOKS / "03_quantization.ipynb"


def _edited(notebook: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``notebook`` in which ``edit(output) -> bool`` has changed exactly one output."""
    nb = nbformat.read(notebook, as_version=4)
    changed = sum(bool(edit(out, cell)) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    assert changed == 1, f"the edit changed {changed} outputs, not one"
    tmp_path.mkdir(parents=True, exist_ok=True)
    copy = tmp_path / notebook.name
    nbformat.write(nb, copy)
    return copy


def _glue_edit(name: str, change):
    """An edit of the glued value ``name``: its text/plain → change(text)."""
    def edit(out, cell):
        if glue_name(out) != name:
            return False
        key = "application/papermill.record/text/plain"
        out["data"][key] = change(out["data"][key])
        return True
    return edit


def _same_digits(number: Number, value: float) -> str:
    """``value`` printed like ``number``: its count of decimals, its notation."""
    decimals = len(number.text.split(".")[1].split("e")[0]) if "." in number.text else 0
    return f"{value:.{decimals}e}" if "e" in number.text else f"{value:.{decimals}f}"


def _move_table_entry(tmp_path: Path, move) -> tuple[Path, Number]:
    """A copy of notebook 03 whose first table (text/html and text/plain) has its first decimal
    entry moved to ``move(number, tolerance)``, printed with the same digits."""
    def edit(out, cell):
        html = out.get("data", {}).get("text/html", "")
        entries = re.findall(r"<td>([-+]?\d+\.\d+(?:e[-+]\d+)?)</td>", html)
        if not entries or edit.moved:
            return False
        _, [number] = numbers(entries[0])
        text = _same_digits(number, move(number, TOLERANCE[tolerance_class(cell)]))
        out["data"]["text/html"] = html.replace(f"<td>{entries[0]}</td>", f"<td>{text}</td>", 1)
        out["data"]["text/plain"] = out["data"]["text/plain"].replace(entries[0], text, 1)
        edit.moved = number
        return True
    edit.moved = None
    return _edited(QUANT, tmp_path, edit), edit.moved


def test_a_stored_notebook_equals_itself():
    assert differences(QUANT, QUANT) == []


def test_a_perplexity_one_percent_higher_fails(tmp_path):
    text = glued(QUANT)["dense_perplexity"]
    copy = _edited(QUANT, tmp_path, _glue_edit("dense_perplexity", lambda t: repr(1.01 * float(t))))
    [problem] = differences(QUANT, copy)
    assert "'glue dense_perplexity'" in problem and text in problem


def test_a_table_entry_ten_tolerances_away_fails(tmp_path):
    copy, number = _move_table_entry(tmp_path, lambda n, t: n.value + 10 * (t.rel * abs(n.value) + t.abs + n.unit))
    problems = differences(QUANT, copy)
    assert len(problems) == 2, problems                       # its text/html and its text/plain
    assert all(number.text in p and "beyond Tolerance" in p for p in problems)


def test_a_last_digit_one_unit_away_passes(tmp_path):
    copy, number = _move_table_entry(tmp_path, lambda n, t: n.value + n.unit)
    assert number.unit > 0 and differences(QUANT, copy) == []


def test_an_integer_is_exact_and_words_are_text(tmp_path):
    a, b = numbers("6,524,160 parameters")[1][0], numbers("6,524,161 parameters")[1][0]
    assert (a.value, a.unit) == (6_524_160, 0.0) and not Tolerance(rel=0.1, abs=1.0, points=1.0).allows(a, b)
    copy = _edited(QUANT, tmp_path, _glue_edit("dense_perplexity", lambda t: t + " tokens"))
    [problem] = differences(QUANT, copy)
    assert "the text differs" in problem


@pytest.mark.parametrize("text, values, units", [
    ("-4.34% (95% CI -5.65% to -3.02%)", [-4.34, 95, -5.65, -3.02], [0.01, 0.0, 0.01, 0.01]),
    ("<td>3.0262e-01</td>", [0.30262], [1e-5]),
    ("int4 g64, sm_90, torch 2.13.0, 4096x4096", [4096], [0.0]),   # the second 4096 is part of a word
    ("[-4.e-05  5.e-01]", [-4e-5, 0.5], [1e-5, 0.1]),                # numpy's floats without decimals
    ("30-70% of 1,234 tokens; 1e-06", [30, 70, 1234, 1e-6], [0.0, 0.0, 0.0, 1e-6]),
])
def test_numbers_are_found_with_the_unit_of_their_last_digit(text, values, units):
    _, found = numbers(text)
    assert [n.value for n in found] == pytest.approx(values) and [n.unit for n in found] == pytest.approx(units)


def test_a_glued_float_is_exact_and_table_columns_may_change_width():
    assert numbers("0.5", exact=True)[1][0].unit == 0.0
    assert numbers("a    0.0279\nb   -0.1890")[0] == numbers("a  0.033\nb -0.177")[0]
    assert numbers(" 9.99\n 3.20")[0] == numbers("10.0\n 3.2")[0]     # a column one digit wider


def _glued_copy(tmp_path: Path, name: str, value: float) -> Path:
    """A copy of notebook 03 whose glued ``name`` (a float, u = 0) is ``value``."""
    return _edited(QUANT, tmp_path, _glue_edit(name, lambda _: repr(value)))


@pytest.mark.parametrize("name, term", [("dense_perplexity", "rel"), ("group_over_tensor_mse_4bit", "rel"),
                                        ("gptq_vs_rtn_2_group", "points")])
def test_a_glued_number_passes_half_its_tolerance_and_fails_twice_it(tmp_path, name, term):
    """The band itself, not only the printed digit: u = 0 for a glued float."""
    text = glued(QUANT)[name]
    cell = next(c for c in nbformat.read(QUANT, as_version=4).cells if c.cell_type == "code"
                and any(glue_name(o) == name for o in c.outputs))
    tolerance = TOLERANCE[tolerance_class(cell)]
    if term == "points":                        # [Δ, low, high] in percentage points: move Δ
        mid, *ends = numbers(text, exact=True)[1]
        for factor, passes in ((0.5, True), (2.0, False)):
            moved = repr([mid.value + factor * tolerance.points, *(e.value for e in ends)])
            copy = _edited(QUANT, tmp_path / str(factor), _glue_edit(name, lambda _: moved))
            assert (differences(QUANT, copy) == []) is passes, (factor, differences(QUANT, copy))
        return
    value = float(text)
    band = tolerance.rel * abs(value) + tolerance.abs
    for factor, passes in ((0.5, True), (2.0, False)):
        copy = _glued_copy(tmp_path / str(factor), name, value + factor * band)
        assert (differences(QUANT, copy) == []) is passes, (factor, differences(QUANT, copy))


def test_a_small_number_is_measured_absolutely_and_a_larger_one_relatively():
    tolerance = Tolerance(rel=1e-3, abs=1e-6, points=0.0)
    a, b = numbers("5.101e-04 6.999e-04", exact=True)[1]
    assert not tolerance.allows(a, b)                        # 37% apart: a change, not rounding
    a, b = numbers("8.7e-06 8.0e-06", exact=True)[1]
    assert tolerance.allows(a, b)                            # 7e-7 apart, below abs
    with pytest.raises(ValueError, match="Tolerance rel=-0.1 is not allowed"):
        Tolerance(rel=-0.1, abs=0.0, points=0.0)


def test_a_cell_takes_one_known_tolerance_class():
    cell = nbformat.v4.new_code_cell(metadata={"tags": ["tolerance-nonesuch"]})
    with pytest.raises(ValueError, match=r"cell tags \['tolerance-nonesuch'\]"):
        tolerance_class(cell)
    assert tolerance_class(nbformat.v4.new_code_cell()) == "default"


def test_changes_in_percent_are_compared_in_points():
    tolerance = Tolerance(rel=0.0, abs=0.0, points=0.1)
    _, (mid, ci, low, high) = numbers("+0.84% (95% CI +0.58% to +1.12%)")
    assert mid.percent and low.percent and ci.integer
    _, (near, far) = numbers("+0.93% and +1.00%")
    assert tolerance.allows(mid, near) and not tolerance.allows(mid, far)
    assert all(n.percent for n in numbers("[0.84, 0.58, 1.12]", exact=True, percent=True)[1])


def _comparison_notebook(path: Path, interval: list[float], verdict: str) -> Path:
    """A one-cell notebook that glues a comparison as lab.core.report.record_comparison does."""
    def glue(name, value):
        prefix = "application/papermill.record/"
        return nbformat.v4.new_output("display_data", {f"{prefix}text/plain": repr(value)},
                                      metadata={"scrapbook": {"name": name, "mime_prefix": prefix}})
    cell = nbformat.v4.new_code_cell("report.record_comparison(...)", execution_count=1,
                                     outputs=[glue("x", interval), glue("x_verdict", verdict)])
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    return path


def test_a_verb_may_change_only_where_its_interval_ends_within_the_tolerance_of_zero_or_the_margin(tmp_path):
    points = TOLERANCE["default"].points
    edge = _comparison_notebook(tmp_path / "edge.ipynb", [-0.5, -1.5, -points / 2], "lower")
    crossed = _comparison_notebook(tmp_path / "crossed.ipynb", [-0.5, -1.5, points / 2], "inconclusive")
    assert differences(edge, crossed) == []
    inside = _comparison_notebook(tmp_path / "inside.ipynb", [0.2, -0.5, 1 - points / 4], "equivalent")
    outside = _comparison_notebook(tmp_path / "outside.ipynb", [0.2, -0.5, 1 + points / 4], "inconclusive")
    assert differences(inside, outside) == []                     # an end at the ±1% equivalence margin
    far = _comparison_notebook(tmp_path / "far.ipynb", [-0.5, -1.5, -0.2], "lower")
    [text, number] = differences(far, _comparison_notebook(tmp_path / "flipped.ipynb", [-0.5, -1.5, 0.01], "inconclusive"))
    assert "the text differs" in text and "beyond Tolerance" in number
