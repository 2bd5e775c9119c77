"""Serving many requests: static vs continuous batching over one paged KV cache, with chunked prefill and
prefix caching, on a clock that sees each request's arrival, first token and last token.

A decode step costs about the same whether it carries 1 row or 32 as long as it is memory bound
(the weights are read once per step either way), so a server batches requests. The question is
when a request may join a batch:

* static batching: take up to ``max_batch`` waiting requests, run them until *every one* has
  finished, then take the next batch. Rows that finish early sit idle while the longest request
  runs on (a real static batch even computes them as padding; here they are skipped).
* continuous batching (Orca's iteration-level scheduling): between any two decode steps, retire
  the rows that finished and admit waiting requests into the free rows.

`serve` runs either policy on a list of `Request`s with greedy decoding. A request is admitted
when it has arrived, a row is free and the paged cache (`lab.infer.paged`) has blocks for its prompt.
Without chunking, admission runs its prefill (prompt → cache, first new token) alone, then it joins
the batched decode steps in the same step: a step's decode rows wait for every prefill of that step.
With ``chunk_size`` = C (Sarathi-Serve, Agrawal et al. 2024; continuous batching only), a step carries
every decode row (1 token each) and then prefill chunks of at most C tokens, of the requests being
prefilled and then of newly admitted ones, while the step's tokens stay within ``token_budget``
(default ``max_batch`` + C); a request's first token comes with its last chunk. A long prompt then
delays the decode rows by one chunk per step, not by its whole prefill. The PyTorch path has no
ragged batch, so the decode rows run as one forward call and each chunk as its own; a step's calls
are timed together, as one step.

With ``prefix_cache=True`` the cache's allocator is a `lab.infer.prefix_cache.PrefixCachingAllocator`:
an admitted request reuses the cached blocks of its longest cached run of full prompt blocks, and
only the rest of its prompt is run through prefill, at its own positions, attending to the cached
keys; ``cached_prefix_tokens`` counts the prompt tokens not run, at every admission.

When a decode step needs a new block and none is free, the newest unfinished row is preempted: its
blocks are freed and it goes back to the front of the queue with the tokens it has, to be recomputed
by a later prefill (vLLM's recompute preemption). Outputs do not depend on the policy, the batch
size, chunking, prefix caching or preemption: each request's tokens equal `lab.infer.generate` run
on it alone (in exact arithmetic; the tests check it token for token in fp32).

The clock: each step advances it by ``step_time(spans)`` seconds when that cost model is given, else by
the step's measured wall time; when nothing can run, it jumps to the next arrival. ``spans`` lists what the
step runs, one (c, n) per forward row: n new tokens at positions c … c + n − 1, attending to the c + n keys
cached up to them (a decode row: (its position, 1); a prefill or a chunk: (its tokens already cached, its
length)), so a cost model sees the tokens, Σ n, and the cached keys read, Σ (c + n); `ServeResult.steps`
keeps the step's (decode rows, prefill tokens). A token is stamped with the clock at the end of its step
(`ServeResult.ttft`, ``tpot``).
`schedule` is the same loop without a model (a dry run); with a ``step_time`` or with every arrival
at 0 its steps equal `serve`'s.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_int
from lab.infer.kv_cache import forward_cached
from lab.infer.load import synthetic_trace
from lab.infer.paged import BLOCK_SIZE, BlockAllocator, PagedKVCache
from lab.infer.prefix_cache import PrefixCachingAllocator
from lab.infer.requests import Request, ServeResult
from lab.models.gpt import GPT, check_gpt

__all__ = ["Request", "ServeResult", "serve", "schedule", "synthetic_trace"]

POLICIES = ("static", "continuous")
DRY_RUN_TOKEN = -1                      # the placeholder `schedule` generates
StepTime = Callable[[list[tuple[int, int]]], float]  # the spans (c, n) of a step → its seconds


@dataclass
class _Row:
    request: Request
    tokens: list[int]                   # prompt + generated so far
    computed: int = 0                   # tokens whose keys and values are in the cache
    prefill_end: int = 0                # len(tokens) at admission: prefill runs tokens computed … prefill_end − 1
    n_prompt: int = field(init=False)   # len(request.prompt), read at every step (a tensor's len is slow)

    def __post_init__(self) -> None:
        self.n_prompt = len(self.request.prompt)

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def done(self) -> bool:
        return self.n_generated >= self.request.max_new_tokens

    @property
    def in_prefill(self) -> bool:
        return self.computed < self.prefill_end


@dataclass(frozen=True)
class _Options:
    max_batch: int
    policy: str
    chunk_size: int | None
    token_budget: int | None
    prefix_cache: bool
    step_time: StepTime | None


def _check_options(max_batch: int, policy: str, chunk_size: int | None, token_budget: int | None,
                   prefix_cache: bool, step_time: StepTime | None) -> _Options:
    """The options of `serve` and `schedule`, checked; ``token_budget`` defaults to ``max_batch`` + C."""
    check_choice("policy", policy, POLICIES)
    check_int("max_batch", max_batch)
    check_choice("prefix_cache", prefix_cache, (True, False))
    if step_time is not None and not callable(step_time):
        raise TypeError(f"step_time must be None or a callable spans -> seconds (spans: the step's (c, n) pairs), "
                        f"got {step_time!r:.80}")
    if chunk_size is None:
        if token_budget is not None:
            raise ValueError(f"token_budget={token_budget!r} needs chunk_size (chunked prefill); give both")
        return _Options(max_batch, policy, None, None, prefix_cache, step_time)
    check_int("chunk_size", chunk_size)
    if policy != "continuous":
        raise ValueError(f"chunk_size={chunk_size} needs policy='continuous' (chunks join running batches), "
                         f"got policy={policy!r}")
    budget = max_batch + chunk_size if token_budget is None else token_budget
    check_int("token_budget", budget, max_batch + 1)       # every step leaves room for a chunk
    return _Options(max_batch, policy, chunk_size, budget, prefix_cache, step_time)


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
    and only the block allocator), the requests in each state, the counts and the clock."""

    model: GPT | None
    cache: PagedKVCache | None
    allocator: BlockAllocator
    waiting: deque[_Row]
    running: list[_Row] = field(default_factory=list)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    active_rows: list[int] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)     # (c, n) of each forward row of this step
    prefill_tokens: int = 0
    preemptions: int = 0
    cached_prefix_tokens: int = 0
    clock: float = 0.0
    first_token: dict[int, float] = field(default_factory=dict)
    first_tokens: dict[int, int] = field(default_factory=dict)
    finish: dict[int, float] = field(default_factory=dict)
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        self.device = (torch.device("cpu") if self.model is None     # read once, not at every step
                       else next(self.model.parameters()).device)


def _next_tokens(q: _Queues, rows: list[_Row], ids: list[list[int]], start: list[int]) -> list[int]:
    """Greedy next token of each row after its new tokens ``ids`` (equal lengths) at positions start …;
    the placeholder in a dry run. Each row's span (start, new tokens) joins the step's ``spans``."""
    q.spans += [(s, len(ids[0])) for s in start]
    if q.cache is None:
        return [DRY_RUN_TOKEN] * len(rows)
    positions = torch.tensor([[s + i for i in range(len(ids[0]))] for s in start], device=q.device)
    attend = q.cache.attention([row.request.id for row in rows], positions)
    logits = forward_cached(q.model, torch.tensor(ids, device=q.device), positions, attend)
    return logits[:, -1].argmax(-1).tolist()


def _retire(q: _Queues) -> int:
    """Finished rows leave the batch: their tokens become outputs and their blocks are freed. Returns how many."""
    finished = [row for row in q.running if row.done]
    for row in finished:
        q.outputs[row.request.id] = torch.tensor(row.tokens[row.n_prompt:])
        q.allocator.release(row.request.id)
        q.running.remove(row)
    return len(finished)


def _admissible(q: _Queues, o: _Options) -> bool:
    """Whether the head of the queue has arrived and a row and blocks for its tokens are free."""
    if not q.waiting or len(q.running) >= o.max_batch or q.waiting[0].request.arrival > q.clock:
        return False
    tokens = q.waiting[0].tokens
    return q.allocator.can_allocate_prompt(tokens) if o.prefix_cache else q.allocator.can_allocate(len(tokens))


def _admit(q: _Queues, o: _Options) -> _Row:
    """The head of the queue joins the running rows with blocks for its tokens (cached ones shared)."""
    row = q.waiting.popleft()
    row.prefill_end, row.computed = len(row.tokens), 0
    if o.prefix_cache:
        row.computed, copies = q.allocator.allocate_prompt(row.request.id, row.tokens)
        q.cached_prefix_tokens += row.computed
        for src, dst in copies if q.cache is not None else ():
            q.cache.copy_block(src, dst)
    else:
        q.allocator.allocate(row.request.id, row.prefill_end)
    q.running.append(row)
    return row


def _prefill(q: _Queues, row: _Row, n: int, o: _Options) -> None:
    """Run the row's next ``n`` prompt tokens; after the last one, its first new token."""
    c = row.computed
    token = _next_tokens(q, [row], [row.tokens[c:c + n]], [c])[0]
    row.computed = c + n
    q.prefill_tokens += n
    if o.prefix_cache:
        q.allocator.register(row.request.id, row.tokens, min(row.computed, row.n_prompt))
    if not row.in_prefill:
        row.tokens.append(token)


def _make_room(q: _Queues, decoding: list[_Row]) -> list[_Row]:
    """Preempt the newest unfinished rows until every remaining decode row has room for its next token."""
    alloc = q.allocator
    while sum(alloc.needs_block(row.request.id) for row in decoding) > alloc.n_free:
        victim = [row for row in q.running if not row.done][-1]
        q.running.remove(victim)
        if victim in decoding:
            decoding.remove(victim)
        alloc.release(victim.request.id)
        q.waiting.appendleft(victim)
        q.preemptions += 1
    for row in decoding:
        alloc.append(row.request.id)
    return decoding


def _decode(q: _Queues, decoding: list[_Row]) -> None:
    """One batched decode step: each row's newest token in (its slot allocated), its next token out."""
    q.active_rows.append(len(decoding))
    last = [len(row.tokens) - 1 for row in decoding]
    tokens = _next_tokens(q, decoding, [[row.tokens[i]] for row, i in zip(decoding, last)], last)
    for row, token in zip(decoding, tokens):
        row.computed += 1
        row.tokens.append(token)


def _step_whole(q: _Queues, o: _Options) -> int:
    """A step without chunking: retire, admit (each admitted prompt prefilled alone), make room, decode every
    unfinished row. Static batching retires and admits only once the whole batch is done. Returns the decode rows."""
    if o.policy == "continuous" or all(row.done for row in q.running):
        _retire(q)
    if o.policy == "continuous" or not q.running:
        while _admissible(q, o):
            row = _admit(q, o)
            _prefill(q, row, row.prefill_end - row.computed, o)
    decoding = _make_room(q, [row for row in q.running if not row.done])
    if decoding:                # static batching: finished rows hold the blocks until the batch drains
        _decode(q, decoding)
    return len(decoding)


def _step_chunked(q: _Queues, o: _Options) -> int:
    """A Sarathi-Serve step: every decode row, then chunks of ≤ C prompt tokens (rows being prefilled first, then
    new admissions) within the token budget. Returns the decode rows."""
    _retire(q)
    decoding = _make_room(q, [row for row in q.running if not (row.in_prefill or row.done)])
    budget, chunks = o.token_budget - len(decoding), []
    for row in [row for row in q.running if row.in_prefill]:
        chunks.append((row, min(o.chunk_size, row.prefill_end - row.computed, budget)))
        budget -= chunks[-1][1]
    while budget > 0 and _admissible(q, o):
        row = _admit(q, o)
        chunks.append((row, min(o.chunk_size, row.prefill_end - row.computed, budget)))
        budget -= chunks[-1][1]
    if decoding:
        _decode(q, decoding)
    for row, n in chunks:
        if n:
            _prefill(q, row, n, o)
    return len(decoding)


def _stamp(q: _Queues) -> None:
    """Times of first tokens and of last tokens produced in the step that just ended."""
    for row in q.running:
        if row.n_generated and row.request.id not in q.first_token:
            q.first_token[row.request.id], q.first_tokens[row.request.id] = q.clock, row.n_generated
        if row.done:
            q.finish.setdefault(row.request.id, q.clock)


def _run(q: _Queues, requests: Sequence[Request], o: _Options, progress: bool) -> ServeResult:
    """`serve`'s loop over the queues ``q`` (with a cache: real forward calls; without: `schedule`'s dry run)."""
    bar = tqdm(total=len(requests), desc=f"serve ({o.policy}, batch {o.max_batch})", disable=not progress)
    step = _step_whole if o.chunk_size is None else _step_chunked
    start = time.perf_counter()
    while q.waiting or q.running:
        if not any(not row.done for row in q.running) and q.waiting:
            if q.waiting[0].request.arrival > q.clock:
                q.clock = q.waiting[0].request.arrival            # idle until the next arrival
        t0, prefilled, q.spans = time.perf_counter(), q.prefill_tokens, []
        decoded = step(q, o)
        work = (decoded, q.prefill_tokens - prefilled)
        if work == (0, 0):
            if q.waiting and not q.running:
                raise RuntimeError(f"request {q.waiting[0].request.id} does not fit in the cache")
            continue
        q.steps.append(work)
        q.clock += o.step_time(q.spans) if o.step_time else time.perf_counter() - t0
        _stamp(q)
        bar.update(sum(row.done for row in q.running) + len(q.outputs) - bar.n)
    bar.close()
    return ServeResult(q.outputs, len(q.active_rows), q.active_rows, q.prefill_tokens, q.preemptions,
                       time.perf_counter() - start, o.max_batch, o.policy, q.cached_prefix_tokens, q.steps,
                       {r.id: r.arrival for r in requests}, q.first_token, q.first_tokens, q.finish)


def _queues(model: GPT | None, cache: PagedKVCache | None, allocator: BlockAllocator,
            requests: Sequence[Request]) -> _Queues:
    """Every request waiting, in order of arrival (ties in the given order)."""
    ordered = sorted(requests, key=lambda r: r.arrival)
    return _Queues(model, cache, allocator, deque(_Row(r, r.prompt.tolist()) for r in ordered))


@torch.no_grad()
def serve(model: GPT, requests: Sequence[Request], max_batch: int, policy: str = "continuous",
          num_blocks: int | None = None, block_size: int = BLOCK_SIZE, progress: bool = False, *,
          chunk_size: int | None = None, token_budget: int | None = None, prefix_cache: bool = False,
          step_time: StepTime | None = None) -> ServeResult:
    """Greedy outputs of every request, served with ``policy`` ∈ {"static", "continuous"}, and their latencies.

    ``num_blocks`` defaults to enough blocks for ``max_batch`` full-context sequences. Without ``chunk_size``
    each step retires finished rows (continuous: at once; static: when the whole batch is done), admits
    arrived requests (continuous: into any free row; static: once the batch has drained) and prefills each
    alone, makes room in the cache (preempting the newest rows) and runs one batched decode step. With
    ``chunk_size`` = C (continuous only), a step is the decode rows plus prefill chunks of ≤ C tokens within
    ``token_budget`` tokens (default ``max_batch`` + C). ``prefix_cache`` shares cached prompt blocks.
    ``step_time(spans)``, if given, is each step's cost in seconds on the clock that stamps the tokens, in place
    of its measured wall time (spans: the step's (c, n) rows, see the module docstring).
    """
    check_gpt("model", model)
    o = _check_options(max_batch, policy, chunk_size, token_budget, prefix_cache, step_time)
    check_choice("progress", progress, (True, False))
    check_int("block_size", block_size)
    if num_blocks is None:
        num_blocks = max_batch * -(-model.config.context_length // block_size)
    allocator = PrefixCachingAllocator if prefix_cache else BlockAllocator
    cache = PagedKVCache(model, num_blocks, block_size, allocator=allocator)   # checks num_blocks and block_size
    _check_requests(model.config, requests, num_blocks * block_size)
    return _run(_queues(model, cache, cache.allocator, requests), requests, o, progress)


def schedule(requests: Sequence[Request], max_batch: int, policy: str = "continuous", context_length: int = 256,
             num_blocks: int | None = None, block_size: int = BLOCK_SIZE, *, chunk_size: int | None = None,
             token_budget: int | None = None, prefix_cache: bool = False,
             step_time: StepTime | None = None) -> ServeResult:
    """`serve`'s schedule without a model (a dry run): the same admissions, retirements, preemptions, prefix
    hits, chunks and decode steps, which depend on the requests' prompts and lengths only, never on the
    generated tokens (greedy decoding, no end-of-sequence token; only prompt blocks are cached). ``steps``,
    ``decode_steps``, ``active_rows``, ``utilization``, ``prefill_tokens``, ``cached_prefix_tokens`` and
    ``preemptions`` equal those of `serve` with the same arguments on a model of this ``context_length``
    when the clock cannot change an admission (every arrival at 0, or the same ``step_time``); ``outputs``
    hold ``DRY_RUN_TOKEN`` placeholders and ``seconds`` the time of the bookkeeping alone."""
    o = _check_options(max_batch, policy, chunk_size, token_budget, prefix_cache, step_time)
    check_int("block_size", block_size)
    check_int("context_length", context_length)
    if num_blocks is None:
        num_blocks = max_batch * -(-context_length // block_size)
    allocator = (PrefixCachingAllocator if prefix_cache else BlockAllocator)(num_blocks, block_size)
    _check_requests(_Dims(context_length), requests, num_blocks * block_size)
    return _run(_queues(None, None, allocator, requests), requests, o, False)


@dataclass(frozen=True)
class _Dims:
    """What `_check_requests` reads of a model's configuration, for a dry run (any vocabulary)."""

    context_length: int
    vocab_size: float = float("inf")

