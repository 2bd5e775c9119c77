"""A from-scratch decoder-only transformer (Llama-style), small enough to read in one sitting.

Shapes: B = batch, T = sequence length, C = ``d_model``, H = ``n_head`` query heads,
H_kv = ``n_kv_head`` key/value heads (grouped-query attention when H_kv < H),
D = C / H = head dimension, V = ``vocab_size``.

Block (pre-norm):  x ← x + Attn(RMSNorm(x));  x ← x + MLP(RMSNorm(x))
  RMSNorm(x) = g ⊙ x / sqrt(mean(x²) + ε)
  Attn: q = x W_qᵀ, k = x W_kᵀ, v = x W_vᵀ, rotary position embedding on q and k,
        softmax(q kᵀ / sqrt(D) + causal mask) v, then W_oᵀ.
  MLP (SwiGLU): W_down (silu(x W_gateᵀ) ⊙ (x W_upᵀ)).
The layout and numerics match `transformers`' ``LlamaForCausalLM`` exactly, so a
checkpoint converts both ways (`lab.models.pretrained`) and the tests compare logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.core.checks import check_choice, check_int, check_number, check_tensor


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    context_length: int = 256
    d_model: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_kv_head: int = 4
    d_ff: int = 704
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "n_kv_head", "d_ff"):
            value = getattr(self, name)
            check_int(f"GPTConfig.{name}", value)
        check_number("GPTConfig.rope_theta", self.rope_theta, 0.0, closed=(False, True))
        check_number("GPTConfig.norm_eps", self.norm_eps, 0.0)
        check_choice("GPTConfig.tie_embeddings", self.tie_embeddings, (False, True))
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("head dimension d_model/n_head must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """y = g ⊙ x / sqrt(mean(x², last dim) + ε), computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin_at(positions: torch.Tensor, D: int, theta: float):
    """cos, sin of shape (*positions.shape, D) for integer positions of any shape.

    Frequencies ω_i = θ^(-2i/D) for i < D/2, duplicated so that dimension i and i + D/2
    rotate together (the "rotate half" convention of Llama / `transformers`); angle = pos·ω_i.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, device=positions.device, dtype=torch.float32) / D))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rope_cos_sin(T: int, D: int, theta: float, device=None, offset: int = 0):
    """cos, sin of shape (T, D) for positions offset..offset+T-1 (`rope_cos_sin_at`)."""
    return rope_cos_sin_at(torch.arange(offset, offset + T, device=device), D, theta)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, h, T, D) by position: x·cos + rotate_half(x)·sin, rotate_half([a, b]) = [-b, a]."""
    a, b = x.chunk(2, dim=-1)
    rotated = torch.cat([-b, a], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * D, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * D, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * D, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * D, cfg.d_model, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (B, H, T, D), k and v (B, H_kv, T, D) of x (B, T, C), q and k rotated by position (cos, sin)."""
        B, T, _ = x.shape
        D = self.cfg.head_dim
        H, H_kv = self.q_proj.out_features // D, self.k_proj.out_features // D  # per layer: see lab.prune.structured
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)        # (B, H, T, D)
        k = self.k_proj(x).view(B, T, H_kv, D).transpose(1, 2)     # (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, H_kv, D).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        B, H, T, D = q.shape
        k = k.repeat_interleave(H // k.shape[1], dim=1)            # share each kv head
        v = v.repeat_interleave(H // v.shape[1], dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # softmax(qkᵀ/√D + mask) v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Token ids (B, T) int64 → next-token logits (B, T, V) float."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one tensor, two uses
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/√(2L)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        """Logits (B, T′, V) of the positions ``logits_to_keep`` names, as in `transformers`: an int n keeps the
        last n (0: all T), a 1-D int64 tensor the positions it lists. The head is applied to those rows only."""
        check_tensor("idx", idx, dtypes=(torch.int64, torch.int32))  # token ids (embedding indices)
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"idx has sequence length {T}, which exceeds context_length={self.config.context_length}")
        cos, sin = rope_cos_sin(T, self.config.head_dim, self.config.rope_theta, idx.device)
        x = self.embed_tokens(idx)
        for block in self.layers:
            x = block(x, cos, sin)
        if torch.is_tensor(logits_to_keep):
            if logits_to_keep.dim() != 1 or logits_to_keep.dtype != torch.int64:
                raise ValueError(f"logits_to_keep must be an int or a 1-D int64 tensor, got shape "
                                 f"{tuple(logits_to_keep.shape)}, {logits_to_keep.dtype}")
            x = x[:, logits_to_keep]
        elif check_int("logits_to_keep", logits_to_keep, 0, T):
            x = x[:, -logits_to_keep:]
        return self.lm_head(self.norm(x))

    def num_parameters(self) -> int:
        """Unique parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())


def check_gpt(name: str, value) -> GPT:
    """``value`` (the argument ``name``) as a lab `GPT`: the one check of every function that reads its layers,
    linears or config."""
    if not isinstance(value, GPT):
        raise TypeError(f"{name} must be a lab GPT (lab.models.GPT), got {type(value).__name__}; a transformers "
                        "Llama converts with lab.models.from_llama")
    return value
