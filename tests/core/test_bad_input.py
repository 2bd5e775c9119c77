"""lab.core's bad-input table (see `tests.bad_input`): every public name refuses the realistic mistakes with
a TypeError or ValueError naming the argument; the validators of `lab.core.checks` first."""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lab.core import (Ceilings, Datasheet, add_seed, atomic_write, atomic_write_json, below_text, ceiling_sizes,
                      check_out_dir, check_then_time, compare, compare_sums, datasheet_ceilings, datasheet_key,
                      device_ceilings, device_kind, device_name, document_sums, get_device, holm, load_results,
                      measure_ceilings, measured_ceilings, paired_ratio, paired_t_p, percent, provenance, read, record,
                      record_comparison, record_comparisons, record_spread, report_path, runs_triton, seed_everything,
                      seed_rows, seed_spread, seeded_sums, t_quantile_975, time_interleaved, time_ms, verdict, verdicts)
from tests.bad_input import Bad, T, V, merged, with_env
from tests.core.bad_checks import CHECKS

CPU = torch.device("cpu")
G = torch.arange(12) // 4                                   # 3 documents of 4 tokens
LA, LB = torch.linspace(1.0, 2.0, 12), torch.linspace(2.0, 1.0, 12)
REF = torch.arange(1.0, 4.0, dtype=torch.float64)
_fn = tuple                                                 # a function of no arguments
RES = {"delta_log_ppl": 0.01, "ci_low": 0.0, "ci_high": 0.02, "p": 0.04, "n_seeds": 1, "n_documents": 31}


@functools.cache
def _dir() -> Path:
    """A folder holding a file, a metrics file that is a JSON list and one that is no JSON (made on first use)."""
    root = Path(tempfile.mkdtemp(prefix="core_bad_input_"))
    atexit.register(shutil.rmtree, root, True)
    (root / "file.txt").write_text("x")
    (root / "list.json").write_text("[1, 2]")
    (root / "broken.json").write_text("{oops")
    return root


@functools.cache
def _seeds_record() -> dict:
    experiments = {}
    add_seed(experiments, {"exp": ({"a": LA.double()}, G)})
    return {"seeds": [0], "settings": {"steps": 3}, "experiments": experiments, "command": "python -m lab.bench x"}


def _seeded(**change):
    args = dict(record=_seeds_record(), experiment="exp", settings={"steps": 3}, seed=0, losses={"a": LA.double()},
                groups=G) | change
    return lambda: seeded_sums(**args)


def _metrics() -> Path:
    return _dir() / "m.json"


def _comparisons(results: dict):
    return lambda: record_comparisons(results, path=_metrics())


CASES: dict[str, list[Bad]] = merged(CHECKS, {  # the validators themselves (tests.core.bad_checks)
    # atomic
    "atomic_write": [
        T(lambda: atomic_write(_dir() / "a.bin", b"data"), r"chunks must be an iterable .* got bytes"),
        T(lambda: atomic_write(_dir() / "a.bin", [b"ok", "text"]), r"chunks\[1\] must be bytes-like"),
        V(lambda: atomic_write(_dir(), [b"x"]), r"path='.*' is an existing folder"),
        V(lambda: atomic_write("", [b"x"]), r"path='' is not allowed"),
        T(lambda: atomic_write(None, [b"x"]), r"path must be a path"),
    ],
    "atomic_write_json": [
        V(lambda: atomic_write_json(_dir() / "a.json", {"x": math.nan}), r"obj is not strict JSON"),
        T(lambda: atomic_write_json(_dir() / "a.json", {"x": torch.ones(1)}), r"obj is not strict JSON"),
        V(lambda: atomic_write_json(_dir(), {}), r"path='.*' is an existing folder"),
    ],
    # records
    "device_name": [
        T(lambda: device_name(5), r"device must be a torch\.device"), V(lambda: device_name("gpu"), r"device='gpu'"),
    ],
    "device_kind": [T(lambda: device_kind(None), r"device must be a torch\.device")],
    "provenance": [
        T(lambda: provenance(CPU, ["python", "-m", "lab.bench"]), r"command must be the command line"),
        V(lambda: provenance(CPU, " "), r"command must be the command line as one non-empty str"),
        V(lambda: provenance("gpu", "python"), r"device='gpu'"),
    ],
    "check_out_dir": [
        V(lambda: check_out_dir(_dir() / "file.txt"), r"--out='.*file\.txt' is an existing file"),
        T(lambda: check_out_dir(5), r"--out must be a path"), V(lambda: check_out_dir(""), r"--out='' is not allowed"),
    ],
    "load_results": [
        T(lambda: load_results(5), r"pattern must be a non-empty glob"),
        V(lambda: load_results(""), r"pattern must be a non-empty glob"),
        V(lambda: load_results("/etc/*.json", _dir()), r"pattern must be a non-empty glob relative"),
        V(lambda: load_results("*.json", _dir() / "file.txt"), r"root='.*' is an existing file"),
        V(lambda: load_results("list.json", _dir()), r"list\.json holds a JSON list"),
    ],
    "add_seed": [
        T(lambda: add_seed([], {"x": ({"a": LA}, G)}), r"experiments and results must be dicts"),
        T(lambda: add_seed({}, "x"), r"experiments and results must be dicts"),
        T(lambda: add_seed({}, {"x": {"a": LA}}), r"results\['x'\] must be a pair"),
        V(lambda: add_seed({}, {"x": ({"a": LA[None]}, G)}), r"results\['x'\]\['a'\] .* 1 dimensions"),
        T(lambda: add_seed({}, {"x": ({"a": LA.tolist()}, G)}), r"results\['x'\]\['a'\] .* torch\.Tensor"),
        V(lambda: add_seed({}, {"x": ({"a": LA, "b": torch.ones(3)}, G)}), r"results\['x'\]\['b'\]: groups must be"),
    ],
    "seed_rows": [
        V(lambda: seed_rows([1.0, 2.0]), r"sums must be \(S, G\) per-seed sums with S >= 1, got shape \(2,\)"),
        V(lambda: seed_rows(np.zeros((0, 3))), r"sums must be \(S, G\) per-seed sums"),
    ],
    "seeded_sums": [
        T(_seeded(record=[]), r"record must be a seeds record"),
        T(_seeded(settings="steps=3"), r"settings must be a dict"), T(_seeded(losses=LA), r"losses must be a dict"),
        T(_seeded(experiment=5), r"experiment must be a str"), T(_seeded(seed=True), r"seed must be an int, got True"),
        V(_seeded(tolerance=math.nan), r"tolerance=nan"), V(_seeded(settings={"steps": 4}), r"settings\['steps'\]=4"),
    ],
    # runtime
    "get_device": [V(with_env("LAB_DEVICE", "tpu", get_device), r"LAB_DEVICE='tpu' is not allowed")],
    "seed_everything": [
        T(lambda: seed_everything(True), r"seed must be an int, got True"),
        T(lambda: seed_everything(1.5), r"seed must be an int, got 1\.5"),
        V(lambda: seed_everything(-1), r"seed=-1 is out of range"),
    ],
    "runs_triton": [
        V(lambda: runs_triton("gpu"), r"device='gpu'"), T(lambda: runs_triton(None), r"device must be a torch\.device"),
    ],
    # stats
    "compare": [
        T(lambda: compare("abc", LB, G), r"losses_a must be real numbers"),
        T(lambda: compare(LA > 1.5, LB, G), r"losses_a must hold real numbers .* dtype bool"),
        T(lambda: compare(LA.numpy() + 1j, LB, G), r"losses_a must hold real numbers .* complex"),
        V(lambda: compare(LA, LB[:6], G), r"losses_a and losses_b must score the same tokens"),
        V(lambda: compare(LA, LB, G.float()), r"groups must be \(N,\) = \(12,\) integers"),
        V(lambda: compare(LA, LB, G // 2), r"groups has 2 document\(s\)"),
        T(lambda: compare(LA, LB, G, n_boot=True), r"n_boot must be an int"),
        V(lambda: compare(LA, LB, G, seed=-1), r"seed=-1 is out of range"),
        V(lambda: compare(LA.where(G > 0, math.nan), LB, G), r"losses_a has 4 non-finite entries"),
    ],
    "document_sums": [
        V(lambda: document_sums(LA, G[:6]), r"groups must be \(N,\)"),
        T(lambda: document_sums(LA, "012"), r"groups must be real numbers"),
        T(lambda: document_sums([[1.0], [2.0, 3.0]], G), r"losses must be real numbers"),
    ],
    "compare_sums": [
        V(lambda: compare_sums(np.ones(3), np.ones(3), [1.0, 2.0, 3.0]), r"sizes must be \(G,\) int"),
        T(lambda: compare_sums(np.ones(3), np.ones(3), [[1, 2], [3]]), r"sizes must be real numbers"),
        T(lambda: compare_sums(np.ones(3), np.ones(3), None), r"sizes must hold real numbers"),
        T(lambda: compare_sums(np.ones(3), "abc", [1, 2, 3]), r"sums_b must be real numbers"),
        V(lambda: compare_sums(np.ones(3), np.ones(3), [1, 2, 3], n_boot=10), r"n_boot=10"),
    ],
    "holm": [
        V(lambda: holm(0.1), r"p_values must have 1 dimensions"),
        T(lambda: holm("0.1"), r"p_values must be real numbers"),
        T(lambda: holm(None), r"p_values must hold real numbers"),
        V(lambda: holm([0.5, 1.5]), r"p_values=1\.5 is out of range"),
        T(lambda: holm([0.5, True]), r"p_values must be a real number, got True"),
    ],
    "verdict": [
        T(lambda: verdict({}), r"result must be a compare result"),
        T(lambda: verdict({"ci_low": "a", "ci_high": 1.0}), r"ci_low must be a real number"),
        V(lambda: verdict({"ci_low": math.nan, "ci_high": 1.0}), r"ci_low=nan"),
        V(lambda: verdict({"ci_low": 0.1, "ci_high": -0.1}), r"ci_low <= ci_high"),
        V(lambda: verdict({"ci_low": 0.0, "ci_high": 1.0}, margin=0), r"margin=0 is out of range"),
        V(lambda: verdict({"ci_low": 0.0, "ci_high": 1.0}, p_adjusted=1.5), r"p_adjusted=1\.5"),
    ],
    "verdicts": [
        T(lambda: verdicts([RES]), r"results must be a dict of compare results"),
        V(lambda: verdicts({}), r"results must hold at least one comparison"),
        T(lambda: verdicts({"a": {"ci_low": 0.0, "ci_high": 1.0}}), r"results\['a'\] must be a compare"),
        V(lambda: verdicts({"a": RES}, margin=math.nan), r"margin=nan"),
    ],
    "t_quantile_975": [
        T(lambda: t_quantile_975(True), r"df must be an int, got True"),
        T(lambda: t_quantile_975(2.0), r"df must be an int, got 2\.0"),
        V(lambda: t_quantile_975(0), r"df=0 is out of range"),
    ],
    "seed_spread": [
        V(lambda: seed_spread([1.0]), r"values needs results from at least 2 seeds"),
        T(lambda: seed_spread("12"), r"values must be real numbers"),
        T(lambda: seed_spread([True, False, True]), r"values must hold real numbers"),
        V(lambda: seed_spread([[1.0, 2.0], [3.0, 4.0]]), r"values must have 1 dimensions"),
        V(lambda: seed_spread([1.0, math.inf]), r"values must be finite"),
        V(lambda: seed_spread([1e308, -1e308, 1e308]), r"values=.* overflow float64"),
    ],
    "paired_ratio": [
        V(lambda: paired_ratio([1.0, 2.0], [1.0]), r"a and b must be paired 1-D measurements"),
        T(lambda: paired_ratio("12", "12"), r"a must be real numbers"),
        T(lambda: paired_ratio([1.0, 2.0], ["1", "2"]), r"b must hold real numbers"),
        V(lambda: paired_ratio([1.0, 0.0], [1.0, 1.0]), r"a and b must be finite positive"),
        V(lambda: paired_ratio([1e300, 1e-300], [1e-300, 1e300]), r"a and b differ by ratios beyond"),
    ],
    "paired_t_p": [
        V(lambda: paired_t_p([1.0, 2.0], [1.0]), r"a and b must be paired 1-D measurements"),
        T(lambda: paired_t_p("12", "12"), r"a must be real numbers"),
        V(lambda: paired_t_p([1.0, 0.0], [1.0, 1.0]), r"a and b must be finite positive"),
    ],
    # timing
    "time_ms": [
        T(lambda: time_ms(None, CPU), r"fn must be a function of no arguments"),
        V(lambda: time_ms(_fn, "gpu"), r"device='gpu' is not a device"),
        T(lambda: time_ms(_fn, 0), r"device must be a torch\.device"),
        V(lambda: time_ms(_fn, torch.device("meta")), r"device='meta' is not allowed"),
        T(lambda: time_ms(_fn, CPU, True), r"repeats must be an int, got True"),
        V(lambda: time_ms(_fn, CPU, 0), r"repeats=0 is out of range"),
    ],
    "check_then_time": [
        T(lambda: check_then_time(REF.float, REF.float(), 0.1, CPU), r"reference must have a dtype"),
        V(lambda: check_then_time(REF.float, REF * math.nan, 0.1, CPU), r"reference contains NaN"),
        V(lambda: check_then_time(REF.float, REF, math.nan, CPU), r"tol=nan is out of range"),
        V(lambda: check_then_time(REF.float, REF, -1.0, CPU), r"tol=-1\.0 is out of range"),
        T(lambda: check_then_time(REF.float, REF, True, CPU), r"tol must be a real number"),
        T(lambda: check_then_time(None, REF, 0.1, CPU), r"fn must be a function"),
        V(lambda: check_then_time(REF.float, REF, 0.1, "gpu"), r"device='gpu'"),
        V(lambda: check_then_time(REF.float, REF, 0.1, CPU, 0), r"repeats=0"),
    ],
    "time_interleaved": [
        T(lambda: time_interleaved([_fn]), r"fns must be a dict"),
        V(lambda: time_interleaved({}), r"fns must name at least one function"),
        T(lambda: time_interleaved({"a": None}), r"fns\['a'\] must be a function"),
        V(lambda: time_interleaved({"a": _fn}, rounds=1), r"rounds=1 is out of range"),
        T(lambda: time_interleaved({"a": _fn}, rounds=True), r"rounds must be an int"),
    ],
    # ceilings
    "Ceilings": [
        V(lambda: Ceilings("x", 0.0, 1e12, "datasheet"), r"bandwidth=0\.0 is out of range"),
        T(lambda: Ceilings("x", "3e12", 1e12, "datasheet"), r"bandwidth must be a real number"),
        V(lambda: Ceilings("x", 3e12, math.nan, "datasheet"), r"peak_flops=nan"),
        T(lambda: Ceilings(5, 3e12, 1e12, "datasheet"), r"device must be a str"),
        V(lambda: Ceilings("x", 3e12, 1e12, "datasheet", int8_ops=2e12), r"int8_ops=2000000000000\.0 and int8_"),
    ],
    "Datasheet": [
        V(lambda: Datasheet("x", "80 GB", -1.0, 1e12, 2e12, "u"), r"bandwidth=-1\.0 is out of range"),
        T(lambda: Datasheet("x", "80 GB", 3e12, True, 2e12, "u"), r"bf16_flops must be a real number"),
        T(lambda: Datasheet("x", 80, 3e12, 1e12, 2e12, "u"), r"memory must be a str"),
    ],
    "datasheet_key": [T(lambda: datasheet_key(5), r"device must be a device name \(str\) or a torch\.device")],
    "datasheet_ceilings": [
        V(lambda: datasheet_ceilings("a100"), r"key='a100' has no datasheet entry"),
        T(lambda: datasheet_ceilings(["h100-sxm5"]), r"key must be a str"),
    ],
    "measured_ceilings": [
        T(lambda: measured_ceilings(5, _dir()), r"device must be a device name"),
        T(lambda: measured_ceilings("h100-sxm5", 5), r"root must be a path"),
        V(lambda: measured_ceilings("h100-sxm5", _dir() / "file.txt"), r"root='.*' is an existing file"),
    ],
    "device_ceilings": [
        V(lambda: device_ceilings("NVIDIA A100", _dir()), r"no ceilings for device 'NVIDIA A100'"),
        T(lambda: device_ceilings(5, _dir()), r"device must be a device name"),
    ],
    "ceiling_sizes": [
        V(lambda: ceiling_sizes("gpu", True), r"device='gpu'"),
        T(lambda: ceiling_sizes(CPU, "yes"), r"quick must be one of \(False, True\)"),
        T(lambda: ceiling_sizes(CPU, 1), r"quick must be one of"),
    ],
    "measure_ceilings": [
        V(lambda: measure_ceilings(CPU, torch.int8, True), r"dtype=torch\.int8 is not allowed"),
        T(lambda: measure_ceilings(CPU, "bf16", True), r"dtype must be a torch dtype"),
        T(lambda: measure_ceilings(None, torch.float32, True), r"device must be a torch\.device"),
        T(lambda: measure_ceilings(CPU, torch.float32, "yes"), r"quick must be one of"),
    ],
    # report
    "report_path": [
        T(lambda: report_path(5), r"path must be a path"),
        V(lambda: report_path(_dir()), r"path='.*' is an existing folder"),
        V(with_env("LAB_REPORT_PATH", tempfile.gettempdir(), report_path), r"LAB_REPORT_PATH='.*' is an existing"),
    ],
    "read": [
        V(lambda: read(_dir() / "list.json"), r"path='.*list\.json' holds a JSON list"),
        V(lambda: read(_dir() / "broken.json"), r"path='.*broken\.json' is not a metrics file"),
        V(lambda: read(_dir()), r"path='.*' is an existing folder"),
    ],
    "record": [
        V(lambda: record("", 1, path=_metrics()), r"name must be a non-empty str"),
        T(lambda: record(5, 1, path=_metrics()), r"name must be a str, got int 5"),
        V(lambda: record("x", math.nan, path=_metrics()), r"record\('x', value=nan\)"),
        V(lambda: record("x", [1.0, math.inf], path=_metrics()), r"value=inf\): value must be finite"),
        T(lambda: record("x", {"a": 1}, path=_metrics()), r"value=\{'a': 1\}\): value must be an int"),
        T(lambda: record("x", torch.ones(2), path=_metrics()), r"value must be an int, float"),
        T(lambda: record("x", 1, path=5), r"path must be a path"),
        V(lambda: record("x", 1, path=_dir() / "list.json"), r"path='.*list\.json' holds a JSON list"),
    ],
    "below_text": [
        T(lambda: below_text(True, 1e-5), r"value must be a real number, got True"),
        V(lambda: below_text(-1e-7, 1e-5), r"value=-1e-07 is out of range"),
        V(lambda: below_text(1e-7, 0.0), r"bound=0\.0 is out of range"),
        T(lambda: below_text(1e-7, "1e-5"), r"bound must be a real number"),
    ],
    "percent": [
        T(lambda: percent(True), r"delta_log_ppl must be a real number, got True"),
        T(lambda: percent("0.1"), r"delta_log_ppl must be a real number"),
        V(lambda: percent(math.nan), r"delta_log_ppl=nan is out of range"),
        V(lambda: percent(1000.0), r"delta_log_ppl=1000\.0 is out of range"),
    ],
    "record_comparisons": [
        T(lambda: record_comparisons([RES], path=_metrics()), r"results must be a non-empty dict"),
        T(lambda: record_comparisons({5: RES}, path=_metrics()), r"each name of results must be a str"),
        T(lambda: record_comparisons({"a": {"p": 0.1}}, path=_metrics()), r"results\['a'\] must be a lab"),
        T(_comparisons({"a": RES, "b": RES | {"n_seeds": "3"}}), r"results\['b'\]\['n_seeds'\] must be an int"),
        T(_comparisons({"a": RES | {"n_documents": 2.5}}), r"results\['a'\]\['n_documents'\] must be an int"),
        V(_comparisons({"a": RES, "b": RES | {"delta_log_ppl": math.nan}}), r"results\['b'\]\['delta_log_ppl'\]=nan"),
        V(_comparisons({"a": RES | {"ci_high": 800.0}}), r"results\['a'\]\['ci_high'\]=800\.0 is out of range"),
        T(lambda: record_comparisons({"a": RES}, unit_name=5, path=_metrics()), r"unit_name must be a"),
        V(lambda: record_comparisons({"a": RES}, scale="log", path=_metrics()), r"scale='log'"),
        T(lambda: record_comparisons({"a": RES}, margin=True, path=_metrics()), r"margin must be a real"),
        V(lambda: record_comparisons({"a": RES}, path=_dir()), r"path='.*' is an existing folder"),
    ],
    "record_comparison": [
        T(lambda: record_comparison(5, RES, path=_metrics()), r"name must be a str"),
        T(lambda: record_comparison("x", [RES], path=_metrics()), r"result must be a lab\.core\.stats"),
        V(lambda: record_comparison("x", RES, scale="log", path=_metrics()), r"scale='log'"),
        V(lambda: record_comparison("x", RES | {"p": 2.0}, path=_metrics()), r"\['x'\]\['p'\]=2\.0"),
    ],
    "record_spread": [
        V(lambda: record_spread("s", [1.0], path=_metrics()), r"values needs results from at least 2"),
        T(lambda: record_spread("s", "12", path=_metrics()), r"values must be real numbers"),
        T(lambda: record_spread("s", [1.0, 2.0], unit=5, path=_metrics()), r"unit must be a str"),
        T(lambda: record_spread(5, [1.0, 2.0], path=_metrics()), r"name must be a str"),
        V(lambda: record_spread(" ", [1.0, 2.0], path=_metrics()), r"name must be a non-empty str"),
        V(lambda: record_spread("s", [1.0, 2.0], margin=0, path=_metrics()), r"margin=0 is out of"),
    ],
})

NO_INPUT: dict[str, str] = {
    "has_triton_gpu": "takes no argument: it reads TRITON_INTERPRET and whether CUDA and Triton are present",
    "triton_interpret": "a context manager without arguments: it sets TRITON_INTERPRET=1 inside its block",
}
