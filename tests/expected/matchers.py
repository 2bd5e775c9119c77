"""What a recorded metric must satisfy: a range, a timing, a value, a bound, a claim with its interval, or
per-seed values that vary."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lab.core import report


@dataclass(frozen=True)
class Between:
    """lo <= value <= hi (inclusive)."""

    lo: float
    hi: float

    def __contains__(self, value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"[{self.lo}, {self.hi}]"


def exactly(target: float) -> Between:
    return Between(target, target)


def near(target: float, rel: float) -> Between:
    """|value − target| <= rel·|target|."""
    return Between(target - rel * abs(target), target + rel * abs(target))


@dataclass(frozen=True)
class Timing:
    """A time, or a ratio of times, of this run: recorded and glued, but asserted only to be a
    finite positive number (timings vary from machine to machine and run to run; speed is
    measured by lab.bench, never asserted in tests)."""

    def __contains__(self, value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and value > 0

    def __str__(self) -> str:
        return "a finite positive timing"


@dataclass(frozen=True)
class Is:
    """value is exactly this bool (a yes/no check the notebook records)."""

    expected: bool

    def __contains__(self, value) -> bool:
        return value is self.expected

    def __str__(self) -> str:
        return f"is {self.expected}"


@dataclass(frozen=True)
class Below:
    """A quantity below a bound (rounding noise, a p-value far in the tail), recorded as its text
    (``lab.core.report.below_text``: "< 1e-05"), the same on every CPU; a value at or above the bound is
    recorded as itself and fails."""

    bound: float

    def __contains__(self, value) -> bool:
        return value == report.below_text(0.0, self.bound)

    def __str__(self) -> str:
        return f"below {self.bound:g}"


@dataclass(frozen=True)
class Claim:
    """A comparison recorded by ``report.record_comparisons`` as [Δ%, low%, high%] with the verb of the
    sentence that states it: "lower" (high < 0), "higher" (low > 0), "equivalent" (the interval inside
    ±1, the margin in % or points), "inconclusive", or "any" where the sentence states the size and no verb;
    optionally the size Δ% within [lo, hi]. The notebook test also checks that the recorded verdict
    (``name_verdict``, after Holm's correction across the family) is this verb. A verb must not hang on
    the CPU: `make output-spread` lists the claims whose interval ends closer to 0 than MULTIPLE times
    the distance that end moved between torch's CPU code paths (tests/output_spread.py); those read
    "any", with no verb in the text."""

    verb: str
    lo: float = -math.inf
    hi: float = math.inf

    def __post_init__(self):
        if self.verb not in ("lower", "higher", "equivalent", "inconclusive", "any"):
            raise ValueError(f"verb={self.verb!r}; allowed: lower, higher, equivalent, inconclusive, any")

    def __contains__(self, value) -> bool:
        if not (isinstance(value, list) and len(value) == 3 and all(map(math.isfinite, value))):
            return False
        mid, low, high = value
        supported = {"lower": high < 0, "higher": low > 0, "equivalent": -1.0 < low and high < 1.0,   # the ±1% margin
                     "inconclusive": True, "any": True}[self.verb]
        return supported and low <= mid <= high and self.lo <= mid <= self.hi

    def __str__(self) -> str:
        return f"a {self.verb!r} interval [Δ%, low%, high%] with Δ% in [{self.lo}, {self.hi}]"


@dataclass(frozen=True)
class Varies:
    """A list of finite numbers, one per seed, not all equal (a sentence says the result moves with
    the seed)."""

    def __contains__(self, value) -> bool:
        return isinstance(value, list) and len(value) >= 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value) \
            and len(set(value)) > 1

    def __str__(self) -> str:
        return "a list of per-seed values that are not all equal"
