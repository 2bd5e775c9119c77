"""Measurements that check the memory model of `lab.params.memory`: one real training step or decode step,
its bytes counted by storage (CPU: the tensors alive, deduplicated by storage; CUDA: the allocator's peak).

`make_optimizer` builds every optimizer the model knows (`OPTIMIZERS`); `storage_bytes` counts tensors
once per storage; `measure_training_memory_cpu` / `_cuda` split one step's bytes into weights, gradients,
optimizer state and activations; `measure_decode_memory_cuda` does the same for weights and KV cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from lab.core.checks import check_choice, check_int
from lab.models.gpt import GPT, check_gpt
from lab.params.adafactor import Adafactor
from lab.params.adam8bit import Adam8bit
from lab.params.counting import unique_parameters
from lab.params.memory import OPTIMIZERS, as_dtype


def make_optimizer(params, optimizer: str = "adamw", lr: float = 1e-3, **kwargs) -> torch.optim.Optimizer:
    """The torch optimizer the memory model's names stand for (sgd-momentum: momentum 0.9)."""
    check_choice("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, **kwargs)
    if optimizer == "adafactor":  # a fixed learning rate, as the others get (no relative step)
        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, **kwargs)
    if optimizer == "adam8bit":
        return Adam8bit(params, lr=lr, **kwargs)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, **kwargs)
    return torch.optim.SGD(params, lr=lr, momentum=0.9 if optimizer == "sgd-momentum" else 0.0, **kwargs)


def optimizer_state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's state tensors (m, v, codes, row/column statistics, …), 0-dim step counters excluded."""
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"opt must be a torch.optim.Optimizer, got {type(opt).__name__}")
    return [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied or viewed tensors count once): an iterable of
    tensors with storage (not on the meta device), or one tensor."""
    if torch.is_tensor(tensors):
        tensors = [tensors]
    elif isinstance(tensors, (str, bytes, dict)) or not isinstance(tensors, Iterable):
        raise TypeError(f"tensors must be an iterable of tensors (a dict: pass its .values()), got {tensors!r:.80}")
    seen = {}
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {t!r:.80} ({type(t).__name__})")
        if t.is_meta:                                          # no storage: every data_ptr is 0
            raise ValueError(f"tensors[{i}] is on the meta device and has no storage to count")
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _batch(model: GPT, batch: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    idx = torch.randint(0, V, (batch, seq_len), generator=gen)
    targets = torch.randint(0, V, (batch, seq_len), generator=gen)
    return idx.to(device), targets.to(device)


def _lm_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())


def measure_training_memory_cpu(model: GPT, batch: int, seq_len: int, optimizer: str = "adamw",
                                precision: str = "fp32") -> dict[str, int]:
    """Measure one real training step on the CPU, by summing tensor storage (bytes, same keys
    as `training_memory`).

    activations: storage of the tensors saved for backward during the forward (captured with
    ``torch.autograd.graph.saved_tensors_hooks``, deduplicated by storage, parameters excluded);
    weights / gradients / optimizer_states: storage of the parameters, their ``.grad`` and the
    optimizer's state tensors after ``optimizer.step()`` (0-dim step counters excluded).
    precision "fp32" or "bf16-mixed" (CPU autocast; weights and grads stay fp32 there).
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    params = _trainable_cpu_params(model, batch, seq_len, precision, "; use measure_training_memory_cuda for a GPU",
                                   "there is no training step to measure")
    opt = make_optimizer(params, optimizer)
    opt.zero_grad(set_to_none=True)
    loss, activations = _saved_forward(model, params, batch, seq_len, precision)
    loss.backward()
    opt.step()
    states = optimizer_state_tensors(opt)
    out = {"weights": storage_bytes(params), "gradients": storage_bytes(p.grad for p in params if p.grad is not None),
           "master_weights": 0, "optimizer_states": storage_bytes(states), "activations": activations}
    out["total"] = sum(out.values())
    return out


def _trainable_cpu_params(model: GPT, batch: int, seq_len: int, precision: str, device_hint: str,
                          no_grad_why: str) -> list[torch.Tensor]:
    """The checks the two CPU measurements share (model, batch, seq_len, precision; every parameter on the CPU,
    one of them trainable); the model's unique parameters."""
    check_gpt("model", model)
    check_int("batch", batch)
    check_int("seq_len", seq_len, 1, model.config.context_length)
    check_choice("precision", precision, ("fp32", "bf16-mixed"))
    params = [p for _, p in unique_parameters(model)[0]]
    devices = sorted({str(p.device) for p in params})
    if devices != ["cpu"]:
        raise ValueError(f"model must be on the CPU, its parameters are on {devices}{device_hint}")
    if not any(p.requires_grad for p in params):
        raise ValueError(f"model has no parameter with requires_grad=True; {no_grad_why}")
    return params


def _saved_forward(model: GPT, params: list[torch.Tensor], batch: int, seq_len: int,
                   precision: str) -> tuple[torch.Tensor, int]:
    """The loss of one training step's forward, and the bytes of the tensors it saved for backward."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    idx, targets = _batch(model, batch, seq_len, "cpu")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = _lm_loss(model, idx, targets)
    return loss, sum(saved.values())


def measure_saved_activations_cpu(model: GPT, batch: int, seq_len: int, precision: str = "fp32") -> int:
    """The "activations" of `measure_training_memory_cpu` (the same batch, the same count), bytes: that count
    is of the tensors the step's forward saves for backward, so only the forward runs here (no backward,
    no optimizer step; on a CPU without native bf16 the backward is most of a bf16-mixed step's time)."""
    params = _trainable_cpu_params(model, batch, seq_len, precision, "",
                                   "a forward would save nothing for backward")
    with torch.enable_grad():
        return _saved_forward(model, params, batch, seq_len, precision)[1]


def measure_training_memory_cuda(model: GPT, batch: int, seq_len: int, optimizer: str = "adamw",
                                 precision: str = "bf16-mixed") -> dict[str, int]:
    """Peak CUDA memory of one real training step (bf16 autocast or fp32) of a lab GPT on the GPU.

    A first step allocates the optimizer states; then ``torch.cuda.reset_peak_memory_stats`` and a
    second full step (zero_grad(set_to_none), forward, backward, step) is measured.
    Returns {"peak": max_memory_allocated less the cuBLAS workspaces (`cublas_workspace_bytes`),
    "peak_allocated": max_memory_allocated as it is, "cublas_workspace", "before": allocated before
    the step (weights + states)}.
    Adam/AdamW use ``fused=True`` so the step allocates no temporaries.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("measure_training_memory_cuda needs a CUDA GPU; torch.cuda.is_available() is False")
    check_int("batch", batch)
    check_int("seq_len", seq_len)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("precision", precision, ("fp32", "bf16-mixed"))
    model = model.to("cuda").float().train()
    kwargs = {"fused": True} if optimizer in ("adam", "adamw") else {}
    opt = make_optimizer([p for _, p in unique_parameters(model)[0]], optimizer, **kwargs)
    idx, targets = _batch(model, batch, seq_len, "cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = _lm_loss(model, idx, targets)
        loss.backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)

    def warm_up() -> None:
        step()
        opt.zero_grad(set_to_none=True)

    workspace = cublas_workspace_bytes(warm_up)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak": peak - workspace, "peak_allocated": peak, "cublas_workspace": workspace,
            "before": before - workspace}


@torch.no_grad()
def measure_decode_memory_cuda(hf_model, batch: int, seq_len: int, dtype=torch.bfloat16) -> dict[str, int]:
    """Peak CUDA memory of one decode step of a `transformers` causal LM with a KV cache of seq_len.

    Prefills seq_len - 1 random tokens with use_cache=True, frees everything but the cache,
    then measures one single-token step. Returns {"peak" (less the cuBLAS workspaces),
    "peak_allocated", "cublas_workspace", "weights", "kv_cache"} (bytes; kv_cache = sum of the
    cache's key/value nbytes after the step).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("measure_decode_memory_cuda needs a CUDA GPU; torch.cuda.is_available() is False")
    check_int("batch", batch)
    check_int("seq_len", seq_len, 2)
    model = hf_model.to(device="cuda", dtype=as_dtype(dtype)).eval()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=gen).cuda()
    cache = model(prompt[:, :-1], use_cache=True).past_key_values
    workspace = cublas_workspace_bytes(lambda: model(prompt[:, -1:], past_key_values=copy.deepcopy(cache),
                                                     use_cache=True))
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = model(prompt[:, -1:], past_key_values=cache, use_cache=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak": peak - workspace, "peak_allocated": peak, "cublas_workspace": workspace,
            "weights": storage_bytes(model.parameters()), "kv_cache": cache_nbytes(out.past_key_values)}


def cublas_workspace_bytes(warm_up: Callable[[], object]) -> int:
    """Bytes of cuBLAS workspace that ``warm_up()`` allocates and leaves held (0 without CUDA).

    PyTorch gives every (cuBLAS handle, stream) pair its own workspace (32 MiB on sm_90; one handle
    per thread, so autograd's backward thread has its own) and allocates it through the caching
    allocator the first time a matmul runs there, so it shows up in ``torch.cuda.memory_allocated``
    although no model tensor owns it. Measured by freeing every workspace, running ``warm_up`` (a
    step that must leave nothing else allocated, e.g. gradients set to None) and reading how much
    more is allocated afterwards: exactly the workspaces that step uses, held again for the step
    measured next. The measurements above subtract it from their peaks (the memory model has no
    term for it) and report it on its own line.
    """
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    before = torch.cuda.memory_allocated()
    warm_up()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() - before


def cache_nbytes(cache) -> int:
    """Bytes of the key and value tensors in a `transformers` cache (DynamicCache or legacy tuples: one
    (key, value) pair of tensors per layer)."""
    if hasattr(cache, "layers"):
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    elif isinstance(cache, (str, bytes)) or not isinstance(cache, Iterable):
        raise TypeError(f"cache must be a transformers cache (DynamicCache) or (key, value) pairs per layer, "
                        f"got {type(cache).__name__}")
    else:
        pairs = list(cache)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(torch.is_tensor(t) for t in pair)):
            raise TypeError(f"cache layer {i} must be a (key, value) pair of tensors, got {pair!r:.80}")
    return sum(k.nbytes + v.nbytes for k, v in pairs)
