"""Mixed-persona batches: several conversations, each with its own soft prompt, decoded together.

Every row is `[left padding ; P_row ; rendered conversation]`; padding is masked out and position
ids start at 0 where each row's real content starts, so each row computes what it would alone.
One forward pass per step advances every row: what a server for many users needs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.engine.sampling import Sampler
from persona.errors import ConfigError
from persona.model.llama import new_cache
from persona.prompt.render import Message
from persona.prompt.softprompt import SoftPrompt


@dataclass
class BatchRequest:
    messages: Sequence[Message]
    persona: SoftPrompt | None = None
    system: str | None = None


@dataclass
class BatchResult:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # stop | length


def generate_batch(
    engine: ChatEngine, requests: Sequence[BatchRequest], config: GenerationConfig | None = None
) -> tuple[list[BatchResult], float]:
    """Reply to every request in one batched decode; returns the results and the seconds taken."""
    config = config or GenerationConfig()
    if not requests:
        raise ConfigError("the batch is empty; pass at least one conversation")
    model = engine.model
    embed = model.get_input_embeddings()
    start = time.perf_counter()
    rows: list[torch.Tensor] = []
    histories: list[list[int]] = []
    for request in requests:
        if request.persona is not None:
            request.persona.check_fits(engine.loaded.fingerprint)
        ids = engine.renderer.render(request.messages, request.persona, system=request.system)
        histories.append(ids)
        with torch.inference_mode():
            tokens = embed(torch.tensor(ids))  # (T_i, D)
        prompt = (
            request.persona.embeddings if request.persona is not None else tokens[:0]
        )  # (N_i, D)
        rows.append(torch.cat([prompt.to(tokens.dtype), tokens], dim=0))  # (N_i + T_i, D)
    width = max(row.shape[0] for row in rows)
    batch, hidden = len(rows), rows[0].shape[1]
    embeds = torch.zeros(batch, width, hidden)  # (B, L, D), left-padded
    mask = torch.zeros(batch, width, dtype=torch.long)  # (B, L)
    for index, row in enumerate(rows):
        embeds[index, width - row.shape[0] :] = row
        mask[index, width - row.shape[0] :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L) 0 where each row's content starts

    samplers = [Sampler(config) for _ in requests]
    if config.seed is not None:
        for offset, sampler in enumerate(samplers):
            sampler.generator.manual_seed(config.seed + offset)
    seen = [torch.tensor([ids]) for ids in histories]  # each (1, T_i) for the repetition penalty
    results = [BatchResult(text="") for _ in requests]
    alive = [True] * batch
    cache_arg = {engine.cache_arg: new_cache(model)}
    with torch.inference_mode():
        out = model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **cache_arg,
        )
        for step in range(config.max_new_tokens):
            logits = out.logits[:, -1, :]  # (B, V)
            next_tokens = []
            for index in range(batch):
                token = engine.tokenizer.pad_token_id or 0
                if alive[index]:
                    token = samplers[index].next_token(logits[index : index + 1], seen[index])
                    if token in engine.stop_ids:
                        alive[index] = False
                        results[index].finish_reason = "stop"
                    else:
                        results[index].token_ids.append(token)
                        seen[index] = torch.cat(
                            [seen[index], seen[index].new_tensor([[token]])], dim=1
                        )
                next_tokens.append(token)
            if not any(alive) or step + 1 == config.max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)  # (B, L+s+1)
            positions = positions[:, -1:] + 1  # (B, 1)
            out = model(
                input_ids=torch.tensor(next_tokens).unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **cache_arg,
            )
    for result in results:
        result.text = engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    return results, time.perf_counter() - start
