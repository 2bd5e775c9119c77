"""Offloaded inference: decoder layers live in host memory and stream to the compute device.

A lab `GPT` keeps its embedding, final norm and head on the device; the weights of its L
decoder layers stay on the host (pinned, page-locked memory when the device is CUDA) and are
copied in layer by layer. Three modes of one forward pass:

* ``resident``: every layer's weights were copied to the device once; no traffic per forward.
* ``naive``: copy layer i (blocking), compute layer i, reuse the one device buffer for i+1.
* ``prefetch``: double buffering. A side CUDA stream copies layer i+1 into the other buffer
  (``non_blocking`` from pinned memory) while layer i computes on the default stream. Events
  order the two streams: compute i waits for "copy i done"; the copy into a buffer waits for
  "compute that last read this buffer done". At most 2 layers are resident at any time.

The two device buffers are allocated once and overwritten in place, so no tensor is freed while
a kernel may still read it and ``record_stream`` is not needed (it is needed when a tensor
allocated on one stream is freed while another stream still uses it).

Costs, with S_i = bytes of layer i, S = Σ_i S_i = bytes moved per forward (`offload_nbytes`),
B = host→device bandwidth (PCIe 5.0 x16 ≈ 64 GB/s peak, ~50 GB/s from pinned memory; roughly
half from pageable memory), t_i = compute time of layer i:

    t_resident ≈ Σ_i t_i
    t_naive    ≈ Σ_i (S_i / B + t_i) = S / B + t_resident     (speed of light of naive offload)
    t_prefetch ≈ S_0 / B + Σ_i max(S_{i+1} / B, t_i) ≥ max(S / B, t_resident)

so prefetching can at best halve the naive time, when per-layer copy and compute take equally
long (S_i / B = t_i); a tiny model (t_i ≪ S_i / B) stays copy-bound whatever the schedule.

On the CPU the same code runs with copies into host buffers and no streams, which is enough to
test that every mode reproduces the plain model's logits exactly and to record the issue order
of copies and computes (`OffloadedGPT.trace`).
"""

from __future__ import annotations

import contextlib
import time
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from lab.core.checks import check_choice, check_device, check_tensor
from lab.models.gpt import GPT, check_gpt, rope_cos_sin

MODES = ("resident", "naive", "prefetch")


class TraceEvent(NamedTuple):
    """One copy or compute of one layer; start/end in seconds since the forward began."""

    kind: str      # "copy" or "compute"
    layer: int
    start: float
    end: float
    slot: int      # device buffer used (-1 in resident mode)


def layer_nbytes(block: nn.Module) -> int:
    """Bytes of one decoder layer's weights: Σ numel · element_size over its parameters."""
    return sum(p.numel() * p.element_size() for p in block.parameters())


def offload_nbytes(model: GPT) -> int:
    """Bytes copied host→device by one offloaded forward: S = Σ_i layer_nbytes(layer i) (``model``: a lab GPT,
    or the `OffloadedGPT` running it)."""
    if not isinstance(model, (GPT, OffloadedGPT)):
        raise TypeError(f"model must be a lab GPT (or an OffloadedGPT), got {type(model).__name__}")
    return sum(layer_nbytes(block) for block in model.layers)


class _Clock:
    """Timestamps: CUDA events recorded on a stream, or `time.perf_counter` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.origin = self.mark()

    def mark(self, stream: torch.cuda.Stream | None = None):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def seconds(self, mark) -> float:
        if not self.cuda:
            return mark - self.origin
        return self.origin.elapsed_time(mark) / 1e3  # needs both events completed


class OffloadedGPT:
    """Run a lab `GPT` with its decoder layers' weights held on the host.

    Takes ownership of ``model``: embedding, final norm and head move to ``device``; every
    layer's parameters stay on the CPU, pinned when ``device`` is CUDA. ``forward(idx, mode)``
    maps ids (B, T) int64 → logits (B, T, V) in the model's dtype, the same numbers as
    ``model(idx)`` with all weights on ``device``.
    """

    def __init__(self, model: GPT, device: str | torch.device = "cpu") -> None:
        check_gpt("model", model)
        self.device = check_device("device", device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device={str(device)!r} is not allowed; use 'cpu' or 'cuda'")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")
        self.model = model.eval()
        self.layers = list(model.layers)
        pin = self.device.type == "cuda"
        with torch.no_grad():
            for block in self.layers:
                block.to("cpu")
                if pin:
                    for p in block.parameters():
                        p.data = p.data.pin_memory()
            for module in (model.embed_tokens, model.norm, model.lm_head):
                module.to(self.device)
        self.host = [dict(block.named_parameters()) for block in self.layers]
        shapes = [{k: (t.shape, t.dtype) for k, t in h.items()} for h in self.host]
        self._uniform = all(s == shapes[0] for s in shapes)
        self._slots: list[dict[str, torch.Tensor]] = []
        self._resident: list[dict[str, torch.Tensor]] | None = None
        self._side_stream = torch.cuda.Stream(self.device) if pin else None
        self.trace: list[TraceEvent] = []

    def _empty_like_layer(self) -> dict[str, torch.Tensor]:
        return {name: torch.empty_like(t, device=self.device) for name, t in self.host[0].items()}

    def slots(self, n: int) -> list[dict[str, torch.Tensor]]:
        """The first ``n`` device buffers, each holding one layer's weights (allocated once)."""
        if not self._uniform:
            raise ValueError("streamed modes need every decoder layer to have the same parameter "
                             "shapes and dtypes (one buffer holds any layer); use mode='resident'")
        while len(self._slots) < n:
            self._slots.append(self._empty_like_layer())
        return self._slots[:n]

    def release(self) -> None:
        """Drop the device buffers and resident copies (frees their device memory)."""
        self._slots, self._resident = [], None

    @torch.no_grad()
    def forward(self, idx: torch.Tensor, mode: str = "prefetch", trace: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for ids (B, T); ``trace=True`` fills `self.trace` with `TraceEvent`s."""
        check_choice("mode", mode, MODES)
        check_tensor("idx", idx)
        if idx.dim() != 2 or idx.dtype != torch.int64:
            raise ValueError(f"idx must be (B, T) int64, got shape {tuple(idx.shape)}, {idx.dtype}")
        cfg = self.model.config
        T = idx.shape[1]
        if T > cfg.context_length:
            raise ValueError(f"idx has sequence length {T}, which exceeds context_length={cfg.context_length}")
        # ids on the host are range-checked; a device idx is not (reading its min and max would sync every forward)
        if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size):
            raise ValueError(f"idx must hold token ids in [0, vocab_size={cfg.vocab_size}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        idx = idx.to(self.device)
        cos, sin = rope_cos_sin(T, cfg.head_dim, cfg.rope_theta, self.device)
        x = self.model.embed_tokens(idx)
        clock = _Clock(self.device) if trace else None
        marks: list[tuple[str, int, object, object, int]] = []
        if mode == "resident":
            x = self._run_resident(x, cos, sin, clock, marks)
        else:
            x = self._run_streamed(x, cos, sin, mode == "prefetch", clock, marks)
        logits = self.model.lm_head(self.model.norm(x))
        if trace:
            if clock.cuda:
                torch.cuda.synchronize(self.device)
            self.trace = [TraceEvent(k, i, clock.seconds(a), clock.seconds(b), s) for k, i, a, b, s in marks]
        return logits

    __call__ = forward

    def _compute(self, i: int, weights: dict, x, cos, sin, clock, marks, slot: int) -> torch.Tensor:
        start = clock.mark() if clock else None
        x = functional_call(self.layers[i], weights, (x, cos, sin))
        if clock:
            marks.append(("compute", i, start, clock.mark(), slot))
        return x

    def _run_resident(self, x, cos, sin, clock, marks) -> torch.Tensor:
        if self._resident is None:
            self._resident = [{k: t.to(self.device, copy=True) for k, t in h.items()} for h in self.host]
        for i, weights in enumerate(self._resident):
            x = self._compute(i, weights, x, cos, sin, clock, marks, -1)
        return x

    def _run_streamed(self, x, cos, sin, prefetch: bool, clock, marks) -> torch.Tensor:
        """naive: one buffer, copy then compute; prefetch: two buffers, copy i+1 ‖ compute i."""
        n_slots = 2 if prefetch else 1
        slots = self.slots(n_slots)
        side = self._side_stream if prefetch else None
        main = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        slot_free: list[torch.cuda.Event | None] = [None] * n_slots  # compute that last read the slot

        def copy(i: int) -> torch.cuda.Event | None:
            s = i % n_slots
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                if side is not None:
                    if slot_free[s] is not None:
                        side.wait_event(slot_free[s])  # do not overwrite weights still being read
                    else:
                        side.wait_stream(main)  # buffers were allocated / last used on main
                start = clock.mark(side) if clock else None
                for name, dst in slots[s].items():
                    dst.copy_(self.host[i][name], non_blocking=prefetch)
                if clock:
                    marks.append(("copy", i, start, clock.mark(side), s))
                if side is None:
                    return None
                done = torch.cuda.Event()
                done.record(side)
                return done

        ready = copy(0)
        for i in range(len(self.layers)):
            s = i % n_slots
            next_ready = copy(i + 1) if prefetch and i + 1 < len(self.layers) else None
            if ready is not None:
                main.wait_event(ready)
            x = self._compute(i, slots[s], x, cos, sin, clock, marks, s)
            if main is not None:
                slot_free[s] = torch.cuda.Event()
                slot_free[s].record(main)
            if prefetch:
                ready = next_ready
            elif i + 1 < len(self.layers):
                ready = copy(i + 1)
        if side is not None:
            main.wait_stream(side)  # later work on main may reuse the slots
        return x
