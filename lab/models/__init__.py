"""Models: the from-scratch `GPT`, its training loop, and the real pretrained models."""

from lab.models.gpt import GPT, GPTConfig
from lab.models.next_token import calibration_windows, lm_batch_loss, random_batch, train_lm
from lab.models.pretrained import (from_llama, load_pretrained_encoder, load_pretrained_lm, load_tokenizer, to_llama,
                                   training_figures, training_record)

__all__ = ["GPT", "GPTConfig", "train_lm", "lm_batch_loss", "random_batch", "calibration_windows", "load_pretrained_lm",
           "load_pretrained_encoder", "load_tokenizer", "to_llama", "from_llama", "training_record",
           "training_figures"]
