"""The single-token decode step of persona's Llama decoder: a plan made once (each layer's
weights, projections as functions of one row, shapes) and the step that runs from it, the same
numbers as the general forward pass in fewer operations (see decode_step)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from persona.model.llama_cache import KVCache
from persona.model.llama_layers import DecoderLayer, RMSNorm
from persona.model.quantize import Int8Linear

if TYPE_CHECKING:
    from persona.model.llama import LlamaDecoder


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """One decoder layer as the single-token step runs it: weights, projections as functions of a row, shapes."""

    input_norm: torch.Tensor  # (D,) float32
    input_eps: float
    qkv: Callable[[torch.Tensor], torch.Tensor]  # (1, D) -> (1, (H + 2 H_kv) d)
    o: Callable[[torch.Tensor], torch.Tensor]  # (1, H d) -> (1, D)
    post_norm: torch.Tensor  # (D,) float32
    post_eps: float
    gate_up: Callable[[torch.Tensor], torch.Tensor]  # (1, D) -> (1, 2 I)
    down: Callable[[torch.Tensor], torch.Tensor]  # (1, I) -> (1, D)
    index: int
    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """What decode_step reads, made by make_plan (LlamaDecoder.prepare_for_decode)."""

    layers: tuple[LayerPlan, ...]
    # the forward (pre-)hook dicts of every module the step does not call: the very dicts a hook
    # registered later lands in, so the step sees it and declines
    skipped_hooks: tuple[dict[Any, Any], ...]


def plan_layer(layer: DecoderLayer) -> tuple[LayerPlan, tuple[nn.Module, ...]] | None:
    """`layer` as a plan, and the modules the step calls none of; None where the step does not
    apply (norms not plain float32 RMSNorm)."""
    attention, mlp = layer.self_attn, layer.mlp
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if not all(type(norm) is RMSNorm and norm.weight.dtype == torch.float32 for norm in norms):
        return None
    qkv = (
        (attention.qkv_proj,)
        if attention.qkv_proj is not None
        else (attention.q_proj, attention.k_proj, attention.v_proj)
    )
    gate_up = (mlp.gate_up_proj,) if mlp.gate_up_proj is not None else (mlp.gate_proj, mlp.up_proj)
    plan = LayerPlan(
        input_norm=norms[0].weight,
        input_eps=norms[0].eps,
        qkv=_rows(qkv),
        o=_rows((attention.o_proj,)),
        post_norm=norms[1].weight,
        post_eps=norms[1].eps,
        gate_up=_rows(gate_up),
        down=_rows((mlp.down_proj,)),
        index=attention.layer,
        heads=attention.heads,
        kv_heads=attention.kv_heads,
        head_dim=attention.head_dim,
    )
    skipped = (layer, attention, mlp, *norms, *qkv, attention.o_proj, *gate_up, mlp.down_proj)
    return plan, skipped


def _rows(linears: tuple[nn.Module, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of one row x (1, in) giving the outputs of `linears` side by side (1, sum of out)."""
    calls = [_row_call(linear) for linear in linears]
    if len(calls) == 1:
        return calls[0]
    return lambda x: torch.cat([call(x) for call in calls], dim=1)


def _row_call(linear: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`linear` on one row: the int8 kernel called directly, a float Linear without its module call."""
    if type(linear) is nn.Linear:
        return functools.partial(F.linear, weight=linear.weight, bias=linear.bias)
    if type(linear) is Int8Linear:
        return linear.row
    return linear


def make_plan(layers: Iterable[DecoderLayer]) -> DecodePlan | None:
    """The decode plan over `layers` as they are now, or None where the step does not apply."""
    planned_layers: list[Any] = []
    skipped: list[nn.Module] = []
    for layer in layers:
        planned = plan_layer(layer)
        if planned is None:
            return None
        planned_layers.append(planned[0])
        skipped.extend(planned[1])
    return DecodePlan(
        layers=tuple(planned_layers),
        skipped_hooks=tuple(
            hooks
            for module in skipped
            for hooks in (module._forward_pre_hooks, module._forward_hooks)
        ),
    )


def decode_step(
    model: LlamaDecoder, plan: DecodePlan, input_ids: torch.Tensor, cache: KVCache
) -> torch.Tensor | None:
    """forward() for one token of one sequence (a chat decode step) from the decode plan (see
    LlamaDecoder.prepare_for_decode): logits (1, 1, V), or None where a module the step skips has forward
    hooks (the caller then takes forward's general path, which calls every module).

    The same arithmetic in fewer operations, which is what a step of a small model costs on CPU
    (the int8 products are a third of it): rows (1, D) instead of (B, T, D) with their views and
    transposes; each layer's weights and projections from the plan instead of nn.Module's
    attribute lookups; the rotary embedding as one product, rotate_half(x) sin =
    x @ (half_turn * sin), a matrix with one nonzero per column, so each entry is the same single
    product as x.roll() * sin.
    """
    if any(plan.skipped_hooks) or global_forward_hooks():
        return None  # hooks expect their module to be called: the general path calls every one
    position = cache.get_seq_length()
    x = model.model.embed_tokens(input_ids).view(1, -1)  # (1, D)
    if x.dtype != torch.float32:
        return None
    cos, sin = model.rotary(torch.tensor([[position]]), x.dtype)
    cos = cos.view(1, -1)  # (1, d)
    rotation = model.half_turn * sin.view(1, -1)  # (d, d): column j scaled by sin_j
    width = (x.shape[1],)
    for layer in plan.layers:
        heads, kv_heads, d = layer.heads, layer.kv_heads, layer.head_dim
        qkv = layer.qkv(F.rms_norm(x, width, layer.input_norm, layer.input_eps)).view(
            heads + 2 * kv_heads, d
        )  # (H + 2 H_kv, d)
        qk = qkv.narrow(0, 0, heads + kv_heads)  # (H + H_kv, d)
        # = rope(qk) = x cos + rotate_half(x) sin, bit for bit: each entry of the product is one
        # exact multiple of an entry plus zeros, then one addition, on any BLAS
        turned = torch.mm(qk, rotation).add_(qk * cos)
        q, k = turned.split((heads, kv_heads))
        keys, values = cache.update(
            layer.index,
            k.view(1, kv_heads, 1, d),
            qkv.narrow(0, heads + kv_heads, kv_heads).view(1, kv_heads, 1, d),
            position,
        )  # (1, H_kv, S, d)
        out = F.scaled_dot_product_attention(
            q.view(1, heads, 1, d), keys, values, enable_gqa=kv_heads != heads
        )  # (1, H, 1, d)
        x = x + layer.o(out.view(1, heads * d))  # (1, D)
        gate, up = layer.gate_up(F.rms_norm(x, width, layer.post_norm, layer.post_eps)).chunk(
            2, dim=1
        )  # (1, I) each
        x = x + layer.down(F.silu(gate) * up)
    return model.lm_head(model.model.norm(x)).view(1, 1, -1)  # (1, 1, V)


def global_forward_hooks() -> bool:
    """Whether forward hooks are registered for every module (torch.nn.modules.module.register_module_forward_hook)."""
    module = torch.nn.modules.module
    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)
