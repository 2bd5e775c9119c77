"""What a server takes and gives back: a `Request` (prompt, length, arrival) and a `ServeResult` (outputs,
counts, and the latency of every request on the server's clock).

With a request's arrival a, the time its first token was produced t₁, the time of its last token t_n,
and n = ``max_new_tokens`` (the notation of chapter 6; DistServe, Zhong et al. 2024, for goodput):

    TTFT = t₁ − a                          time to first token (queueing + prefill)
    TPOT = (t_n − t₁) / (n − 1)            time per output token after the first (0 when n = 1)
    goodput = |{requests with TTFT ≤ SLO_TTFT and TPOT ≤ SLO_TPOT}| / (max t_n − min a)   requests/s

Percentiles are numpy's linear interpolation between order statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lab.core.checks import check_choice, check_int, check_number

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Request:
    """A prompt (T₀,) int64, the number of tokens to generate for it, and its arrival time (seconds)."""

    id: int
    prompt: torch.Tensor
    max_new_tokens: int
    arrival: float = 0.0

    def __post_init__(self) -> None:
        check_int("id", self.id, minimum=None)
        if not (torch.is_tensor(self.prompt) and self.prompt.dtype == torch.int64 and self.prompt.dim() == 1):
            got = (f"{self.prompt.dtype} of shape {tuple(self.prompt.shape)}" if torch.is_tensor(self.prompt)
                   else type(self.prompt).__name__)
            raise TypeError(f"request {self.id}: prompt must be a 1-D int64 tensor of token ids, got {got}")
        if not len(self.prompt):
            raise ValueError(f"request {self.id}: prompt is empty; give at least one token")
        check_int("max_new_tokens", self.max_new_tokens)
        check_number("arrival", self.arrival, 0.0)


@dataclass
class ServeResult:
    outputs: dict[int, torch.Tensor]    # request id → generated tokens (max_new_tokens,) int64
    decode_steps: int
    active_rows: list[int]              # rows computed in each decode step
    prefill_tokens: int                 # tokens run through prefills, recomputations included
    preemptions: int
    seconds: float                      # wall time of the whole run
    max_batch: int
    policy: str
    cached_prefix_tokens: int = 0       # prompt tokens found in the prefix cache, not run (every admission)
    steps: list[tuple[int, int]] = field(default_factory=list)   # (decode rows, prefill tokens) of each step
    arrival: dict[int, float] = field(default_factory=dict)      # request id → arrival a (s, server clock)
    first_token: dict[int, float] = field(default_factory=dict)  # request id → t₁
    first_tokens: dict[int, int] = field(default_factory=dict)   # request id → n₁, the tokens out by t₁
    finish: dict[int, float] = field(default_factory=dict)       # request id → t_n
    generated_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.generated_tokens = sum(len(t) for t in self.outputs.values())

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds

    @property
    def utilization(self) -> float:
        """Mean fraction of the ``max_batch`` rows that a decode step computes."""
        return sum(self.active_rows) / max(1, self.decode_steps * self.max_batch)

    @property
    def ttft(self) -> dict[int, float]:
        """Request id → TTFT = t₁ − a (seconds)."""
        return {i: self.first_token[i] - self.arrival[i] for i in self.outputs}

    @property
    def tpot(self) -> dict[int, float]:
        """Request id → TPOT = (t_n − t₁) / (n − n₁) (seconds): the time per token after the step of the first,
        which emits n₁ tokens (n₁ = 2 where a whole prefill's row also decodes in its admission step, 1 after a
        last chunk); (n − 1) when every token comes one per step; 0 if all n come in that step."""
        return {i: (self.finish[i] - self.first_token[i]) / max(1, len(out) - self.first_tokens.get(i, 1))
                for i, out in self.outputs.items()}

    def percentiles(self, metric: str) -> dict[str, float]:
        """{"p50", "p90", "p99"} of ``metric`` ∈ {"ttft", "tpot"} over the requests (seconds)."""
        check_choice("metric", metric, ("ttft", "tpot"))
        values = list(getattr(self, metric).values())
        return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}

    def goodput(self, slo_ttft: float, slo_tpot: float) -> float:
        """Requests per second that meet both SLOs (TTFT ≤ ``slo_ttft``, TPOT ≤ ``slo_tpot``, seconds), over the
        span from the first arrival to the last token."""
        check_number("slo_ttft", slo_ttft, 0.0)
        check_number("slo_tpot", slo_tpot, 0.0)
        ttft, tpot = self.ttft, self.tpot
        good = sum(ttft[i] <= slo_ttft and tpot[i] <= slo_tpot for i in self.outputs)
        return good / (max(self.finish.values()) - min(self.arrival.values()))
