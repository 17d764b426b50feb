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

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from persona.model.llama_cache import KVCache
from persona.model.llama_config import (
    DEFAULTS,
    read_config,
    read_generation_settings,
    rope_theta,
    supports,
)
from persona.model.llama_layers import DecoderLayer, RMSNorm, rope
from persona.model.llama_plan import DecodePlan, decode_step, make_plan
from persona.model.quantize import Int8Linear

# the decoder is spread over llama_config (what it reads of a checkpoint), llama_cache,
# llama_layers and llama_plan (the single-token step); other modules import these names from here
__all__ = [
    "DEFAULTS",
    "CausalOutput",
    "DecoderLayer",
    "KVCache",
    "LlamaDecoder",
    "read_config",
    "read_generation_settings",
    "rope",
    "supports",
]


@dataclass
class CausalOutput:
    logits: torch.Tensor  # (B, kept, V)


class Body(nn.Module):
    def __init__(self, config: Any, device: Any = None) -> None:
        super().__init__()
        # an explicit weight: initialising one on the meta device would import torch._dynamo (seconds)
        self.embed_tokens: nn.Module = nn.Embedding(
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
        theta = rope_theta(config)
        assert theta is not None  # supports() checked it
        # not a buffer: a model built on the meta device must still get real frequencies
        self.inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim)
        )
        # x @ half_turn = x.roll(d/2): rotate_half as a product, for the single-token step (decode_step)
        self.half_turn = torch.eye(head_dim, device="cpu").roll(head_dim // 2, dims=1)
        self._decode_plan: DecodePlan | None = None  # see prepare_for_decode

    def prepare_for_decode(self) -> bool:
        """Plan the single-token step (see llama_plan.decode_step) over the layers as they are now; True if it applies.

        The plan holds each layer's projections, weights and shapes, so that a decode step reads
        them without nn.Module's attribute lookups; until it is made, every call takes forward's
        general path (the same numbers, more operations). The loader calls this once the model is
        loaded, quantized and fused. The plan keeps the very modules and parameters it was made
        from: whoever replaces one afterwards (assigns a layer, a projection or a Parameter, or
        runs quantize_int8) calls this again. This class's own changes do it themselves:
        fuse_int8_projections, load_state_dict and moves (to(), float(), ...). Weights changed in
        place need nothing.
        """
        self._decode_plan = make_plan(self.decoder_layers)
        return self._decode_plan is not None

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
        for layer in self.decoder_layers:
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

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        """The layers, as what they are (nn.ModuleList types its items as any Module)."""
        return [cast(DecoderLayer, layer) for layer in self.model.layers]

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
        **_unused: Any,
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
            logits = decode_step(self, plan, input_ids, cache)
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
    assert attention_mask is not None  # `padded` says there is one
    allowed = causal[None] & attention_mask[:, :total].bool()[:, None, :]  # (B, T, S)
    allowed |= (keys[None, :] == queries[:, None])[None]
    return allowed[:, None]
