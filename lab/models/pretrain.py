"""Train the book's pretrained causal LM on the corpus and write its checkpoint.

    python -m lab.models.pretrain --steps 1500 --out checkpoints/pydoc-gpt

Steps: train a byte-level BPE tokenizer on the train split; train `GPT` on the train
split's tokens (validation perplexity every ``--eval-every`` steps); save in `transformers`'
Llama format, weights in bfloat16, plus ``training_record.json`` (`lab.core.records`: command,
device, versions, date; then the loss curve, validation and test-slice perplexity), written
atomically (`lab.core.atomic.atomic_write_json`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from lab import data
from lab.core.atomic import atomic_write_json
from lab.core.records import provenance
from lab.core.runtime import get_device, seed_everything
from lab.models.gpt import GPT, GPTConfig
from lab.models.next_token import train_lm
from lab.models.pretrained import LM_DIR, checkpoint_sha256, load_pretrained_lm, to_llama
from lab.perplexity import perplexity


# The training log's test figure: the first 32,768 tokens of the test split (15 of its 31 documents), the
# slice of the stored record's ``eval_slice_tokens``. The book evaluates on `lab.data.eval_sample` instead.
TEST_SLICE_TOKENS = 32_768


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options: output folder, training schedule, model shape, evaluation, seed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=LM_DIR)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-kv-head", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=704)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, save, reload and evaluate the checkpoint; write and return its ``training_record.json``."""
    args = parse_args(argv)
    seed_everything(args.seed)
    device = get_device()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = data.train_tokenizer((t for _, t in data.corpus_documents("train")), args.vocab_size)
    tokenizer.save_pretrained(args.out)
    train = data.tokenize_split("train", tokenizer)
    val = data.tokenize_split("validation", tokenizer)[: args.eval_tokens]
    cfg = GPTConfig(vocab_size=len(tokenizer), context_length=args.seq_len, d_model=args.d_model,
                    n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head, d_ff=args.d_ff)
    model = GPT(cfg).to(device)
    history = train_lm(model, train, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                       lr=args.lr, warmup=args.warmup, seed=args.seed, eval_every=args.eval_every,
                       eval_fn=lambda m: perplexity(m, val.to(device), args.seq_len, args.seq_len // 2))
    to_llama(model.float().cpu()).to(torch.bfloat16).save_pretrained(args.out)

    reloaded = load_pretrained_lm("transformers", args.out)  # bf16 on disk → float32
    test = data.tokenize_split("test", tokenizer)[:TEST_SLICE_TOKENS]
    command = "python -m lab.models.pretrain " + shlex.join(argv if argv is not None else sys.argv[1:])
    record = {
        **provenance(device, command), "threads": torch.get_num_threads(),
        "config": cfg.to_dict(), "args": {k: str(v) for k, v in vars(args).items()},
        "n_parameters": model.num_parameters(), "corpus": data.corpus_manifest(),
        "model_safetensors_sha256": checkpoint_sha256(args.out),
        "train_tokens": len(train), "tokens_seen": history["tokens_seen"], "seconds": history["seconds"],
        "loss_every_10": history["loss"][::10], "final_loss": history["loss"][-1],
        "val_perplexity": history["eval"],
        "test_slice_perplexity_bf16_checkpoint": perplexity(reloaded, test, args.seq_len, args.seq_len // 2),
        "eval_slice_tokens": len(test),
    }
    atomic_write_json(args.out / "training_record.json", record)
    print(json.dumps({k: record[k] for k in ("n_parameters", "tokens_seen", "seconds", "val_perplexity",
                                             "test_slice_perplexity_bf16_checkpoint")}, indent=2))
    return record


if __name__ == "__main__":
    main()
