"""One decode step for a batch of rows of persona's Llama decoder, each row with its own KV cache.

A server's rows differ in persona and in length, so they share no cache layout: the projections and
the MLP run on all rows at once (one product per weight per step, which is what batching buys on a
CPU), the attention runs per row against that row's own cache, at that row's own position. Each
row computes what it would alone: in float32, and in int8, where every projection is one kernel
call for all rows with each row quantized over its own range (`Int8Linear.row`, the call chat's
single-row step makes too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from persona.model.llama import DecoderLayer, KVCache, LlamaDecoder, rope
from persona.model.quantize import Int8Linear


def project(linear: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (B, 1, in) -> (B, 1, out) through `linear` as a decode step calls it (int8: `row`)."""
    if type(linear) is Int8Linear:
        return linear.row(x.view(x.shape[0], -1)).unsqueeze(1)
    return linear(x)


def mlp(layer: DecoderLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's MLP on x (B, 1, D) as a decode step calls its projections."""
    block = layer.mlp
    if block.gate_up_proj is not None:
        gate, up = project(block.gate_up_proj, x).chunk(2, dim=-1)  # (B, 1, I) each
    else:
        gate, up = project(block.gate_proj, x), project(block.up_proj, x)
    return project(block.down_proj, F.silu(gate) * up)  # (B, 1, D)


def decode_rows(
    model: LlamaDecoder, tokens: torch.Tensor, caches: Sequence[KVCache]
) -> torch.Tensor:
    """tokens (B,): one new token per row, appended to caches[b]; logits (B, V)."""
    batch = tokens.shape[0]
    starts = [cache.get_seq_length() for cache in caches]
    x = model.model.embed_tokens(tokens.view(batch, 1))  # (B, 1, D)
    cos, sin = model.rotary(
        torch.tensor(starts, device=tokens.device).view(batch, 1), x.dtype
    )  # (B, 1, 1, d)
    for layer in model.decoder_layers:
        attention = layer.self_attn
        heads, kv_heads, d = attention.heads, attention.kv_heads, attention.head_dim
        h = layer.input_layernorm(x)  # (B, 1, D)
        if attention.qkv_proj is not None:
            qkv = project(attention.qkv_proj, h).view(batch, 1, heads + 2 * kv_heads, d)
            q, k = rope(qkv.narrow(2, 0, heads + kv_heads), cos, sin).split([heads, kv_heads], 2)
            v = qkv.narrow(2, heads + kv_heads, kv_heads)
        else:
            q = rope(project(attention.q_proj, h).view(batch, 1, heads, d), cos, sin)
            k = rope(project(attention.k_proj, h).view(batch, 1, kv_heads, d), cos, sin)
            v = project(attention.v_proj, h).view(batch, 1, kv_heads, d)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or H_kv, 1, d)
        outs = []
        for row, cache in enumerate(caches):
            keys, values = cache.update(
                attention.layer, k[row : row + 1], v[row : row + 1], starts[row]
            )  # (1, H_kv, S_row, d)
            outs.append(
                F.scaled_dot_product_attention(
                    q[row : row + 1], keys, values, enable_gqa=kv_heads != heads
                )  # (1, H, 1, d)
            )
        out = torch.cat(outs, dim=0).transpose(1, 2).reshape(batch, 1, heads * d)  # (B, 1, H d)
        x = x + project(attention.o_proj, out)
        x = x + mlp(layer, layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x)).view(batch, -1)  # (B, V)
