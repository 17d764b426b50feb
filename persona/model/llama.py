"""A Llama-family decoder for inference: the same computation as transformers' LlamaForCausalLM.

Chat only needs a forward pass with a KV cache, and importing transformers' modeling code costs
about two seconds and ninety megabytes at every start (it pulls in torch._dynamo). This module is
that forward pass in plain torch, for checkpoints whose config it fully understands (`supports`):
the same parameter names, so the same checkpoint, int8 cache and quantization apply; the same
arithmetic (RMSNorm in float32, default RoPE, grouped-query attention through SDPA), tested
logit for logit against transformers. Anything else falls back to transformers' own model, and
training always uses transformers' model (it needs autograd through the whole stack).

The call signature is the subset of transformers' that the chat engine and the batch decoder use:
`model(input_ids=... | inputs_embeds=..., attention_mask=None, position_ids=None, cache=KVCache,
logits_to_keep=1)`; `.logits` of the result is (B, kept, V).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from persona.model.quantize import Int8Linear

ARCHITECTURE = "LlamaForCausalLM"


def supports(config: Any) -> bool:
    """True when `config` describes a model this decoder computes exactly as transformers does."""
    architectures = getattr(config, "architectures", None) or [ARCHITECTURE]
    if getattr(config, "model_type", None) != "llama" or list(architectures) != [ARCHITECTURE]:
        return False
    if (
        getattr(config, "hidden_act", None) != "silu"
        or int(getattr(config, "pretraining_tp", 1) or 1) != 1
    ):
        return False
    return _rope_theta(config) is not None


# LlamaConfig's defaults for what a config.json may leave out
DEFAULTS: dict[str, Any] = {
    "architectures": [ARCHITECTURE],
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "num_key_value_heads": None,
    "head_dim": None,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "rope_parameters": None,
    "eos_token_id": None,
    "bos_token_id": None,
    "pad_token_id": None,
}
REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def read_config(directory: Path) -> Any | None:
    """config.json as attributes (LlamaConfig's defaults filled in) when this decoder supports it, else None.

    Read without transformers' config classes: importing them costs about two seconds.
    """
    try:
        data = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(not isinstance(data.get(key), int) for key in REQUIRED):
        return None
    config = SimpleNamespace(**{**DEFAULTS, **data})
    return config if supports(config) else None


def read_generation_settings(directory: Path, config: Any) -> Any:
    """What chat needs of generation_config.json: the end-of-sequence ids (else config.json's)."""
    try:
        data = json.loads((Path(directory) / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    eos = data.get("eos_token_id") if isinstance(data, dict) else None
    return SimpleNamespace(
        eos_token_id=eos if eos is not None else getattr(config, "eos_token_id", None)
    )


def _rope_theta(config: Any) -> float | None:
    """The RoPE base for the default (unscaled) rotary embedding; None for any other RoPE type."""
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict):
        if parameters.get("rope_type", "default") != "default" or "rope_theta" not in parameters:
            return None
        return float(parameters["rope_theta"])
    if getattr(config, "rope_scaling", None):
        return None
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


class KVCache:
    """Keys and values of every layer, grown in place (capacity doubles), cropped by length."""

    def __init__(self) -> None:
        self._keys: list[torch.Tensor] = []  # per layer (B, H_kv, capacity, d)
        self._values: list[torch.Tensor] = []
        self._length = 0

    def get_seq_length(self) -> int:
        return self._length

    @property
    def nbytes(self) -> int:
        """Bytes held, capacity included (crop keeps the buffers)."""
        return sum(t.untyped_storage().nbytes() for t in (*self._keys, *self._values))

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` positions (negative: drop that many from the end), as DynamicCache does."""
        if max_length < 0:
            max_length = self._length + max_length
        self._length = max(0, min(self._length, max_length))

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H_kv, t, d) at positions start..start+t of `layer`; return all of them so far."""
        end = start + keys.shape[2]
        if layer == len(self._keys):
            self._keys.append(keys.new_empty(*keys.shape[:2], max(end, 64), keys.shape[3]))
            self._values.append(values.new_empty(*values.shape[:2], max(end, 64), values.shape[3]))
        elif end > self._keys[layer].shape[2]:
            capacity = max(end, 2 * self._keys[layer].shape[2])
            self._keys[layer] = _grow(self._keys[layer], start, capacity)
            self._values[layer] = _grow(self._values[layer], start, capacity)
        # narrow() rather than [:, :, a:b]: one call instead of Python indexing, per call of every layer
        self._keys[layer].narrow(2, start, end - start).copy_(keys)
        self._values[layer].narrow(2, start, end - start).copy_(values)
        self._length = end
        return self._keys[layer].narrow(2, 0, end), self._values[layer].narrow(2, 0, end)


def _grow(buffer: torch.Tensor, keep: int, capacity: int) -> torch.Tensor:
    grown = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    grown[:, :, :keep] = buffer[:, :, :keep]
    return grown


@dataclass
class CausalOutput:
    logits: torch.Tensor  # (B, kept, V)


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
    """What LlamaDecoder._step reads, made by LlamaDecoder.prepare_for_decode."""

    layers: tuple[LayerPlan, ...]
    # the forward (pre-)hook dicts of every module the step does not call: the very dicts a hook
    # registered later lands in, so the step sees it and declines
    skipped_hooks: tuple[dict[Any, Any], ...]


def _plan_layer(layer: DecoderLayer) -> tuple[LayerPlan, tuple[nn.Module, ...]] | None:
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


class Body(nn.Module):
    def __init__(self, config: Any, device: Any = None) -> None:
        super().__init__()
        # an explicit weight: initialising one on the meta device would import torch._dynamo (seconds)
        self.embed_tokens = nn.Embedding(
            config.vocab_size,
            config.hidden_size,
            _weight=torch.zeros(config.vocab_size, config.hidden_size, device=device),
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, index, device) for index in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device)


class LlamaDecoder(nn.Module):
    """Inference-only LlamaForCausalLM: parameter names match transformers' (model.*, lm_head).

    device="meta" builds it without memory, for a loader that fills in the weights.
    """

    def __init__(self, config: Any, device: Any = None) -> None:
        super().__init__()
        if not supports(config):
            raise ValueError(
                f"{type(self).__name__} does not support this config ({getattr(config, 'model_type', '?')})"
            )
        self.config = config
        self.generation_config: Any = None
        self.model = Body(config, device)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device)
        head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        theta = _rope_theta(config)
        assert theta is not None  # supports() checked it
        # not a buffer: a model built on the meta device must still get real frequencies
        self.inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim)
        )
        # x @ half_turn = x.roll(d/2): rotate_half as a product, for the single-token step (see _step)
        self.half_turn = torch.eye(head_dim, device="cpu").roll(head_dim // 2, dims=1)
        self._decode_plan: DecodePlan | None = None  # see prepare_for_decode

    def prepare_for_decode(self) -> bool:
        """Plan the single-token step (see _step) over the layers as they are now; True if it applies.

        The plan holds each layer's projections, weights and shapes, so that a decode step reads
        them without nn.Module's attribute lookups; until it is made, every call takes forward's
        general path (the same numbers, more operations). The loader calls this once the model is
        loaded, quantized and fused. The plan keeps the very modules and parameters it was made
        from: whoever replaces one afterwards (assigns a layer, a projection or a Parameter, or
        runs quantize_int8) calls this again. This class's own changes do it themselves:
        fuse_int8_projections, load_state_dict and moves (to(), float(), ...). Weights changed in
        place need nothing.
        """
        layers, skipped = [], []
        for layer in self.model.layers:
            planned = _plan_layer(layer)
            if planned is None:
                self._decode_plan = None
                return False
            layers.append(planned[0])
            skipped.extend(planned[1])
        self._decode_plan = DecodePlan(
            layers=tuple(layers),
            skipped_hooks=tuple(
                hooks
                for module in skipped
                for hooks in (module._forward_pre_hooks, module._forward_hooks)
            ),
        )
        return True

    def drop_decode_plan(self) -> None:
        """Back to forward's general path for every call, until prepare_for_decode runs again."""
        self._decode_plan = None

    @property
    def prepared_for_decode(self) -> bool:
        return self._decode_plan is not None

    def fuse_int8_projections(self) -> None:
        """Fuse each layer's int8 q/k/v and gate/up projections into one kernel call each (decode
        makes 120 int8 calls per token instead of 210; the numbers are the same), then prepare the
        decode step over the layers as they now are. Fuses nothing unless the projections are all
        Int8Linear (float32 keeps its memory-mapped weights)."""
        self.drop_decode_plan()
        for layer in self.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            if attention.qkv_proj is None and all(
                type(getattr(attention, name)) is Int8Linear
                for name in ("q_proj", "k_proj", "v_proj")
            ):
                attention.fuse(Int8Linear.concatenate)
            if mlp.gate_up_proj is None and all(
                type(getattr(mlp, name)) is Int8Linear for name in ("gate_proj", "up_proj")
            ):
                mlp.fuse(Int8Linear.concatenate)
        self.prepare_for_decode()

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """nn.Module.load_state_dict; the decode plan is made again where there was one (assign=True
        puts new parameters in place of those it holds)."""
        prepared = self._decode_plan is not None
        self.drop_decode_plan()
        result = super().load_state_dict(*args, **kwargs)
        if prepared:
            self.prepare_for_decode()
        return result

    def _apply(self, fn: Any, recurse: bool = True) -> LlamaDecoder:
        # every move or cast (to(), float(), half(), cuda(), ...) goes through here; it may put new
        # parameters in place of those the decode plan holds, or make the norms other than float32
        prepared = self._decode_plan is not None
        self.drop_decode_plan()
        result = super()._apply(fn, recurse)
        if prepared:
            self.prepare_for_decode()
        return result

    def __getstate__(self) -> dict[str, Any]:
        # a copy or a pickle holds no plan (its functions close over this model's modules); the
        # copy plans its own modules when it is restored
        state = super().__getstate__()
        state["_decode_plan"] = None
        state["_prepare_on_restore"] = self._decode_plan is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        prepare = state.pop("_prepare_on_restore", False)
        super().__setstate__(state)
        if prepare:
            self.prepare_for_decode()

    def new_cache(self) -> KVCache:
        return KVCache()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.model.embed_tokens = module

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        past_key_values: KVCache | None = None,
        logits_to_keep: int = 0,
        use_cache: bool = True,
        **_: Any,
    ) -> CausalOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if cache is None and use_cache:
            cache = KVCache()
        plan = self._decode_plan
        if (
            plan is not None
            and input_ids is not None
            and attention_mask is None
            and position_ids is None
            and type(cache) is KVCache
            and input_ids.shape == (1, 1)
        ):
            logits = self._step(plan, input_ids, cache)
            if logits is not None:
                return CausalOutput(logits=logits)
        x = (
            self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        )  # (B, T, D)
        batch, length, _ = x.shape
        start = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (
                torch.arange(start, start + length).unsqueeze(0).expand(batch, -1)
            )  # (B, T)
        cos, sin = self.rotary(position_ids, x.dtype)
        mask = _attention_mask(attention_mask, batch, length, start)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache, start)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return CausalOutput(logits=self.lm_head(self.model.norm(x)))

    def rotary(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, T, 1, d) of the rotary embedding at position_ids (B, T); sin's sign folded in, see rope."""
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, d/2)
        cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1).to(dtype).unsqueeze(2)
        sin = torch.cat((-freqs.sin(), freqs.sin()), dim=-1).to(dtype).unsqueeze(2)
        return cos, sin

    def _step(
        self, plan: DecodePlan, input_ids: torch.Tensor, cache: KVCache
    ) -> torch.Tensor | None:
        """forward() for one token of one sequence (a chat decode step) from the decode plan (see
        prepare_for_decode): logits (1, 1, V), or None where a module the step skips has forward
        hooks (the caller then takes forward's general path, which calls every module).

        The same arithmetic in fewer operations, which is what a step of a small model costs on CPU
        (the int8 products are a third of it): rows (1, D) instead of (B, T, D) with their views and
        transposes; each layer's weights and projections from the plan instead of nn.Module's
        attribute lookups; the rotary embedding as one product, rotate_half(x) sin =
        x @ (half_turn * sin), a matrix with one nonzero per column, so each entry is the same single
        product as x.roll() * sin.
        """
        if any(plan.skipped_hooks) or _global_forward_hooks():
            return None  # hooks expect their module to be called: the general path calls every one
        position = cache.get_seq_length()
        x = self.model.embed_tokens(input_ids).view(1, -1)  # (1, D)
        if x.dtype != torch.float32:
            return None
        cos, sin = self.rotary(torch.tensor([[position]]), x.dtype)
        cos = cos.view(1, -1)  # (1, d)
        rotation = self.half_turn * sin.view(1, -1)  # (d, d): column j scaled by sin_j
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
        return self.lm_head(self.model.norm(x)).view(1, 1, -1)  # (1, 1, V)


def _global_forward_hooks() -> bool:
    """Whether forward hooks are registered for every module (torch.nn.modules.module.register_module_forward_hook)."""
    module = torch.nn.modules.module
    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


def _attention_mask(
    attention_mask: torch.Tensor | None, batch: int, length: int, start: int
) -> torch.Tensor | None:
    """A boolean (B, 1, T, S) mask (True = attend), or None where SDPA's own causal rule suffices.

    `attention_mask` is the (B, S) padding mask over every position so far, as transformers takes it.
    A padded query row keeps its own position, so that no row is all-masked (which gives NaN).
    """
    total = start + length
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and (length == 1 or start == 0):
        return None  # one new token sees everything; a fresh prefill is plainly causal
    queries = start + torch.arange(length)  # (T,)
    keys = torch.arange(total)  # (S,)
    causal = keys[None, :] <= queries[:, None]  # (T, S)
    if not padded:
        return causal[None, None]  # (1, 1, T, S)
    allowed = causal[None] & attention_mask[:, :total].bool()[:, None, :]  # (B, T, S)
    allowed |= (keys[None, :] == queries[:, None])[None]
    return allowed[:, None]
