"""Models: the from-scratch `GPT`, its training loop, and the real pretrained models."""

from lab.models.gpt import GPT, GPTConfig
from lab.models.pretrained import (load_pretrained_encoder, load_pretrained_lm, load_tokenizer,
                                   from_llama, to_llama)
from lab.models.next_token import train_lm

__all__ = ["GPT", "GPTConfig", "train_lm", "load_pretrained_lm", "load_pretrained_encoder",
           "load_tokenizer", "to_llama", "from_llama"]
