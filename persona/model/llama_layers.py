"""The layers of persona's Llama decoder, with transformers' parameter names and arithmetic:
RMSNorm in float32, the default rotary embedding, grouped-query attention through SDPA, the SiLU
MLP; q/k/v and gate/up can be fused into one projection each (`fuse`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from persona.model.llama_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, device: Any = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, device=device))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused call; the same numbers as the steps below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: Any, layer: int, device: Any = None) -> None:
        super().__init__()
        self.layer = layer
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        bias = bool(getattr(config, "attention_bias", False))
        hidden = int(config.hidden_size)
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias, device=device)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias, device=device)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias, device=device)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=bias, device=device)
        self.qkv_proj: nn.Module | None = None  # q, k and v in one layer, once fuse() has run

    def fuse(self, concatenate: Any) -> None:
        """Replace q_proj, k_proj and v_proj by one layer: `concatenate([q, k, v])`."""
        self.qkv_proj = concatenate([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        start: int,
    ) -> torch.Tensor:
        batch, length, _ = x.shape  # x: (B, T, D); cos, sin: (B, T, 1, d), see rope
        heads, kv_heads, d = self.heads, self.kv_heads, self.head_dim
        if self.qkv_proj is not None:  # q and k turn together: one rotation for both
            qkv = self.qkv_proj(x).view(batch, length, heads + 2 * kv_heads, d)
            q, k = rope(qkv.narrow(2, 0, heads + kv_heads), cos, sin).split(
                [heads, kv_heads], dim=2
            )
            v = qkv.narrow(2, heads + kv_heads, kv_heads)
        else:
            q = rope(self.q_proj(x).view(batch, length, heads, d), cos, sin)
            k = rope(self.k_proj(x).view(batch, length, kv_heads, d), cos, sin)
            v = self.v_proj(x).view(batch, length, kv_heads, d)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or H_kv, T, d)
        if cache is not None:
            k, v = cache.update(self.layer, k, v, start)  # (B, H_kv, S, d)
        causal = mask is None and length > 1 and k.shape[2] == length
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=kv_heads != heads
        )  # (B, H, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, heads * d))


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, T, heads, d): x cos + rotate_half(x) sin, as transformers computes it.

    rotate_half(x) = [-x2, x1] for halves x1, x2; here it is x rolled by half with the sign folded
    into `sin` (its first half negated, see LlamaDecoder.rotary): four operations instead of
    seven, and the same numbers ((-a) b = a (-b) exactly).
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class MLP(nn.Module):
    def __init__(self, config: Any, device: Any = None) -> None:
        super().__init__()
        hidden, inner = int(config.hidden_size), int(config.intermediate_size)
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(hidden, inner, bias=bias, device=device)
        self.up_proj = nn.Linear(hidden, inner, bias=bias, device=device)
        self.down_proj = nn.Linear(inner, hidden, bias=bias, device=device)
        self.gate_up_proj: nn.Module | None = None  # gate and up in one layer, once fuse() has run

    def fuse(self, concatenate: Any) -> None:
        """Replace gate_proj and up_proj by one layer: `concatenate([gate, up])`."""
        self.gate_up_proj = concatenate([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: Any, layer: int, device: Any = None) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer, device)
        self.mlp = MLP(config, device)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, device)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        start: int,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, start)
        return x + self.mlp(self.post_attention_layernorm(x))
