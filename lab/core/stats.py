"""Uncertainty of the book's comparisons: a paired cluster bootstrap over documents (and seeds),
Holm's correction across the comparisons of one table, and the verbs an interval allows.

Two models scored on the same N evaluation tokens give per-token losses ℓ^a_t and ℓ^b_t
(`lab.data.EvalSample.token_losses`, nats). Their log-perplexities are the means, so

    Δ = log PPL_b − log PPL_a = Σ_t d_t / N,   d_t = ℓ^b_t − ℓ^a_t.

The tokens are not independent: a document is easy or hard for both models, and a method can hurt
one document more than another. The unit that was sampled is the *document* (`lab.data.eval_sample`
draws tokens from every test document), so the interval resamples documents (a cluster bootstrap):
with D_g = Σ_{t in g} d_t and n_g the scored tokens of document g (G documents), Δ = Σ_g D_g / Σ_g n_g,
and its linearised standard error is

    se = √(G/(G−1) · Σ_g (D_g − Δ·n_g)²) / Σ_g n_g.

Each of ``n_boot`` replicates draws G documents with replacement and computes Δ* and se* from them;
the studentized (bootstrap-t) 95% interval is [Δ − t*_{0.975}·se, Δ − t*_{0.025}·se], with t* the
quantiles of (Δ* − Δ)/se*. With 31 documents of unequal length the percentile interval under-covers;
measured on synthetic losses with the test split's document lengths and per-document effects
(sd 0.03 around 0.01; 1,000 trials, `tests/core/test_stats.py`): percentile 92.5%, bootstrap-t 95.1%.

A method that depends on a seed (calibration sample, batch order, initialisation) is run at S ≥ 3 seeds
and gives losses of shape (S, N); Δ is then the mean of the seeds' Δ_s, and se² adds the seeds'
variance of Δ_s over S to the documents' term. A replicate draws S seeds and G documents with
replacement and computes both terms from them, so the interval carries the seed-to-seed variation
as well as the documents'. Measured with a per-seed shift on top of the document effects (1,000
trials each): with 3 seeds, 92.7% coverage for no shift, 91.4% for a shift of sd 0.03 (as large as the
documents' effects) and 94.8% for sd 0.1; with 5 seeds and sd 0.03, 94.5%. Three seeds carry 2 degrees
of freedom for their part of the variance, which no resampling can widen into a full 95%; with the
documents' term alone the same intervals covered about 88%. Two seeds are refused.

The two-sided p-value of Δ = 0 is the bootstrap-t tail, 2·min(P(t* ≥ Δ/se), P(t* ≤ Δ/se)), with
(k + 1)/(n_boot + 1) for k replicates beyond; the 95% interval excludes 0 when p < 0.05, up to the
quantiles' interpolation (within 1/n_boot at the boundary), and `verdict` asks for both.
A table of m comparisons is one family: `holm` adjusts their p-values, and `verdict` gives
"lower"/"higher" only when the adjusted p is below 0.05, "equivalent" only when the whole 95% interval
lies inside ±margin (two one-sided tests at 2.5% each; the margin is fixed in advance,
`EQUIVALENCE_MARGIN`, stated on the notation page), otherwise "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from lab.core.checks import check_int, check_number, check_numbers

# Student-t 0.975 quantiles for df = 1..30 (scipy.stats.t.ppf(0.975, df); tests check them);
# beyond 30 the normal quantile is within 2% of the t quantile.
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959964
ALPHA = 0.05
# Two perplexities are "equivalent" when the 95% interval of PPL_b / PPL_a lies inside 1 ± 1%
# (|Δ| < log 1.01 nats per token): fixed before any comparison was run, stated on the notation page.
EQUIVALENCE_MARGIN = math.log(1.01)
VERDICTS = ("lower", "higher", "equivalent", "inconclusive")


def _losses(values, name: str) -> np.ndarray:
    """``values`` as float64 (S, N): one row per seed (a 1-D input is one seed)."""
    array = check_numbers(name, values).astype(np.float64, copy=False)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be (N,) or (seeds, N) with N >= 2 losses, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has {int((~np.isfinite(array)).sum())} non-finite entries; "
                         "score the same tokens with both models (token_losses) before comparing")
    return array


def _groups(groups, n: int) -> np.ndarray:
    """Document (cluster) index of each of the n tokens, as dense labels 0..G−1."""
    array = check_numbers("groups", groups)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"groups must be (N,) = ({n},) integers (the document of each token), "
                         f"got shape {array.shape}, dtype {array.dtype}")
    labels = np.unique(array, return_inverse=True)[1]
    if labels.max() < 2:
        raise ValueError(f"groups has {labels.max() + 1} document(s); the bootstrap needs at least 3")
    return labels


def _ratio(sums: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Δ = ΣD_g/Σn_g and its linearised standard error over the last axis (the G drawn documents)."""
    total = sizes.sum(-1)
    delta = sums.sum(-1) / total
    g = sums.shape[-1]
    residual = sums - delta[..., None] * sizes
    return delta, np.sqrt(g / (g - 1) * (residual ** 2).sum(-1)) / total


def _seeded_ratio(sums: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Δ and its standard error from per-seed document sums (..., S, G) and sizes (..., 1, G): Δ the mean over
    seeds of ΣD_g/Σn_g, se² the documents' linearised variance of the seed-averaged sums plus, over S ≥ 3
    seeds, the seeds' variance of their Δ_s over S."""
    delta, se = _ratio(sums.mean(-2), sizes[..., 0, :])
    if sums.shape[-2] > 1:
        per_seed = sums.sum(-1) / sizes.sum(-1)
        se = np.sqrt(se ** 2 + per_seed.var(-1, ddof=1) / sums.shape[-2])
    return delta, se


def compare(losses_a, losses_b, groups, n_boot: int = 4000, seed: int = 0) -> dict:
    """Paired comparison of two models' per-token losses on the same tokens, by document.

    losses_a, losses_b: (N,) or (S, N) float (tensor or array), nats, token t scored by both; (S, N)
    is one row per seed (a (N,) side is shared by every seed). groups: (N,) int, the document of each
    token (`EvalSample.documents`; for independent examples, ``arange(N)``).
    Returns {"delta_log_ppl": Δ = mean(ℓ^b − ℓ^a), "ci_low", "ci_high": the 95% bootstrap-t interval of
    Δ, "se", "p": two-sided bootstrap p-value of Δ = 0, "ratio": PPL_b / PPL_a = e^Δ, "ratio_low",
    "ratio_high", "n_tokens", "n_documents", "n_seeds"}.
    """
    a, b = _losses(losses_a, "losses_a"), _losses(losses_b, "losses_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"losses_a and losses_b must score the same tokens, got {a.shape[1]} and {b.shape[1]}")
    _check_seeds(a, b, "losses")
    sums, sizes = document_sums(b - a, groups)                            # (S, G): D_g per seed, and n_g
    return _bootstrap(sums, sizes.astype(np.float64), n_boot, seed)


def document_sums(losses, groups) -> tuple[np.ndarray, np.ndarray]:
    """Per-document sums of per-token losses, what a record keeps of a model's scores.

    losses: (N,) or (S, N) float, nats, as for `compare`; groups: (N,) int, the document of each token.
    Returns (sums, sizes): sums (S, G) float64, Σ_{t in g} ℓ_t of each seed and document, and sizes
    (G,) int64, the scored tokens n_g of each document, documents in the order of their sorted labels.
    """
    array = _losses(losses, "losses")
    labels = _groups(groups, array.shape[1])
    n_groups = int(labels.max()) + 1
    return (np.stack([np.bincount(labels, row, minlength=n_groups) for row in array]),
            np.bincount(labels, minlength=n_groups))


def compare_sums(sums_a, sums_b, sizes, n_boot: int = 4000, seed: int = 0) -> dict:
    """`compare` from per-document sums (`document_sums` of each model on the same tokens and groups).

    sums_a, sums_b: (G,) or (S, G) float, Σ_{t in g} ℓ_t per document (and seed; a (G,) side is shared
    by every seed); sizes: (G,) int >= 1, the tokens n_g of each of the G >= 3 documents. D_g = sums_b −
    sums_a, and the result is `compare`'s for the same tokens (equal up to the rounding of the subtraction).
    """
    n = check_numbers("sizes", sizes)
    if n.ndim != 1 or len(n) < 3 or not np.issubdtype(n.dtype, np.integer) or n.min() < 1:
        raise ValueError(f"sizes must be (G,) integers >= 1 for G >= 3 documents, got {n.tolist()!r:.80}")
    a, b = _losses(sums_a, "sums_a"), _losses(sums_b, "sums_b")
    if a.shape[1] != len(n) or b.shape[1] != len(n):
        raise ValueError(f"sums_a, sums_b and sizes must cover the same G documents, got shapes {a.shape}, "
                         f"{b.shape} and {n.shape}")
    _check_seeds(a, b, "sums")
    return _bootstrap(b - a, n.astype(np.float64), n_boot, seed)


def _check_seeds(a: np.ndarray, b: np.ndarray, name: str) -> None:
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"{name}_a and {name}_b must have the same seeds (rows), got {a.shape[0]} and {b.shape[0]}")
    if max(a.shape[0], b.shape[0]) == 2:
        raise ValueError(f"{name} from 2 seeds are too few to resample (the interval would cover far less than "
                         "95%); give 1 seed, or 3 or more")


def _bootstrap(sums: np.ndarray, sizes: np.ndarray, n_boot: int, seed: int) -> dict:
    """`compare`'s result from the per-seed document sums D_g (S, G) and the sizes n_g (G,)."""
    check_int("n_boot", n_boot, minimum=100)
    check_int("seed", seed, minimum=0)
    n_groups = sums.shape[1]
    delta, se = _seeded_ratio(sums, sizes[None])
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    docs = rng.integers(0, n_groups, size=(n_boot, n_groups))
    drawn = np.take_along_axis(sums[seeds], docs[:, None, :], axis=2)     # (n_boot, S, G)
    rep_delta, rep_se = _seeded_ratio(drawn, sizes[docs][:, None, :])
    t = (rep_delta - delta) / np.where(rep_se > 0, rep_se, np.inf)
    t_low, t_high = np.quantile(t, [ALPHA / 2, 1 - ALPHA / 2])
    low, high = delta - t_high * se, delta - t_low * se
    t_obs = delta / se if se > 0 else math.copysign(math.inf, delta) if delta else 0.0
    tail = min((t >= t_obs).sum(), (t <= t_obs).sum())
    p = 1.0 if delta == 0 and se == 0 else min(1.0, 2 * (tail + 1) / (n_boot + 1))
    return {"delta_log_ppl": float(delta), "ci_low": float(low), "ci_high": float(high), "se": float(se),
            "p": float(p), "ratio": math.exp(delta), "ratio_low": math.exp(low), "ratio_high": math.exp(high),
            "n_tokens": int(sizes.sum()), "n_documents": n_groups, "n_seeds": len(sums)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of the m p-values of one family: sorted ascending, the i-th
    (from 0) becomes max over j <= i of min(1, (m − j)·p_(j)); reject where the adjusted p < α."""
    check_numbers("p_values", p_values, 1)                     # a sequence of numbers, not one number or a str
    p = [check_number("p_values", v, 0.0, 1.0) for v in p_values]
    order = sorted(range(len(p)), key=p.__getitem__)
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def verdict(result: dict, p_adjusted: float | None = None, margin: float = EQUIVALENCE_MARGIN) -> str:
    """The verb a comparison allows (``result``: a `compare` dict, or any dict with "ci_low" and
    "ci_high" of a 95% interval of b − a, and optionally "p"): "lower"/"higher" (b below/above a) when
    the interval excludes 0 and ``p_adjusted`` (Holm across its family; else the comparison's own p,
    if any) is below 0.05; "equivalent" when the interval lies inside (−margin, +margin), margin in the
    interval's unit; otherwise "inconclusive"."""
    if not (isinstance(result, Mapping) and {"ci_low", "ci_high"} <= result.keys()):
        raise TypeError(f"result must be a compare result (a dict with 'ci_low' and 'ci_high'), got {result!r:.200}")
    low, high = check_number("ci_low", result["ci_low"]), check_number("ci_high", result["ci_high"])
    if not low <= high:
        raise ValueError(f"need ci_low <= ci_high, got ci_low={low}, ci_high={high}")
    p = result.get("p", 0.0) if p_adjusted is None else p_adjusted
    p = check_number("p_adjusted", p, 0.0, 1.0)
    margin = check_number("margin", margin, 0.0, closed=(False, True))
    if p < ALPHA and (high < 0 or low > 0):
        return "lower" if high < 0 else "higher"
    return "equivalent" if -margin < low and high < margin else "inconclusive"


def verdicts(results: dict[str, dict], margin: float = EQUIVALENCE_MARGIN) -> dict[str, str]:
    """The verb of each comparison of one family (a table or figure), Holm-corrected across it."""
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a dict of compare results, got {results!r:.200}")
    if not results:
        raise ValueError("results must hold at least one comparison")
    for name, r in results.items():
        if not (isinstance(r, Mapping) and "p" in r):
            raise TypeError(f"results[{name!r}] must be a compare result (a dict with 'p'), got {r!r:.200}")
    adjusted = holm([check_number(f"results[{name!r}]['p']", r["p"], 0.0, 1.0) for name, r in results.items()])
    return {name: verdict(r, p, margin) for (name, r), p in zip(results.items(), adjusted)}


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (normal beyond df = 30)."""
    check_int("df", df, minimum=1)
    return T_975[df - 1] if df <= len(T_975) else Z_975


def seed_spread(values: Sequence[float]) -> dict:
    """Summary of one result over n >= 2 seeds: {"mean", "sd" (ddof 1), "n", "min", "max",
    "ci_low", "ci_high"} with the Student-t 95% interval mean ± t_{0.975, n−1}·sd/√n."""
    x = check_numbers("values", values, 1).astype(np.float64)
    if len(x) < 2:
        raise ValueError(f"values needs results from at least 2 seeds, got {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite, got {x.tolist()}")
    with np.errstate(over="ignore"):
        mean, sd = float(x.mean()), float(x.std(ddof=1))
    if not math.isfinite(mean + sd):
        raise ValueError(f"values={x.tolist()!r:.200} overflow float64 in their mean or sd")
    half = t_quantile_975(len(x) - 1) * sd / math.sqrt(len(x))
    return {"mean": mean, "sd": sd, "n": len(x), "min": float(x.min()), "max": float(x.max()),
            "ci_low": mean - half, "ci_high": mean + half}


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict:
    """The ratio of two paired measurements (times of two functions taken in the same rounds,
    `lab.core.timing.time_interleaved`): the geometric mean of a_i / b_i with its Student-t 95% interval,
    exp(m ± t_{0.975, n−1}·s/√n) for m, s the mean and sd of log(a_i / b_i). Returns {"ratio", "ci_low",
    "ci_high", "n"}; a speed-up of b over a when a and b are times."""
    logs = _paired_logs(a, b)
    mean, half = logs.mean(), t_quantile_975(len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    return {"ratio": math.exp(mean), "ci_low": math.exp(mean - half), "ci_high": math.exp(mean + half),
            "n": len(logs)}


def paired_t_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of mean log(a_i / b_i) = 0, the test behind `paired_ratio`'s
    interval (the same logs, n − 1 degrees of freedom); 1 when every log ratio is the same."""
    from scipy.stats import t as student_t

    logs = _paired_logs(a, b)
    se = logs.std(ddof=1) / math.sqrt(len(logs))
    return 1.0 if se == 0 else float(2 * student_t.sf(abs(logs.mean()) / se, len(logs) - 1))


def _paired_logs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """log(a_i / b_i) of two paired 1-D measurements of equal length >= 2, finite and positive."""
    x, y = (check_numbers(name, v).astype(np.float64) for name, v in (("a", a), ("b", b)))
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"a and b must be paired 1-D measurements of equal length >= 2, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        raise ValueError("a and b must be finite positive measurements")
    with np.errstate(over="ignore", divide="ignore"):
        logs = np.log(x / y)
    if not np.isfinite(logs).all():
        raise ValueError("a and b differ by ratios beyond float64's range")
    return logs
