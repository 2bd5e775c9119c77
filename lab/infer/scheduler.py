"""Serving many requests: static batching vs continuous batching over one paged KV cache.

A decode step costs about the same whether it carries 1 row or 32 as long as it is memory bound
(the weights are read once per step either way), so a server batches requests. The question is
when a request may join a batch:

* static batching: take up to ``max_batch`` waiting requests, run them until *every one* has
  finished, then take the next batch. Rows that finish early sit idle while the longest request
  runs on (a real static batch even computes them as padding; here they are skipped).
* continuous batching (Orca's iteration-level scheduling): between any two decode steps, retire
  the rows that finished and admit waiting requests into the free rows.

`serve` runs either policy on a list of `Request`s with greedy decoding. A request is admitted
when a row is free and the paged cache (`lab.infer.paged`) has blocks for its prompt; admission
runs its prefill (prompt → cache, first new token) alone, then it joins the batched decode steps.
When a decode step needs a new block and none is free, the newest row is preempted: its blocks are
freed and it goes back to the front of the queue with the tokens it has, to be recomputed by a
later prefill (vLLM's recompute preemption). Outputs do not depend on the policy, the batch size
or preemption: each request's tokens equal `lab.infer.generate` run on it alone.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_int, check_tensor
from lab.infer.generate import check_seed
from lab.infer.kv_cache import forward_cached
from lab.infer.paged import BLOCK_SIZE, BlockAllocator, PagedKVCache
from lab.models.gpt import GPT, check_gpt

POLICIES = ("static", "continuous")
DRY_RUN_TOKEN = -1                      # the placeholder `schedule` generates


@dataclass(frozen=True)
class Request:
    """A prompt (T₀,) int64 and the number of tokens to generate for it."""

    id: int
    prompt: torch.Tensor
    max_new_tokens: int

    def __post_init__(self) -> None:
        check_int("id", self.id, minimum=None)
        if not (torch.is_tensor(self.prompt) and self.prompt.dtype == torch.int64 and self.prompt.dim() == 1):
            got = (f"{self.prompt.dtype} of shape {tuple(self.prompt.shape)}" if torch.is_tensor(self.prompt)
                   else type(self.prompt).__name__)
            raise TypeError(f"request {self.id}: prompt must be a 1-D int64 tensor of token ids, got {got}")
        if not len(self.prompt):
            raise ValueError(f"request {self.id}: prompt is empty; give at least one token")
        check_int("max_new_tokens", self.max_new_tokens)


@dataclass
class _Row:
    request: Request
    tokens: list[int]                   # prompt + generated so far

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - len(self.request.prompt)

    @property
    def done(self) -> bool:
        return self.n_generated >= self.request.max_new_tokens


@dataclass
class ServeResult:
    outputs: dict[int, torch.Tensor]    # request id → generated tokens (max_new_tokens,) int64
    decode_steps: int
    active_rows: list[int]              # rows computed in each decode step
    prefill_tokens: int                 # tokens run through prefills, recomputations included
    preemptions: int
    seconds: float
    max_batch: int
    policy: str
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


def _check_policy(max_batch: int, policy: str) -> None:
    check_choice("policy", policy, POLICIES)
    check_int("max_batch", max_batch)


def _check_requests(config, requests: Sequence[Request], capacity: int) -> None:
    if isinstance(requests, str) or not isinstance(requests, Sequence):      # a generator would be used up here
        raise TypeError(f"requests must be a list of lab.infer.scheduler.Request objects, got "
                        f"{type(requests).__name__}")
    for r in requests:
        if not isinstance(r, Request):
            raise TypeError(f"requests must hold lab.infer.scheduler.Request objects, got {type(r).__name__}")
    if len(ids := [r.id for r in requests]) != len(set(ids)):
        raise ValueError(f"requests must have unique ids, got {sorted({i for i in ids if ids.count(i) > 1})} twice")
    V = config.vocab_size
    for r in requests:
        n = len(r.prompt) + r.max_new_tokens
        if r.prompt.min() < 0 or r.prompt.max() >= V:
            raise ValueError(f"request {r.id}: prompt token ids must lie in [0, vocab_size={V}), got values in "
                             f"[{r.prompt.min()}, {r.prompt.max()}]")
        if n > min(config.context_length, capacity):
            raise ValueError(f"request {r.id}: prompt + max_new_tokens = {n} tokens exceeds the context "
                             f"({config.context_length}) or the cache ({capacity} slots)")


@dataclass
class _Queues:
    """What `serve` tracks between steps: the paged cache (None in a dry run: `schedule`, which has no model
    and only the block allocator) and the requests in each state."""

    model: GPT | None
    cache: PagedKVCache | None
    allocator: BlockAllocator
    waiting: deque[_Row]
    running: list[_Row] = field(default_factory=list)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    active_rows: list[int] = field(default_factory=list)
    prefill_tokens: int = 0
    preemptions: int = 0
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        self.device = (torch.device("cpu") if self.model is None     # read once, not at every step
                       else next(self.model.parameters()).device)


def _greedy(logits: torch.Tensor) -> list[int]:
    return logits.argmax(-1).tolist()


def _retire(q: _Queues) -> None:
    """Finished rows leave the batch: their tokens become outputs and their blocks are freed."""
    for row in [row for row in q.running if row.done]:
        q.outputs[row.request.id] = torch.tensor(row.tokens[len(row.request.prompt):])
        q.allocator.release(row.request.id)
        q.running.remove(row)


def _admit(q: _Queues, max_batch: int) -> int:
    """Waiting requests join while a row and blocks for their tokens are free; each runs its prefill
    alone (prompt → cache, first new token). Returns the tokens generated."""
    alloc, admitted = q.allocator, 0
    while q.waiting and len(q.running) < max_batch and alloc.can_allocate(len(q.waiting[0].tokens)):
        row = q.waiting.popleft()
        n = len(row.tokens)
        alloc.allocate(row.request.id, n)
        if q.cache is None:                 # dry run: a placeholder token; the schedule depends on lengths only
            row.tokens.append(DRY_RUN_TOKEN)
        else:
            positions = torch.arange(n, device=q.device)[None]
            ids = torch.tensor([row.tokens], device=q.device)
            logits = forward_cached(q.model, ids, positions, q.cache.attention([row.request.id], positions))
            row.tokens += _greedy(logits[:, -1])
        q.prefill_tokens += n
        q.running.append(row)
        admitted += 1
    return admitted


def _make_room(q: _Queues, active: list[_Row]) -> list[_Row]:
    """Preempt the newest active rows until every remaining one has room for its next token."""
    alloc = q.allocator
    while sum(alloc.needs_block(row.request.id) for row in active) > len(alloc.free):
        victim = active.pop()
        q.running.remove(victim)
        alloc.release(victim.request.id)
        q.waiting.appendleft(victim)
        q.preemptions += 1
    return active


def _decode_step(q: _Queues, active: list[_Row]) -> None:
    """One batched decode step: each active row's newest token in, its next token out."""
    for row in active:
        q.allocator.append(row.request.id)
    q.active_rows.append(len(active))
    if q.cache is None:                     # dry run
        for row in active:
            row.tokens.append(DRY_RUN_TOKEN)
        return
    ids = torch.tensor([[row.tokens[-1]] for row in active], device=q.device)
    positions = torch.tensor([[len(row.tokens) - 1] for row in active], device=q.device)
    logits = forward_cached(q.model, ids, positions, q.cache.attention([row.request.id for row in active], positions))
    for row, token in zip(active, _greedy(logits[:, -1])):
        row.tokens.append(token)


@torch.no_grad()
def serve(model: GPT, requests: Sequence[Request], max_batch: int, policy: str = "continuous",
          num_blocks: int | None = None, block_size: int = BLOCK_SIZE, progress: bool = False) -> ServeResult:
    """Greedy outputs of every request, served with ``policy`` ∈ {"static", "continuous"}.

    ``num_blocks`` defaults to enough blocks for ``max_batch`` full-context sequences. Each step:
    retire finished rows (continuous: at once; static: when the whole batch is done), admit waiting
    requests (continuous: into any free row; static: once the batch has drained), make room in the
    cache (preempting the newest rows), and run one batched decode step.
    """
    check_gpt("model", model)
    _check_policy(max_batch, policy)
    check_choice("progress", progress, (True, False))
    check_int("block_size", block_size)
    if num_blocks is None:
        num_blocks = max_batch * -(-model.config.context_length // block_size)
    cache = PagedKVCache(model, num_blocks, block_size)          # checks num_blocks and block_size
    _check_requests(model.config, requests, num_blocks * block_size)
    q = _Queues(model, cache, cache.allocator, deque(_Row(r, r.prompt.tolist()) for r in requests))
    return _run(q, requests, max_batch, policy, progress)


def schedule(requests: Sequence[Request], max_batch: int, policy: str = "continuous", context_length: int = 256,
             num_blocks: int | None = None, block_size: int = BLOCK_SIZE) -> ServeResult:
    """`serve`'s schedule without a model (a dry run): the same admissions, retirements, preemptions and
    decode steps, which depend on the requests' lengths only, never on the tokens (greedy decoding, no
    end-of-sequence token). ``decode_steps``, ``active_rows``, ``utilization``, ``prefill_tokens`` and
    ``preemptions`` equal those of `serve` with the same arguments on a model of this ``context_length``;
    ``outputs`` hold ``DRY_RUN_TOKEN`` placeholders and ``seconds`` the time of the bookkeeping alone."""
    _check_policy(max_batch, policy)
    check_int("block_size", block_size)
    check_int("context_length", context_length)
    if num_blocks is None:
        num_blocks = max_batch * -(-context_length // block_size)
    allocator = BlockAllocator(num_blocks, block_size)              # checks num_blocks
    _check_requests(_Dims(context_length), requests, num_blocks * block_size)
    q = _Queues(None, None, allocator, deque(_Row(r, r.prompt.tolist()) for r in requests))
    return _run(q, requests, max_batch, policy, False)


@dataclass(frozen=True)
class _Dims:
    """What `_check_requests` reads of a model's configuration, for a dry run (any vocabulary)."""

    context_length: int
    vocab_size: float = float("inf")


def _run(q: _Queues, requests: Sequence[Request], max_batch: int, policy: str, progress: bool) -> ServeResult:
    """`serve`'s loop over the queues ``q`` (with a cache: real decode steps; without: `schedule`'s dry run)."""
    bar = tqdm(total=sum(r.max_new_tokens for r in requests), desc=f"serve ({policy}, batch {max_batch})",
               disable=not progress)
    start = time.perf_counter()
    while q.waiting or q.running:
        if policy == "continuous" or all(row.done for row in q.running):
            _retire(q)
        if policy == "continuous" or not q.running:
            bar.update(_admit(q, max_batch))
        active = [row for row in q.running if not row.done]
        if not active and q.waiting and not q.running:
            raise RuntimeError(f"request {q.waiting[0].request.id} does not fit in the cache")
        active = _make_room(q, active)
        if active:                  # static batching: finished rows hold the blocks until the batch drains
            _decode_step(q, active)
            bar.update(len(active))
    bar.close()
    return ServeResult(q.outputs, len(q.active_rows), q.active_rows, q.prefill_tokens, q.preemptions,
                       time.perf_counter() - start, max_batch, policy)


def synthetic_trace(tokens: torch.Tensor, n_requests: int, prompt_lengths: tuple[int, int],
                    output_lengths: tuple[int, int], seed: int = 0) -> list[Request]:
    """``n_requests`` requests whose prompts are windows of real text ``tokens`` (1-D int64), with prompt
    and output lengths drawn uniformly from the inclusive ranges (a mixed-length offline workload)."""
    check_tensor("tokens", tokens, 1, (torch.int64,))
    check_int("n_requests", n_requests, minimum=0)
    for name, pair in (("prompt_lengths", prompt_lengths), ("output_lengths", output_lengths)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name} must be a pair (lo, hi) of ints, got {pair!r:.80}")
        for end, value in zip(("lo", "hi"), pair):
            check_int(f"{name} {end}", value)
    check_seed(seed)
    (p_lo, p_hi), (o_lo, o_hi) = prompt_lengths, output_lengths
    if not (1 <= p_lo <= p_hi and 1 <= o_lo <= o_hi) or p_hi >= len(tokens):
        raise ValueError(f"need 1 <= lo <= hi for both ranges and prompts shorter than the text, got "
                         f"prompt_lengths={prompt_lengths}, output_lengths={output_lengths}, {len(tokens)} tokens")
    gen = torch.Generator().manual_seed(seed)
    requests = []
    for i in range(n_requests):
        T = int(torch.randint(p_lo, p_hi + 1, (1,), generator=gen))
        n = int(torch.randint(o_lo, o_hi + 1, (1,), generator=gen))
        start = int(torch.randint(0, len(tokens) - T, (1,), generator=gen))
        requests.append(Request(i, tokens[start:start + T].clone(), n))
    return requests
