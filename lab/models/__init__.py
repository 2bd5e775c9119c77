"""Models: the from-scratch `GPT`, its training loop, and the real pretrained models."""

from lab.models.gpt import GPT, GPTConfig
from lab.models.next_token import train_lm
from lab.models.pretrained import from_llama, load_pretrained_encoder, load_pretrained_lm, load_tokenizer, to_llama

__all__ = ["GPT", "GPTConfig", "train_lm", "load_pretrained_lm", "load_pretrained_encoder",
           "load_tokenizer", "to_llama", "from_llama"]
