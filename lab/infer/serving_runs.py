"""Suite ``serving`` of `lab.bench` (chapter 6): latency under load of four serving configurations, measured on
the CPU and predicted for an H100.

Both parts serve `lab.infer.load.shared_prompt_trace` (n requests, each one of S system prompts of P tokens
plus a user suffix, Poisson arrivals at rate λ) at a maximum batch B, in the configurations of `CONFIGS`:

    static                        static batching, each prefill whole
    continuous                    continuous batching (Orca), each prefill whole
    continuous+chunked            + chunked prefill (Sarathi-Serve), C tokens per chunk, budget B + C per step
    continuous+chunked+prefix     + prefix caching (the system prompts' blocks are shared)

at each rate λ and each trace seed of `SEEDS` (a seed draws the system prompts, the suffixes, the lengths and
the arrivals). A run's row holds the p50/p90/p99 of TTFT and TPOT (seconds) and its counts.

**Measured** (``SETTINGS``; the record's "rows" and "sweep"): the book's model serves the trace with
`lab.infer.serve`, greedy, on a clock of each step's measured wall time on this CPU, one thread; a row also
holds every request's TTFT and TPOT. The rates span the CPU's capacity for this trace at B = 4 (chosen from
the CPU time of the trace with every request at 0; the notebook reads the capacity of the recorded run off
its highest rate: requests over the span from the first arrival to the last token). The PyTorch path
has no ragged batch: a step's decode rows run as one forward call and each chunk as its own, and a CPU
step costs about in proportion to its tokens, so chunking cannot shorten a decode stall here. "sweep":
continuous+chunked at the other chunk sizes ``chunk_sizes``, at ``sweep_rate`` (C = 16 is in "rows").

**Predicted** (``PREDICTED``; the record's "predicted_h100"): the same loop without a model
(`lab.infer.schedule`, whose steps are `serve`'s) for Llama-2-7B's shape in bf16 on an H100 SXM5 at its
datasheet ceilings (`lab.core.ceilings.datasheet_ceilings`), on a clock that advances each step by its
roofline time (`roofline_step_time`). Over the step's rows (c, n), n new tokens at positions c … c + n − 1:

    bytes = Ψ_bytes + M_KV · Σ (c + n)                       weights once, each row's cached keys and values
    FLOPs = 2·N · Σ n + 4·L·H·D · Σ (n·c + n(n + 1)/2)       linears per token; attention over the keys up to it
    t_step = max(bytes / β, FLOPs / peak)

(the notation of `lab.infer.roofline`; a decode step of B rows at context S is its `decode_step_cost`).
Activations, the cache's writes, launches and the scheduler's own time are not counted. A prefill chunk
adds FLOPs and few bytes, so a step that carries one costs what the decode step costs while it stays memory
bound (up to about peak/β ≈ 295 tokens with the datasheet's figures): the point of chunked prefill. The
budget B + C = 32 + 256 sits there. The cache holds ``cache_positions`` per row, more than any request needs,
so none is preempted. These are predictions of a model of the hardware, not measurements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from lab.core.ceilings import Ceilings, datasheet_ceilings
from lab.core.checks import check_choice, check_number
from lab.core.stats import paired_ratio, paired_t_p, verdicts
from lab.infer.generate import check_seed
from lab.infer.load import shared_prompt_trace
from lab.infer.requests import Request, ServeResult
from lab.infer.roofline import kv_bytes_per_position, matmul_params, weight_bytes
from lab.infer.scheduler import StepTime, schedule, serve
from lab.infer.suite import LLAMA2_7B_SHAPE, source_text
from lab.models.gpt import GPT, GPTConfig, check_gpt

__all__ = ["CONFIGS", "config_options", "paired_comparisons", "predicted_row", "roofline_step_time"]

CONFIGS = ("static", "continuous", "continuous+chunked", "continuous+chunked+prefix")
METRICS = ("ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "tpot_p99")
SEEDS = (0, 1, 2, 3, 4)
SETTINGS = {"requests": 12, "n_system": 3, "system_len": 32, "suffix_lengths": (4, 16), "output_lengths": (4, 16),
            "max_batch": 4, "chunk_size": 16, "rates": (1.0, 2.0, 4.0, 8.0, 16.0), "compare_rates": (2.0, 16.0),
            "sweep_rate": 4.0, "chunk_sizes": (4, 64)}
QUICK = {**SETTINGS, "requests": 4, "system_len": 16, "suffix_lengths": (2, 4), "output_lengths": (2, 4),
         "rates": (4.0,), "compare_rates": (4.0,), "sweep_rate": 4.0, "chunk_sizes": (8,)}
PREDICTED = {"model": "Llama-2-7B shape (lab.infer.suite.LLAMA2_7B_SHAPE), bf16", "ceilings": "h100-sxm5",
             "requests": 160, "n_system": 4, "system_len": 1000, "suffix_lengths": (100, 400),
             "output_lengths": (100, 200), "max_batch": 32, "chunk_size": 256, "cache_positions": 2048,
             "rates": (4.0, 8.0, 12.0, 16.0, 20.0, 24.0), "compare_rates": (8.0, 24.0)}
PREDICTED_QUICK = {**PREDICTED, "requests": 8, "output_lengths": (4, 8), "rates": (8.0,), "compare_rates": (8.0,)}


def config_options(config: str, chunk_size: int) -> dict:
    """The keywords of `serve` for ``config`` (one of `CONFIGS`) at chunk size ``chunk_size``."""
    check_choice("config", config, CONFIGS)
    options = {"policy": "static" if config == "static" else "continuous"}
    if "chunked" in config:
        options["chunk_size"] = chunk_size
    if config.endswith("prefix"):
        options["prefix_cache"] = True
    return options


def _summary(result: ServeResult, trace: list[Request], config: str, chunk_size: int) -> dict:
    """A run's row: its options, every request's TTFT and TPOT, their percentiles, and its counts."""
    ttft, tpot = result.ttft, result.tpot
    return {"config": config, "chunk_size": chunk_size if "chunked" in config else None,
            **{f"ttft_{q}": v for q, v in result.percentiles("ttft").items()},
            **{f"tpot_{q}": v for q, v in result.percentiles("tpot").items()},
            "ttft": [ttft[r.id] for r in trace], "tpot": [tpot[r.id] for r in trace],
            "span_s": max(result.finish.values()) - min(result.arrival.values()), "steps": len(result.steps),
            "prefill_tokens": result.prefill_tokens, "cached_prefix_tokens": result.cached_prefix_tokens,
            "preemptions": result.preemptions, "generated_tokens": result.generated_tokens}


def roofline_step_time(model: GPT, ceilings: Ceilings, kv_dtype_bytes: int = 2) -> StepTime:
    """A `lab.infer.scheduler` cost model: spans [(c, n), …] of a step → its roofline time in seconds,
    max(bytes / β, FLOPs / peak) with the module docstring's bytes and FLOPs, for ``model`` as stored
    (`weight_bytes`; a model on the ``meta`` device will do), a cache of ``kv_dtype_bytes`` bytes per element,
    and ``ceilings``' bandwidth β and peak (e.g. `lab.core.ceilings.datasheet_ceilings`())."""
    check_gpt("model", model)
    if not isinstance(ceilings, Ceilings):
        raise TypeError(f"ceilings must be a lab.core.ceilings.Ceilings, got {type(ceilings).__name__}")
    cfg, beta, peak = model.config, ceilings.bandwidth, ceilings.peak_flops
    Psi, N, M_kv = weight_bytes(model), matmul_params(model), kv_bytes_per_position(model, kv_dtype_bytes)
    per_pair = 4 * cfg.n_layer * cfg.n_head * cfg.head_dim         # attention FLOPs of one (query, key) pair

    def step_time(spans: list[tuple[int, int]]) -> float:          # `speed_of_light_ms`'s max, without its checks
        tokens, keys = sum(n for _, n in spans), sum(c + n for c, n in spans)
        pairs = sum(n * c + n * (n + 1) // 2 for c, n in spans)
        return max((Psi + M_kv * keys) / beta, (2 * N * tokens + per_pair * pairs) / peak)

    return step_time


@functools.cache
def _h100_7b() -> tuple[GPT, StepTime]:
    """Llama-2-7B's shape in bf16 on the meta device (sizes only) and its step time at the H100's datasheet."""
    with torch.device("meta"):
        model = GPT(LLAMA2_7B_SHAPE).to(torch.bfloat16)
    return model, roofline_step_time(model, datasheet_ceilings(PREDICTED["ceilings"]))


def predicted_row(config: str, rate: float, seed: int, quick: bool = False) -> dict:
    """One predicted run (module docstring): the trace of ``PREDICTED`` (``PREDICTED_QUICK`` if ``quick``) at
    rate ``rate`` (requests/s) and trace seed ``seed``, served in ``config`` by `schedule` on the H100 roofline
    clock. Returns the record's row: {"rate", "seed", "config", "chunk_size", "ttft_p50", …, "tpot_p99",
    "span_s", "steps", "prefill_tokens", "cached_prefix_tokens", "preemptions", "generated_tokens"}
    (seconds; no per-request lists). Deterministic: pure bookkeeping on a cost model."""
    check_choice("config", config, CONFIGS)
    check_number("rate", rate, 0.0, closed=(False, True))
    check_seed(seed)
    check_choice("quick", quick, (True, False))
    s = PREDICTED_QUICK if quick else PREDICTED
    model, step_time = _h100_7b()
    trace = shared_prompt_trace(source_text(model), s["requests"], rate, s["n_system"], s["system_len"],
                                s["suffix_lengths"], s["output_lengths"], seed)
    blocks = s["max_batch"] * s["cache_positions"] // 16
    result = schedule(trace, s["max_batch"], context_length=model.config.context_length, num_blocks=blocks,
                      block_size=16, step_time=step_time, **config_options(config, s["chunk_size"]))
    row = _summary(result, trace, config, s["chunk_size"])
    return {"rate": rate, "seed": seed, **{k: v for k, v in row.items() if k not in ("ttft", "tpot")}}


def _check_pairs(pairs: Mapping[str, tuple[str, str, str]]) -> None:
    if not isinstance(pairs, Mapping) or not pairs:
        raise TypeError(f"pairs must be a non-empty dict name -> (config a, config b, metric), got {pairs!r:.80}")
    for name, pair in pairs.items():
        if not (isinstance(pair, tuple) and len(pair) == 3):
            raise TypeError(f"pairs[{name!r}] must be a tuple (config a, config b, metric), got {pair!r:.80}")
        check_choice(f"pairs[{name!r}] config a", pair[0], CONFIGS)
        check_choice(f"pairs[{name!r}] config b", pair[1], CONFIGS)
        check_choice(f"pairs[{name!r}] metric", pair[2], METRICS)


def _paired(rows: Sequence[Mapping], config: str, rate: float, metric: str) -> dict[int, float]:
    """{seed: metric} of the rows of ``config`` at ``rate``."""
    values = {row["seed"]: row[metric] for row in rows if row["config"] == config and row["rate"] == rate}
    if len(values) < 2:
        raise ValueError(f"rows hold {len(values)} seed(s) of config={config!r} at rate={rate!r}; need >= 2")
    return values


def paired_comparisons(rows: Sequence[Mapping], pairs: Mapping[str, tuple[str, str, str]],
                       rates: Sequence[float]) -> dict[tuple[str, float], dict]:
    """Each pair name → (config a, config b, metric) at each rate of ``rates``, paired by trace seed: the ratio b/a
    of the metric (a percentile of `METRICS`), the geometric mean over seeds with its Student-t 95% interval
    (`lab.core.stats.paired_ratio`), the paired t-test's p of log(b/a) = 0, and the verb after Holm's correction
    across every pair and rate (one family; `lab.core.stats.verdicts`: "lower" = b below a, "higher",
    "equivalent" within ±1%, "inconclusive"). ``rows``: a record's rows ({"rate", "seed", "config", metric}).
    Returns {(name, rate): {"ratio", "ci_low", "ci_high", "n", "p", "verdict"}}."""
    if isinstance(rows, (str, Mapping)) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of a record's rows (dicts), got {type(rows).__name__}")
    _check_pairs(pairs)
    if isinstance(rates, str) or not isinstance(rates, Sequence) or not rates:
        raise TypeError(f"rates must be a non-empty list of rates (requests/s), got {rates!r:.80}")
    out = {}
    for name, (a, b, metric) in pairs.items():
        for rate in rates:
            x, y = _paired(rows, a, rate, metric), _paired(rows, b, rate, metric)
            if x.keys() != y.keys():
                raise ValueError(f"{a!r} and {b!r} at rate={rate!r} have different seeds: {sorted(x)}, {sorted(y)}")
            seeds = sorted(x)
            x, y = [x[s] for s in seeds], [y[s] for s in seeds]
            out[name, rate] = {**paired_ratio(y, x), "p": paired_t_p(y, x)}
    logs = {key: {"ci_low": math.log(r["ci_low"]), "ci_high": math.log(r["ci_high"]), "p": r["p"]}
            for key, r in out.items()}
    for key, verb in verdicts(logs).items():
        out[key]["verdict"] = verb
    return out


def _model(quick: bool) -> GPT:
    if quick:
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=256, context_length=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                             d_ff=64)).eval()
    from lab.models import load_pretrained_lm

    return load_pretrained_lm("lab").eval()


def _measured(s: dict, quick: bool, progress: bool) -> dict:
    """The CPU part: every configuration at every rate and seed, and the chunk-size sweep."""
    model = _model(quick)
    text = source_text(model)
    trace = {(rate, seed): shared_prompt_trace(text, s["requests"], rate, s["n_system"], s["system_len"],
                                               s["suffix_lengths"], s["output_lengths"], seed)
             for rate in {*s["rates"], s["sweep_rate"]} for seed in SEEDS}
    serve(model, trace[s["sweep_rate"], 0][:2], s["max_batch"])                  # warm-up
    rows, sweep = [], []
    bar = tqdm(total=len(SEEDS) * (len(s["rates"]) * len(CONFIGS) + len(s["chunk_sizes"])), desc="serving (cpu)",
               disable=not progress)

    def run_one(rate: float, seed: int, config: str, C: int) -> dict:
        result = serve(model, trace[rate, seed], s["max_batch"], **config_options(config, C))
        bar.update()
        return {"rate": rate, "seed": seed, **_summary(result, trace[rate, seed], config, C)}

    with torch.no_grad():
        for seed in SEEDS:
            rows += [run_one(rate, seed, config, s["chunk_size"]) for rate in s["rates"] for config in CONFIGS]
            sweep += [run_one(s["sweep_rate"], seed, "continuous+chunked", C) for C in s["chunk_sizes"]]
    bar.close()
    return {"settings": s, "seeds": list(SEEDS), "threads": torch.get_num_threads(), "rows": rows, "sweep": sweep}


def _predicted(quick: bool, progress: bool) -> dict:
    """The predicted part: every configuration at every rate and seed on the H100 roofline clock."""
    s = PREDICTED_QUICK if quick else PREDICTED
    keys = [(rate, seed, config) for seed in SEEDS for rate in s["rates"] for config in CONFIGS]
    rows = [predicted_row(config, rate, seed, quick)
            for rate, seed, config in tqdm(keys, desc="serving (predicted, H100)", disable=not progress)]
    ceilings = datasheet_ceilings(s["ceilings"])
    return {"settings": s, "seeds": list(SEEDS), "bandwidth": ceilings.bandwidth,
            "peak_flops": ceilings.peak_flops, "source": ceilings.source, "rows": rows}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """The measured part on the CPU and the predicted part: {"settings", "seeds", "threads", "rows": [{"rate",
    "seed", "config", "chunk_size", "ttft_p50", …, "ttft": [...], ...}], "sweep": [continuous+chunked at each
    chunk size], "predicted_h100": {"settings", "seeds", "bandwidth", "peak_flops", "source", "rows"}}."""
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite serving runs on the cpu, where the notebook that reads "
                         "its record runs")
    return {**_measured(QUICK if quick else SETTINGS, quick, progress), "predicted_h100": _predicted(quick, progress)}
