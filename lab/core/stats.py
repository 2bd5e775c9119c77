"""Uncertainty of the book's comparisons: paired block bootstrap and spread over seeds.

Two models scored on the same N evaluation tokens give per-token losses ℓ^a_t and ℓ^b_t
(`lab.perplexity.token_losses`, nats). Their log-perplexities are the means, so

    Δ = log PPL_b − log PPL_a = (1/N) Σ_t d_t,   d_t = ℓ^b_t − ℓ^a_t.

The tokens are not independent (neighbours share context, a paragraph is easy or hard for
both models), so the interval comes from a *block* bootstrap: the N differences are cut into
contiguous blocks of ``block`` tokens, n_blocks blocks are drawn with replacement, and the
statistic Σ d / Σ size over the drawn blocks is recomputed ``n_boot`` times; the 2.5% and
97.5% quantiles of those replicates are the 95% interval [ci_low, ci_high] and their standard
deviation is the standard error, z = Δ / se. Pairing is what makes the interval tight: the
per-token sd of ℓ is ≈ 3 nats, but most of that variation is shared by a and b and cancels in d.

A method that depends on a random seed (calibration sample, batch order) is run at several
seeds; `seed_spread` summarises the values with their mean, sample sd and a Student-t 95%
interval of the mean. `verdict` turns an interval into the verb the text may use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lab.core.checks import check_int

# Student-t 0.975 quantiles for df = 1..30 (scipy.stats.t.ppf(0.975, df); tests check them);
# beyond 30 the normal quantile is within 2% of the t quantile.
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959964


def _losses(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 losses, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has {int((~np.isfinite(array)).sum())} non-finite entries; "
                         "score the same tokens with both models (token_losses) before comparing")
    return array


def block_sums(d: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and sizes of the contiguous blocks of ``block`` entries of d (the last may be shorter)."""
    starts = np.arange(0, len(d), block)
    return np.add.reduceat(d, starts), np.diff(np.append(starts, len(d)))


def compare(losses_a, losses_b, block: int = 256, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two models' per-token losses on the same tokens.

    losses_a, losses_b: (N,) float (tensor or array), nats, token t scored by both models.
    Returns {"delta_log_ppl": Δ = mean(ℓ^b − ℓ^a), "ci_low", "ci_high": 95% paired block
    bootstrap interval of Δ, "se", "z": Δ / se, "ratio": PPL_b / PPL_a = e^Δ, "ratio_low",
    "ratio_high", "n_tokens", "n_blocks", "block"}.
    """
    a, b = _losses(losses_a, "losses_a"), _losses(losses_b, "losses_b")
    if a.shape != b.shape:
        raise ValueError(f"losses_a and losses_b must score the same tokens, got {len(a)} and {len(b)}")
    check_int("block", block, minimum=1)
    check_int("n_boot", n_boot, minimum=100)
    check_int("seed", seed, minimum=0)
    d = b - a
    sums, sizes = block_sums(d, block)
    if len(sums) < 2:
        raise ValueError(f"block={block} leaves {len(sums)} block of {len(d)} tokens; "
                         "the bootstrap needs at least 2 blocks")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    replicates = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    delta = float(d.mean())
    low, high = np.quantile(replicates, [0.025, 0.975])
    se = float(replicates.std(ddof=1))
    return {"delta_log_ppl": delta, "ci_low": float(low), "ci_high": float(high), "se": se,
            "z": delta / se if se > 0 else math.copysign(math.inf, delta) if delta else 0.0,
            "ratio": math.exp(delta), "ratio_low": math.exp(low), "ratio_high": math.exp(high),
            "n_tokens": len(d), "n_blocks": len(sums), "block": block}


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (normal beyond df = 30)."""
    check_int("df", df, minimum=1)
    return T_975[df - 1] if df <= len(T_975) else Z_975


def seed_spread(values: Sequence[float]) -> dict:
    """Summary of one result over n >= 2 seeds: {"mean", "sd" (ddof 1), "n", "min", "max",
    "ci_low", "ci_high"} with the Student-t 95% interval mean ± t_{0.975, n−1}·sd/√n."""
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"values needs results from at least 2 seeds, got {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite, got {x.tolist()}")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = t_quantile_975(len(x) - 1) * sd / math.sqrt(len(x))
    return {"mean": mean, "sd": sd, "n": len(x), "min": float(x.min()), "max": float(x.max()),
            "ci_low": mean - half, "ci_high": mean + half}


def verdict(ci_low: float, ci_high: float) -> str:
    """The verb an interval of (b − a) allows: "lower" (b below a: the interval is below 0),
    "higher" (above 0), or "level" (it contains 0)."""
    if not ci_low <= ci_high:
        raise ValueError(f"need ci_low <= ci_high, got ci_low={ci_low}, ci_high={ci_high}")
    return "lower" if ci_high < 0 else "higher" if ci_low > 0 else "level"
