"""Suite ``params-seeds`` of `lab.bench` (chapters 1 and 1b): their training comparisons at several seeds.

A training run depends on its seed (initialisation, batch order, LoRA's initial A), so a comparison of
two runs speaks of the method only when its interval resamples seeds as well as documents
(`lab.core.stats.compare` on (S, N) losses). Each notebook runs its seed, ``SEED``; repeating every run
at three seeds would not fit its three minutes, so this suite runs them all, as the notebooks do, at
`SEEDS`, and keeps what a comparison needs: the per-document loss sums of every run
(`lab.core.stats.document_sums`). A notebook checks its own run against the record's row for its seed
(`lab.core.records.seeded_sums`) and compares the seeds with `lab.core.stats.compare_sums`.

Experiments (each scored on one sample, whose groups the record's ``sizes`` count):

* ``sharing`` (`notebooks/01_parameter_management`): `compare_sharing` of a 4-layer model at each seed,
  runs "untied", "tied", "albert" on the sample in windows of 64 after 64 tokens of context.
* ``sweep``, ``task``, ``forgetting`` (`notebooks/01b_training_with_fewer_bytes`, `task_losses`): LoRA's
  rate sweep on the task's 60–75% (windows), the optimizers and LoRA/QLoRA on its held-out 25% (windows),
  and full fine-tuning and LoRA on the shared test sample (documents).
* ``nf4`` (`nf4_losses`): QLoRA as published (`lab.params.lora.qlora_model`: NF4 base with double-quantized
  scales on every decoder linear, bf16 compute, LoRA on all seven linears) on the same held-out windows as
  ``task``, before ("NF4 base") and after ("QLoRA (NF4)") the same fine-tuning; its own experiment so that
  the notebook's ``task`` runs still match the record's. Same groups as ``task``: its sums compare with
  ``task``'s runs directly (`lab.core.stats.compare_sums`).

``bits_per_parameter`` (`bits_per_parameter`): the storage of the two QLoRA bases, measured.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.core.records import add_seed
from lab.core.runtime import seed_everything
from lab.data import eval_sample
from lab.models import load_pretrained_lm, load_tokenizer
from lab.models.gpt import GPTConfig
from lab.models.next_token import random_batch
from lab.params.finetune import document_sample, document_tokens, finetune, lr_sweep
from lab.params.lora import add_lora, qlora_model
from lab.params.sharing import compare_sharing
from lab.perplexity import EvalSample
from lab.quant.linear import Int4Linear, int4_model
from lab.quant.model import rtn_quantize_model
from lab.quant.nf4_linear import NF4Linear, nf4_model

SEEDS = (0, 1, 2)
OPTIMIZERS = ("adamw", "adafactor", "adam8bit")
# The notebooks' defaults (their parameters cells); a notebook checks them against the record's.
SETTINGS = {"eval_tokens": 8192, "sharing_steps": 100,
            "task": "library/sqlite3.rst.txt", "train_fraction": 0.75, "sweep_fraction": 0.60,
            "steps": 24, "batch": 4, "seq": 128, "lr": 3e-4, "lora_lr": 3e-3, "lora_lr_grid": [1e-3, 3e-3, 1e-2],
            "lora_r": 8, "lora_alpha": 16.0, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "qlora_group": 64, "nf4_block": 64}
QUICK = {**SETTINGS, "eval_tokens": 512, "sharing_steps": 2, "train_fraction": 0.97, "sweep_fraction": 0.95,
         "steps": 2, "seq": 32}


def sharing_losses(tokenizer, settings: dict, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Chapter 1's parameter-sharing runs at ``seed``: ({variant: per-token NLL (N,) float64}, groups (N,)),
    the 4-layer model (C = 128, 4 heads, 2 kv heads, F = 352) trained ``sharing_steps`` steps of 8 × 128."""
    small = GPTConfig(vocab_size=len(tokenizer), context_length=128, d_model=128, n_layer=4, n_head=4,
                      n_kv_head=2, d_ff=352)
    short = eval_sample(tokenizer, settings["eval_tokens"], window=64, context=64)
    rows = compare_sharing(small, sample=short, steps=settings["sharing_steps"], batch_size=8, seq_len=128,
                           seed=seed, progress=False)
    return {row["variant"]: row["losses"] for row in rows}, short.documents


def task_losses(lm, tokenizer, settings: dict, seed: int) -> dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Chapter 1b's fine-tuning runs at ``seed``, in its notebook's order: {experiment: (losses, groups)}.

    The batches come from one generator seeded with ``seed`` (the task's batches, then the sweep's);
    the global generator is seeded with ``seed`` before the sweep's LoRA copies and before LoRA and QLoRA
    draw their A. ``lm`` is left unchanged. "sweep": {f"{rate:g}": NLL} on the task's 60–75%; "task": the
    pretrained model, each optimizer, the int4 base, LoRA and QLoRA on its held-out part; "forgetting":
    the pretrained model, full fine-tuning (AdamW) and LoRA on the shared sample `lab.data.eval_sample`;
    "nf4": `nf4_losses` on the held-out part, after every other run (which it leaves as they were).
    """
    s = settings
    sample = eval_sample(tokenizer, s["eval_tokens"])
    doc = document_tokens(s["task"], tokenizer)
    cut, start = int(s["train_fraction"] * len(doc)), int(s["sweep_fraction"] * len(doc))
    task_sample, sweep_sample = document_sample(doc, cut), document_sample(doc[:cut], start)
    gen = torch.Generator().manual_seed(seed)
    task_batches = [random_batch(doc[:cut], s["batch"], s["seq"], gen) for _ in range(s["steps"])]
    sweep_batches = [random_batch(doc[:start], s["batch"], s["seq"], gen) for _ in range(s["steps"])]
    lora = {"r": s["lora_r"], "alpha": s["lora_alpha"], "targets": tuple(s["lora_targets"])}
    seed_everything(seed)
    swept = lr_sweep(lm, sweep_batches, s["lora_lr_grid"], sweep_sample, lora=lora)
    task, models = {"pretrained": task_sample.token_losses(lm)}, {}
    for name in OPTIMIZERS:
        models[name] = copy.deepcopy(lm)
        task[name] = finetune(models[name], task_batches, name, lr=s["lr"], sample=task_sample)["token_losses"]
    seed_everything(seed)
    models["LoRA"], models["QLoRA"] = copy.deepcopy(lm), copy.deepcopy(lm)
    add_lora(models["LoRA"], **lora)
    int4_model(models["QLoRA"], rtn_quantize_model(models["QLoRA"], 4, s["qlora_group"]))
    task["int4 base"] = task_sample.token_losses(models["QLoRA"])
    add_lora(models["QLoRA"], **lora)
    for name in ("LoRA", "QLoRA"):
        task[name] = finetune(models[name], task_batches, "adamw", lr=s["lora_lr"], sample=task_sample)["token_losses"]
    forgetting = {"pretrained": sample.token_losses(lm), "adamw": sample.token_losses(models["adamw"]),
                  "LoRA": sample.token_losses(models["LoRA"])}
    return {"sweep": ({f"{lr:g}": v for lr, v in swept.items()}, sweep_sample.documents),
            "task": (task, task_sample.documents), "forgetting": (forgetting, sample.documents),
            "nf4": (nf4_losses(lm, task_batches, task_sample, s, seed), task_sample.documents)}


def nf4_losses(lm: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], sample: EvalSample, settings: dict,
               seed: int) -> dict[str, torch.Tensor]:
    """QLoRA as published on a copy of ``lm`` (`qlora_model` with the task's rank and α, NF4 blocks of
    ``nf4_block``), A drawn after seeding the global generator with ``seed``: {"NF4 base": per-token NLL on
    ``sample`` before fine-tuning (B = 0: the quantized model itself), "QLoRA (NF4)": after AdamW on
    ``batches`` at the LoRA rate}."""
    s = settings
    seed_everything(seed)
    model = copy.deepcopy(lm)
    qlora_model(model, s["lora_r"], s["lora_alpha"], s["nf4_block"])
    base = sample.token_losses(model)
    tuned = finetune(model, batches, "adamw", lr=s["lora_lr"], sample=sample)["token_losses"]
    return {"NF4 base": base, "QLoRA (NF4)": tuned}


def bits_per_parameter(lm: nn.Module, settings: dict) -> dict[str, float]:
    """Bits per decoder-linear weight of the two QLoRA bases, from their stored tensors: 8·Σ bytes of the
    quantized linears' buffers (codes, scales, zeros; codes, absmax, their scales and mean) / Σ d_in·d_out.
    "QLoRA": the int4 base (groups of ``qlora_group``, fp32 scale and zero point: 4 + 64/g);
    "QLoRA (NF4)": the NF4 base (`lab.formats.nf4.nf4_bits_per_parameter`, ≈ 4.127 for blocks of 64)."""
    int4, nf4 = copy.deepcopy(lm), nf4_model(copy.deepcopy(lm), settings["nf4_block"])
    int4_model(int4, rtn_quantize_model(int4, 4, settings["qlora_group"]))
    bits = {}
    for name, model, kind in (("QLoRA", int4, Int4Linear), ("QLoRA (NF4)", nf4, NF4Linear)):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        stored = sum(b.numel() * b.element_size() for m in layers for b in m.buffers())
        bits[name] = 8 * stored / sum(m.in_features * m.out_features for m in layers)
    return bits


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every run of `sharing_losses` and `task_losses` at each seed of `SEEDS`, on the CPU (the notebooks'
    device: a notebook checks its own run against the record). quick=True: `QUICK`'s tiny settings.
    Returns {"seeds", "settings", "threads" (torch's CPU threads: rounding, and so a chaotic run, depends on
    them), "bits_per_parameter" (`bits_per_parameter`), "experiments": {name: {"sizes", "sums": {run: (S, G)
    nested lists}}}}."""
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite params-seeds runs on the cpu, where the notebooks that "
                         "check against its record run")
    settings = QUICK if quick else SETTINGS
    tokenizer, lm = load_tokenizer(), load_pretrained_lm("lab")
    experiments: dict = {}
    for seed in tqdm(SEEDS, desc="params-seeds", disable=not progress):
        add_seed(experiments, {"sharing": sharing_losses(tokenizer, settings, seed)})
        add_seed(experiments, task_losses(lm, tokenizer, settings, seed))
    return {"seeds": list(SEEDS), "settings": settings, "threads": torch.get_num_threads(),
            "bits_per_parameter": bits_per_parameter(lm, settings), "experiments": experiments}
