"""bitsandbytes' stable embedding for a lab GPT trained from scratch with `lab.params.Adam8bit`.

bitsandbytes recommends its 8-bit optimizers for NLP models together with ``bnb.nn.StableEmbedding``
(Dettmers et al. 2022, section "Stable Embedding Layer"; bitsandbytes/nn/modules.py, class ``StableEmbedding``),
which changes three things of the token embedding E (V, C):

    init      E ~ U(−a, a),  a = √(6 / (V + C))           (Xavier uniform; the GPT's is N(0, 0.02²))
    forward   x = LayerNorm(E[idx]) = γ ⊙ (e − mean(e)) / √(var(e) + ε) + β,   in fp32
    optimizer E keeps 32-bit Adam state                  (bitsandbytes: ``register_module_override(self,
              'weight', {'optim_bits': 32})``; here: `adam8bit_param_groups` puts E in an "optim_bits" 32 group)

The paper's reason (its abstract): the tokens of a language are far from uniform, so the rows of E get
gradients of very different sizes and frequencies, and the layer reduces that gradient variance: the
LayerNorm keeps the lookup's scale fixed whatever the rows do, and 32-bit state stores the rows' m, v
without a block's shared absmax. The book's model shows why the state matters: its tied E also gets the
head's gradient, tiny for the rows of tokens absent from the batch, whose v (∝ g²) falls below the
smallest code times its block's absmax and is stored as 0 while m (∝ g) is not, so a later step divides m
by √v̂ + ε with v̂ all but 0. Fed the same gradients as AdamW for 10 fine-tuning steps (rate 3e-4, 4 × 128
tokens), 8-bit Adam moved such rows up to 0.47 away from AdamW's, which moved no weight by more than 0.003;
with E's state in 32 bits the largest gap was 0.0027 (one element of an MLP matrix).

Weight tying. The lab GPT ties the output head to the embedding by default (``tie_embeddings``:
``lm_head.weight is embed_tokens.weight``). `stable_embedding` keeps the tie: the new Xavier matrix is the
head's weight too, so the model keeps its parameter count and its one (V, C) matrix, and the head still
reads E itself, without the LayerNorm (the LayerNorm acts on the lookup only, as in bitsandbytes, whose
layer is an embedding, not a head). The matrix's 32-bit state then serves both uses; in the book's model it
is the largest tensor (V·C = 2,097,152 of 6.5 M parameters), so its fp32 state costs 6 bytes more per
element than 8-bit: the price of the stable embedding under tying. An untied GPT keeps its own head init.

A model with a `StableEmbedding` has two more parameters (γ, β, (C,) each) and no longer converts to a
`transformers` Llama (`lab.models.pretrained`), which has no norm after the lookup.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.core.checks import check_int, check_number, check_tensor
from lab.models.gpt import GPT, check_gpt


class StableEmbedding(nn.Embedding):
    """Token ids (…) int64 → LayerNorm(E[idx]) (…, C) in E's dtype; E (V, C) Xavier-uniform, the LayerNorm
    (``norm``: γ = 1, β = 0, fp32, ``eps``) computed in fp32 (module docstring). ``num_embeddings`` V ≥ 1,
    ``embedding_dim`` C ≥ 1, ``eps`` > 0."""

    def __init__(self, num_embeddings: int, embedding_dim: int, eps: float = 1e-5) -> None:
        check_int("num_embeddings", num_embeddings)
        check_int("embedding_dim", embedding_dim)
        check_number("eps", eps, 0.0, closed=(False, True))
        super().__init__(num_embeddings, embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, eps=eps)

    def reset_parameters(self) -> None:
        """E ~ U(−a, a), a = √(6 / (V + C)) (`torch.nn.init.xavier_uniform_`)."""
        nn.init.xavier_uniform_(self.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        check_tensor("idx", idx, dtypes=(torch.int64, torch.int32))      # token ids (embedding indices)
        return self.norm(F.embedding(idx, self.weight).float()).to(self.weight.dtype)


def stable_embedding(model: GPT) -> GPT:
    """Replace ``model.embed_tokens`` of a lab GPT, in place, by a fresh `StableEmbedding` (V, C) on the
    embedding's device and dtype, for training from scratch (its old weights are dropped); a tied head
    (``config.tie_embeddings``) is tied to the new matrix. Returns ``model``."""
    check_gpt("model", model)
    old = model.embed_tokens
    if isinstance(old, StableEmbedding):
        raise ValueError("model already has a StableEmbedding; stable_embedding would only re-initialise it")
    new = StableEmbedding(old.num_embeddings, old.embedding_dim, model.config.norm_eps).to(old.weight.device)
    new.weight = nn.Parameter(new.weight.detach().to(old.weight.dtype), requires_grad=old.weight.requires_grad)
    model.embed_tokens = new
    if model.lm_head.weight is old.weight:
        model.lm_head.weight = new.weight
    return model


def adam8bit_param_groups(model: nn.Module) -> list[dict]:
    """`lab.params.Adam8bit`'s param groups for ``model`` (any module): the weights of its `StableEmbedding`
    layers in a group with "optim_bits": 32, every other trainable parameter in a default group (8-bit,
    fp32 under ``min_8bit_size``). Each parameter once (a tied matrix is one parameter); frozen ones left
    out; an empty group left out. Pass the list as ``Adam8bit``'s ``params``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    stable = {id(m.weight) for m in model.modules() if isinstance(m, StableEmbedding)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in stable]},
              {"params": [p for p in params if id(p) in stable], "optim_bits": 32}]
    return [group for group in groups if group["params"]]
