"""One decode step for a batch of rows of persona's Llama decoder, each row with its own KV cache.

A server's rows differ in persona and in length, so they share no cache layout: the projections and
the MLP run on all rows at once (one product per weight per step, which is what batching buys on a
CPU), the attention runs per row against that row's own cache, at that row's own position. In
float32 each row computes what it would alone; under dynamic int8, activations are quantized per
call, so a row's numbers move slightly with its neighbours (as in any dynamic-int8 server).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from persona.model.llama import KVCache, LlamaDecoder, rope


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
            qkv = attention.qkv_proj(h).view(batch, 1, heads + 2 * kv_heads, d)
            q, k = rope(qkv.narrow(2, 0, heads + kv_heads), cos, sin).split([heads, kv_heads], 2)
            v = qkv.narrow(2, heads + kv_heads, kv_heads)
        else:
            q = rope(attention.q_proj(h).view(batch, 1, heads, d), cos, sin)
            k = rope(attention.k_proj(h).view(batch, 1, kv_heads, d), cos, sin)
            v = attention.v_proj(h).view(batch, 1, kv_heads, d)
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
        x = x + attention.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x)).view(batch, -1)  # (B, V)
