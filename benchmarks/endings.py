"""Do the starters' replies end by themselves? Everyday questions at each surface's own defaults.

    python benchmarks/endings.py [--personas falstaff hamlet] [--k 2] [--surfaces chat serve]
                                 [--repetition-penalty 1.1] [--strength 1.0] [--json FILE]

For every starter in personas/: each everyday question below is asked as the first turn of a
chat, K times (row i samples with seed + i), at the sampling values a surface uses when the user
names none (the built-in `GenerationConfig`; `persona chat` and `persona reply` share them, `persona
serve` differs only in its 1024-token limit). Prints per starter and surface: the share of replies
that end by themselves (an end-of-turn token, 95% Wilson interval), their mean and median length
in tokens beside the median of the character's real lines, and distinct-2 / distinct-3 within each
reply (averaged: a reply that loops scores low), plus the first reply of each as a sample.

With --end-probability N: first, at the end of N of the character's held-out lines (context and
real line teacher-forced), the probability that sampling at the chat's defaults draws the
end-of-turn token, with the repetition penalty covering the conversation's end-of-turn tokens (as
it did) and leaving them out (as it does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from persona.engine.batch import BatchRequest, generate_batch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig, PersonaDefaults, generation_config
from persona.engine.sampling import Sampler
from persona.model.loader import load_chat_model
from persona.prompt.softprompt import SoftPrompt
from persona.serve.schemas import Limits
from persona.style.stats import distinct_n, wilson_interval
from persona.train.spec import load_spec

PERSONAS = Path(__file__).resolve().parent.parent / "personas"
QUESTIONS = (
    "Hello! How are you today?",
    "What did you have for breakfast?",
    "What do you think of the weather?",
    "Can you recommend a good book?",
    "What is your favourite food?",
    "Do you have any advice for a job interview?",
    "What do you do on a Sunday afternoon?",
    "Tell me about your best friend.",
)
# surface -> its max_new_tokens when the user names none; the other values are GenerationConfig's
SURFACES = {
    "chat": GenerationConfig().max_new_tokens,  # persona chat and persona reply alike
    "serve": Limits().max_tokens,
}
BATCH = 8


def character_lines(spec_path: Path) -> tuple[list, list]:
    """(training examples, held-out examples) of the starter, as training splits them."""
    split = load_spec(spec_path).speaker_split()
    return split.train, split.heldout


def end_probability(engine: ChatEngine, persona: SoftPrompt, examples: list) -> dict[str, float]:
    """Mean P(end-of-turn) at the end of real lines: penalty over the end-of-turn tokens or not."""
    backend, sums = engine.backend, {"penalised": 0.0, "left out": 0.0}
    for example in examples:
        ids, _ = engine.renderer.render_example(example.context, example.reply, persona)
        end = ids[-1]  # the line's own end-of-turn token, the one to predict
        logits = backend.prefill(
            backend.new_cache(), ids[:-1], persona.embeddings, kind=persona.kind
        )
        seen = torch.tensor([ids[:-1]])  # (1, S)
        words = seen[:, ~torch.isin(seen[0], torch.tensor(sorted(engine.stop_ids)))]  # (1, S')
        for key, covered in (("penalised", seen), ("left out", words)):
            scores = Sampler(GenerationConfig()).process(logits.view(1, -1), covered)  # (1, V)
            sums[key] += float(torch.softmax(scores, dim=-1)[0, end])
    return {key: total / len(examples) for key, total in sums.items()}


def measure(
    engine: ChatEngine, persona: SoftPrompt, config: GenerationConfig, k: int
) -> dict[str, object]:
    requests = [
        BatchRequest([{"role": "user", "content": question}], persona)
        for question in QUESTIONS
        for _ in range(k)
    ]
    results, tokens, seconds = [], 0, 0.0
    for begin in range(0, len(requests), BATCH):
        chunk = requests[begin : begin + BATCH]
        seeded = dataclasses.replace(config, seed=(config.seed or 0) + begin)
        batch, taken = generate_batch(engine, chunk, seeded)
        results.extend(batch)
        tokens += sum(len(r.token_ids) for r in batch)
        seconds += taken
    ended = sum(r.finish_reason == "stop" for r in results)
    lengths = [len(r.token_ids) for r in results]
    return {
        "replies": len(results),
        "ended": ended,
        "ended_share": ended / len(results),
        "ended_interval": wilson_interval(ended, len(results)),
        "mean_tokens": statistics.mean(lengths),
        "median_tokens": statistics.median(lengths),
        "distinct2": statistics.mean(distinct_n([r.text]) for r in results),
        "distinct3": statistics.mean(distinct_n([r.text], 3) for r in results),
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "samples": [
            {"question": q, "reply": r.text} for q, r in zip(QUESTIONS, results[::k], strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--personas", nargs="*", default=None)
    parser.add_argument("--k", type=int, default=2, help="replies per question")
    parser.add_argument("--surfaces", nargs="*", default=list(SURFACES), choices=list(SURFACES))
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--strength", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto")
    parser.add_argument("--end-probability", type=int, default=0, metavar="N")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = args.personas or sorted(p.stem for p in PERSONAS.glob("*.toml"))
    engine = ChatEngine(load_chat_model(precision=args.precision))
    overrides: dict[str, object] = {"seed": args.seed}
    if args.repetition_penalty is not None:
        overrides["repetition_penalty"] = args.repetition_penalty
    if args.strength is not None:
        overrides["strength"] = args.strength
    report: dict[str, object] = {
        "overrides": overrides,
        "k": args.k,
        "precision": engine.loaded.precision,
        "personas": {},
    }
    for name in names:
        spec_path = PERSONAS / f"{name}.toml"
        spec = load_spec(spec_path)
        persona = SoftPrompt.load(spec.prompt_path())
        defaults = PersonaDefaults.from_dict(spec.defaults)  # the persona's own, as chat applies
        if spec.defaults:
            print(f"\n{name}'s own defaults: {spec.defaults}")
        train, held = character_lines(spec_path)
        real = [len(engine.renderer.encode(example.reply)) for example in [*train, *held]]
        real_median = statistics.median(real)
        print(
            f"\n{name}: real lines median {real_median:g} tokens (mean {statistics.mean(real):.0f})"
        )
        entry: dict[str, object] = {"real_median_tokens": real_median}
        if args.end_probability:
            lines = [example for example in held if example.context][: args.end_probability]
            probability = end_probability(engine, persona, lines)
            entry["end_probability"] = probability
            print(
                f"  P(end-of-turn) at the end of {len(lines)} real lines: "
                + ", ".join(f"{key} {value:.3f}" for key, value in probability.items())
            )
        if args.surfaces:
            print(
                f"  {'surface':<7} {'limit':>5} {'ended [95% CI]':<22} {'mean':>6} {'median':>6} "
                f"{'dist-2':>6} {'dist-3':>6} {'tok/s':>6}"
            )
        for surface in args.surfaces:
            limit = defaults.max_new_tokens or SURFACES[surface]
            config = generation_config(defaults, max_new_tokens=limit, **overrides)
            start = time.perf_counter()
            result = measure(engine, persona, config, args.k)
            low, high = result["ended_interval"]  # type: ignore[misc]
            shown = f"{result['ended']}/{result['replies']} [{low:.2f}, {high:.2f}]"
            print(
                f"  {surface:<7} {SURFACES[surface]:>5} {shown:<22} {result['mean_tokens']:6.1f} "
                f"{result['median_tokens']:6.1f} {result['distinct2']:6.2f} "
                f"{result['distinct3']:6.2f} {result['tokens_per_second']:6.1f}"
                f"  ({time.perf_counter() - start:.0f} s)"
            )
            entry[surface] = result
        if args.surfaces:
            sample = entry[args.surfaces[0]]["samples"][0]  # type: ignore[index]
            print(f"  sample: {sample['question']} -> {sample['reply'][:300]!r}")
        report["personas"][name] = entry  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
