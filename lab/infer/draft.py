"""The draft model of speculative decoding: the book's LM distilled into 2 layers, and its checkpoint.

    python -m lab.infer.draft --steps 600 --out checkpoints/pydoc-gpt-draft

A good draft is one whose next-token distribution q is close to the target's p in total variation,
since the acceptance rate is α = E[Σ_x min(p(x), q(x))] = 1 − E[TV(p, q)]. Chapter 4's recipe gives
it: a student that keeps the target's width, embeddings and head and every third of its layers
(`lab.distill.gpt_student`, DistilBERT's initialisation), trained on the target's full distribution
(`lab.distill.distill`, forward KL at τ = 1) over the corpus's train split. It shares the target's
tokenizer, as speculative decoding requires. The checkpoint is stored like the target's
(`transformers` Llama format, bf16) with a ``training_record.json``; its perplexities are measured on the
evaluation sample (`lab.data.eval_sample`, ``--eval-tokens`` scored tokens). The committed record predates
the sample: its perplexities are on the first 8,192 tokens of the test split, so the book measures the
pair on the sample itself (`teacher_forced`).

`teacher_forced` scores both models on the sample at once, per scored token t with target p_t and draft q_t:
the losses −log p_t(x_t), −log q_t(x_t); the acceptance probability of speculative sampling at τ = 1,
α_t = Σ_x min(p_t(x), q_t(x)) = 1 − TV(p_t, q_t); and whether the two argmaxes agree (greedy acceptance).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from lab import data
from lab.core.atomic import atomic_write_json
from lab.core.checks import check_path, check_tensor
from lab.core.records import provenance
from lab.core.runtime import get_device, seed_everything
from lab.distill import KDLoss, TeacherCache, distill, gpt_student
from lab.distill.experiments import lm_batches
from lab.infer.kv_cache import check_token_ids
from lab.models.gpt import GPT, check_gpt
from lab.models.loop import Optim
from lab.models.pretrained import LM_DIR, checkpoint_sha256, load_pretrained_lm, load_tokenizer, to_llama
from lab.perplexity import EvalSample

DRAFT_DIR = LM_DIR.parent / "pydoc-gpt-draft"


def load_draft(path: str | Path = DRAFT_DIR, dtype: torch.dtype = torch.float32):
    """The distilled draft as a lab `GPT` in eval mode."""
    folder = check_path("path", path, folder=True)
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"draft checkpoint {folder} has no {missing[0]}; train it with "
                                "`python -m lab.infer.draft`")
    return load_pretrained_lm("lab", path, dtype)


def _logits(model: GPT, x: torch.Tensor, keep: int = 0) -> torch.Tensor:
    """Logits (T′, V) of x (T,): of the last ``keep`` positions (0: all), the head applied to those rows only."""
    return model(x.to(next(model.parameters()).device)[None], logits_to_keep=keep)[0].float().cpu()


def _check_pair(target: GPT, draft: GPT, sample: EvalSample, drafts: Mapping[str, torch.Tensor] | None) -> None:
    """`teacher_forced`'s checks: two GPTs of one vocabulary, a sample of their token ids that fits both contexts,
    and drafts (n,) int64 on the CPU, token ids or -1."""
    check_gpt("target", target)
    check_gpt("draft", draft)
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft and target must share the vocabulary, got draft vocab_size="
                         f"{draft.config.vocab_size} and target vocab_size={target.config.vocab_size}")
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be a lab.perplexity.EvalSample (lab.data.eval_sample builds one), got "
                        f"{type(sample).__name__}")
    for model, name in ((target, "target"), (draft, "draft")):
        sample.check_fits(model.config.context_length, f"the {name}'s context_length")
    check_token_ids("sample.inputs", torch.cat(sample.inputs), target, dims=1)
    if drafts is not None and not isinstance(drafts, Mapping):
        raise TypeError(f"drafts must be None or a dict {{name: (n,) int64 drafts}}, got {type(drafts).__name__}")
    n, V = len(sample.tokens), target.config.vocab_size
    for name, d in (drafts or {}).items():
        check_tensor(f"drafts[{name!r}]", d, 1, (torch.int64,))
        if d.shape != (n,) or d.device.type != "cpu":
            raise ValueError(f"drafts[{name!r}] must be (n,) = ({n},) int64 on the CPU, got {tuple(d.shape)} on "
                             f"{d.device}")
        if n and (d.min() < -1 or d.max() >= V):
            raise ValueError(f"drafts[{name!r}] must be token ids in [0, {V}) or -1 (no draft), got values in "
                             f"[{d.min().item()}, {d.max().item()}]")


@torch.no_grad()
def teacher_forced(target: GPT, draft: GPT, sample: EvalSample,
                   drafts: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Target and draft on every window of ``sample``, per scored token: (n,) float64 tensors aligned with
    ``sample.tokens``: "target_nll", "draft_nll" (nats, as `EvalSample.token_losses`), "alpha" = Σ_x min(p, q),
    "argmax_agree" = 1[argmax p = argmax q]. ``drafts`` {name: (n,) int64 one-hot drafts of the scored tokens,
    −1 for none} adds "p_draft_<name>" = p(d) and "argmax_draft_<name>" = 1[d = argmax p], NaN where no draft.
    """
    _check_pair(target, draft, sample, drafts)
    n = len(sample.tokens)
    keys = ["target_nll", "draft_nll", "alpha", "argmax_agree"]
    keys += [f"{kind}_{name}" for name in drafts or {} for kind in ("p_draft", "argmax_draft")]
    out = {key: torch.full((n,), float("nan"), dtype=torch.float64) for key in keys}
    start = 0
    for x, c in zip(sample.inputs, sample.n_context):
        keep = len(x) - c + 1                   # positions c − 1 … T − 1: no head on the rest of the context
        logp = torch.log_softmax(_logits(target, x, keep)[:-1], -1)     # p_t for the scored tokens x[c:]
        logq = torch.log_softmax(_logits(draft, x, keep)[:-1], -1)
        rows, nxt = slice(start, start + len(x) - c), x[c:, None].cpu()
        out["target_nll"][rows] = -logp.gather(-1, nxt)[:, 0].double()
        out["draft_nll"][rows] = -logq.gather(-1, nxt)[:, 0].double()
        out["alpha"][rows] = torch.minimum(logp.exp(), logq.exp()).sum(-1).double()
        out["argmax_agree"][rows] = (logp.argmax(-1) == logq.argmax(-1)).double()
        for name, d in (drafts or {}).items():
            d_w, has = d[rows], d[rows] >= 0
            out[f"p_draft_{name}"][rows][has] = logp[has].gather(-1, d_w[has, None])[:, 0].exp().double()
            out[f"argmax_draft_{name}"][rows][has] = (logp[has].argmax(-1) == d_w[has]).double()
        start = rows.stop
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DRAFT_DIR)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    seed_everything(args.seed)
    device = get_device()
    tokenizer = load_tokenizer()
    target = load_pretrained_lm("lab").to(device)
    student = gpt_student(target, args.layers)
    batches = lm_batches(data.tokenize_split("train", tokenizer), args.steps, args.batch_size, args.seq_len,
                         seed=args.seed)
    sample = data.eval_sample(tokenizer, args.eval_tokens)
    teacher = TeacherCache(target, keep=False)     # keep=True would hold every batch's logits in memory
    history = distill(student, batches, args.steps, KDLoss(teacher, temperature=1.0, alpha=1.0),
                      optim=Optim(args.lr, warmup=max(1, args.steps // 20)), eval_every=args.steps // 4,
                      eval_fn=sample.perplexity, progress="distill draft")
    args.out.mkdir(parents=True, exist_ok=True)
    to_llama(student.float().cpu()).to(torch.bfloat16).save_pretrained(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(LM_DIR / name, args.out / name)
    command = "python -m lab.infer.draft " + shlex.join(argv if argv is not None else sys.argv[1:])
    record = {
        **provenance(device, command), "threads": torch.get_num_threads(),
        "args": {k: str(v) for k, v in vars(args).items()}, "config": student.config.to_dict(),
        "n_parameters": student.num_parameters(), "target_sha256": checkpoint_sha256(LM_DIR),
        "model_safetensors_sha256": checkpoint_sha256(args.out), "seconds": history["seconds"],
        "loss_every_10": history["loss"][::10], "eval_perplexity": history["eval"],
        "eval_tokens": args.eval_tokens, "eval": "lab.data.eval_sample",
        "target_eval_perplexity": sample.perplexity(target),
        "draft_eval_perplexity_bf16_checkpoint": sample.perplexity(load_draft(args.out).to(device)),
    }
    atomic_write_json(args.out / "training_record.json", record)
    print(json.dumps({k: record[k] for k in ("n_parameters", "seconds", "eval_perplexity", "target_eval_perplexity",
                                             "draft_eval_perplexity_bf16_checkpoint")}, indent=2))
    return record


if __name__ == "__main__":
    main()
