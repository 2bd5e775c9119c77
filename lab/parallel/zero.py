"""ZeRO (Rajbhandari et al. 2020): shard the training state over the N data-parallel ranks.

Parameters are grouped into *units* (by default each transformer block ``module.layers[i]``,
plus one root unit holding every other parameter: embedding, final norm, LM head). A unit's
Ψ_u parameters live in one flat buffer of their dtype padded to Ψ̄_u = ⌈Ψ_u/N⌉·N elements;
rank r owns the shard [r·Ψ̄_u/N, (r+1)·Ψ̄_u/N) and runs ``optimizer_cls`` on its shards only.
The shard the optimizer updates is fp32: a view of the flat buffer for fp32 parameters, an fp32
master copy of the slice for bf16/fp16 ones (cast back when the parameters are gathered), and
gradients are reduced in fp32.

* stage 1: optimizer state sharded. Backward leaves full gradients; ``step()`` reduce-scatters
  them (each rank receives the sum of its shard), updates its shard, all-gathers the
  parameters; afterwards the parameters' ``.grad`` are None (only this rank's reduced shard
  was kept). Held per rank: parameters Ψ, gradients Ψ, optimizer state Ψ/N.
* stage 2: gradients sharded too. A post-accumulate-grad hook reduce-scatters a unit as soon
  as its last gradient is ready and frees the full gradients: gradients Ψ/N. Gradient
  accumulation works: each further backward before ``step()`` adds its reduced shard to the
  shard's gradient.
* stage 3: parameters sharded too. A unit's full parameters are all-gathered just before its
  forward, freed after it, all-gathered again just before its backward (a hook on the
  unit's output) and freed when its gradients have been reduce-scattered: parameters Ψ/N.
  The root unit is gathered for the whole forward, because the tied embedding / LM-head
  weight is used at both ends.

Communication per rank and step, in elements: stages 1–2 a reduce-scatter and an all-gather
of Ψ̄ (2Ψ); stage 3 two all-gathers and a reduce-scatter (3Ψ); with the ring algorithms each
moves (N−1)/N of that (`lab.parallel.comm`). Gradients are scaled by 1/N before the reduce-scatter,
so every shard receives the mean gradient, as in data parallelism.

Memory. `held_tensors` is what a rank keeps *between* steps, the quantity of ZeRO's formulas. Within a
step more is alive: the reduction builds a unit's full fp32 gradient (``flat``) while the unit's own
gradients still exist, and stage 3 holds each unit gathered while it computes (the root unit, with the
tied embedding, for the whole forward). ``peak_bytes`` meters that: the largest storage of parameters,
gradients, optimizer state and reduction buffers alive at once, taken at every gather and reduction
(activations not counted). Gradients are reduced in fp32 whatever the parameters' dtype, so for bf16
parameters the reduce-scatter's payload is 4Ψ bytes where the all-gather's is 2Ψ.

Communication is blocking here (DeepSpeed and FSDP overlap it with compute on side streams).
Freeing uses ``untyped_storage().resize_(0)``: parameters stay the same tensor objects, so
tensors autograd saved in forward see the re-gathered values in backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from lab.core.checks import check_choice, check_group
from lab.parallel import comm
from lab.params.measured_memory import storage_bytes

STAGES = (1, 2, 3)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _Unit:
    """One flat buffer of parameters and this rank's shard of it."""

    def __init__(self, params: list[nn.Parameter], stage: int, rank: int, world_size: int, group,
                 meter: Callable[..., None]) -> None:
        self.params, self.stage, self.group, self.meter = params, stage, group, meter
        self.n = sum(p.numel() for p in params)
        self.shard_size = math.ceil(self.n / world_size)
        p0 = params[0]
        self.full = torch.zeros(self.shard_size * world_size, dtype=p0.dtype, device=p0.device)
        self.offsets = torch.tensor([0] + [p.numel() for p in params]).cumsum(0).tolist()
        with torch.no_grad():
            for p, o in zip(params, self.offsets):
                self.full[o: o + p.numel()].copy_(p.detach().flatten())
            comm.broadcast(self.full, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        for p, o in zip(params, self.offsets):
            p.data = self.full[o: o + p.numel()].view_as(p)
        lo = rank * self.shard_size
        shard = self.full[lo: lo + self.shard_size]
        master = stage == 3 or self.full.dtype != torch.float32     # else the optimizer updates `full` in place
        self.shard = nn.Parameter(shard.float().clone() if master else shard)
        self.gathered = True
        self.ready = 0        # gradients accumulated since the last reduction (of len(params))
        self.reduced = False  # reduced at least once since zero_grad
        if stage == 3:
            self.free()

    def free(self) -> None:
        self.full.untyped_storage().resize_(0)
        self.gathered = False

    def gather(self) -> None:
        """full ← all-gather of the shards (stage 3: only if it was freed)."""
        if self.stage == 3:
            if self.gathered:
                return
            self.full.untyped_storage().resize_(self.full.numel() * self.full.element_size())
            self.meter()
        with torch.no_grad():
            comm.all_gather(self.full, self.shard.detach().to(self.full.dtype, copy=True), group=self.group)
        self.gathered = True

    def reduce_grads(self, world_size: int) -> None:
        """shard.grad += (1/N) Σ_ranks (this rank's slice of the flat fp32 gradient); frees the full gradients."""
        flat = torch.zeros(self.full.numel(), dtype=torch.float32, device=self.full.device)
        out = torch.empty_like(self.shard)
        self.meter(flat, out)                  # the unit's gradients and their fp32 copy, both alive
        for p, o in zip(self.params, self.offsets):
            if p.grad is not None:
                torch.mul(p.grad.flatten(), 1.0 / world_size, out=flat[o: o + p.numel()])
            p.grad = None
        comm.reduce_scatter(out, flat, group=self.group)
        if self.stage == 1:  # keep the shard inside the flat buffer, which stage 1 holds anyway (gradients Ψ)
            lo = dist.get_rank(self.group) * self.shard_size
            out = flat[lo: lo + self.shard_size].copy_(out)
        if self.shard.grad is None:
            self.shard.grad = out
        else:                                  # a further micro-batch before step(): accumulate
            self.shard.grad += out
        self.ready, self.reduced = 0, True


class ZeroOptimizer:
    """ZeRO stage 1, 2 or 3 around ``optimizer_cls`` (e.g. ``torch.optim.AdamW``).

    ``module``: the model, identical architecture on every rank (rank 0's values are
    broadcast); the trained parameters of one unit share a dtype of ``DTYPES`` (bf16/fp16 units get
    fp32 master shards). Parameters that do not require grad (a frozen base under LoRA) are left out
    of the units: every rank keeps them whole, as rank 0 broadcast them, and no optimizer step
    (weight decay included) touches them. ``units``: the submodules
    that form units (default ``module.layers``); the root unit takes all other parameters.
    ``optimizer_kwargs`` go to ``optimizer_cls`` (one parameter group, the same
    hyper-parameters for every parameter). Use: forward, ``loss.backward()``, ``step()``,
    ``zero_grad()``. After ``step()`` the module's parameters hold the updated values
    (stages 1–2) or are gathered by the next forward (stage 3; `gathered_state_dict` gathers
    them on demand). ``peak_bytes``: the most training-state bytes alive at once so far (module docstring).
    """

    def __init__(self, module: nn.Module, optimizer_cls: type[torch.optim.Optimizer], stage: int,
                 units: Sequence[nn.Module] | None = None, group=None, **optimizer_kwargs) -> None:
        check_choice("stage", stage, STAGES)
        check_group("group", group)
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not callable(optimizer_cls):
            raise TypeError(f"optimizer_cls must be an optimizer class such as torch.optim.AdamW (not an instance), "
                            f"got {type(optimizer_cls).__name__}")
        if units is not None and (not isinstance(units, (list, tuple, nn.ModuleList))
                                  or not all(isinstance(u, nn.Module) for u in units)):
            raise TypeError(f"units must be a list of submodules of module, got {type(units).__name__}")
        inside = {id(m) for m in module.modules()}
        outside = [i for i, u in enumerate(units or []) if id(u) not in inside]
        if outside:
            raise ValueError(f"units[{outside[0]}] is not a submodule of module: it would be trained outside the model")
        self.module, self.stage, self.group = module, stage, group
        self.peak_bytes, self.optimizer = 0, None
        unit_modules = list(getattr(module, "layers", []) if units is None else units)
        seen: set[int] = set()
        groups: list[tuple[nn.Module, list[nn.Parameter]]] = []
        self.frozen: list[nn.Parameter] = []
        for m in unit_modules + [module]:
            params = [p for p in m.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            self.frozen += [p for p in params if not p.requires_grad]
            if any(p.requires_grad for p in params):
                groups.append((m, [p for p in params if p.requires_grad]))
        if not groups:
            raise ValueError("module has no parameter that requires grad: nothing to optimize")
        for _, params in groups:
            if len({p.dtype for p in params}) != 1 or params[0].dtype not in DTYPES:
                raise ValueError(f"module: the trained parameters of one unit must share one dtype of {DTYPES}, "
                                 f"got {sorted({str(p.dtype) for p in params})}")
        self.world_size, rank = dist.get_world_size(group), dist.get_rank(group)
        with torch.no_grad():
            for p in self.frozen:
                data = p.data.contiguous()                 # a collective needs contiguous memory
                comm.broadcast(data, src=dist.get_global_rank(group, 0) if group else 0, group=group)
                p.data.copy_(data)
        self.units = [_Unit(params, stage, rank, self.world_size, group, self._meter) for _, params in groups]
        self.optimizer = optimizer_cls([u.shard for u in self.units], **optimizer_kwargs)
        if stage > 1:
            for unit in self.units:
                for p in unit.params:
                    p.register_post_accumulate_grad_hook(lambda p, unit=unit: self._grad_ready(unit))
        if stage == 3:
            for m, unit in zip((m for m, _ in groups), self.units):
                m.register_forward_pre_hook(lambda *_, unit=unit: unit.gather())
                m.register_forward_hook(lambda _m, _i, out, unit=unit: self._after_forward(unit, out))

    def _meter(self, *buffers: torch.Tensor) -> None:
        """peak_bytes ← max(peak_bytes, storage bytes of `held_tensors` and ``buffers``, each storage once)."""
        if self.optimizer is not None:
            alive = [t for tensors in self.held_tensors().values() for t in tensors]
            self.peak_bytes = max(self.peak_bytes, storage_bytes(alive + list(buffers)))

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def _grad_ready(self, unit: _Unit) -> None:
        unit.ready += 1
        if unit.ready == len(unit.params):
            unit.reduce_grads(self.world_size)
            if self.stage == 3:
                unit.free()

    def _after_forward(self, unit: _Unit, out) -> None:
        unit.free()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda grad: unit.gather())

    @torch.no_grad()
    def step(self) -> None:
        """Reduce what backward has not reduced yet, update this rank's shards, re-gather (1–2)."""
        for unit in self.units:
            # stage 1; gradients of a backward not reduced yet (some parameters got none); or no reduction at all
            if self.stage == 1 or unit.ready or not unit.reduced:
                unit.reduce_grads(self.world_size)
                if self.stage == 3:
                    unit.free()
        self.optimizer.step()
        if self.stage < 3:
            for unit in self.units:
                unit.gather()

    def zero_grad(self) -> None:
        for unit in self.units:
            unit.ready, unit.reduced = 0, False
            unit.shard.grad = None
            for p in unit.params:
                p.grad = None

    @torch.no_grad()
    def gathered_state_dict(self) -> dict[str, torch.Tensor]:
        """Full parameters by name, the frozen ones included (a collective: every rank must call it)."""
        names = {id(p): n for n, p in self.module.named_parameters()}
        out = {names[id(p)]: p.detach().clone() for p in self.frozen}
        for unit in self.units:
            was_gathered = unit.gathered
            if self.stage == 3:
                unit.gather()
            for p in unit.params:
                out[names[id(p)]] = p.detach().clone()
            if not was_gathered:
                unit.free()
        return {name: out[name] for name in names.values() if name in out}   # in the module's order

    def held_tensors(self) -> dict[str, list[torch.Tensor]]:
        """The tensors this rank holds now (between steps: parameters, gradients, optimizer state)."""
        params = [u.full for u in self.units] + ([u.shard for u in self.units] if self.stage == 3 else []) \
            + [p.data for p in self.frozen]                # frozen parameters: whole on every rank
        grads = [t for u in self.units for t in [u.shard.grad] + [p.grad for p in u.params] if t is not None]
        states = [v for s in self.optimizer.state.values() for v in s.values()
                  if isinstance(v, torch.Tensor) and v.dim() > 0]
        return {"params": params, "grads": grads, "optimizer": states}
