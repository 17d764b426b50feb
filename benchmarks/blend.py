"""Which way of blending two personas keeps more of both styles? Falstaff and Juliet, two ways.

    python benchmarks/blend.py [--sample 16|full] [--negatives 32] [--max-new-tokens 128]
                               [--identity-tokens 48] [--precision fp32|auto|int8] [--json FILE]

The starters' prompts (personas/falstaff.safetensors, personas/juliet.safetensors) are blended as
`persona blend` does (persona.prompt.blend): interpolate with weights 0.5/0.5 (20 virtual tokens)
and concat (falstaff's rows then juliet's, 40). Each blend, each source and the bare model are
then judged by both speakers' style measures (persona.style.report.StyleJudge, docs/style.md):
Falstaff's classifier of his lines against the bare model's replies, on a seeded sample of his
held-out contexts (The Merry Wives of Windsor), and Juliet's on hers (scenes of Romeo and Juliet
the prompt never saw). Printed per prompt: the share of replies read as Falstaff and as Juliet
(95% Wilson intervals), how many of the three identity answers name each, and mean reply length
and distinct-2 on each speaker's contexts; then the measure's own check, each classifier on its
speaker's real held-out lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from persona.engine.chat import ChatEngine
from persona.model.loader import load_chat_model
from persona.prompt.blend import blend_prompts
from persona.prompt.softprompt import SoftPrompt
from persona.style.generate import NO_PROMPT, PERSONA, Condition
from persona.style.identity import IDENTITY_QUESTIONS
from persona.style.report import Answered, StyleConfig, StyleJudge, share_text
from persona.train.config import MAX_VIRTUAL_TOKENS
from persona.train.spec import PersonaSpec, load_spec

PERSONAS = Path(__file__).resolve().parent.parent / "personas"
SOURCES = ("falstaff", "juliet")


def sample_size(text: str) -> int | None:
    return None if text == "full" else int(text)


def judge_for(engine: ChatEngine, spec: PersonaSpec, config: StyleConfig, bar: tqdm) -> StyleJudge:
    """The speaker's style measure: its classifier and held-out sample, as benchmarks/style.py splits."""
    split = spec.speaker_split()
    train, held = split.train, split.heldout
    return StyleJudge(
        engine, speaker=spec.speaker, train=train, heldout=held, config=config, bar=bar
    )


def prompts_to_judge(specs: dict[str, PersonaSpec]) -> dict[str, SoftPrompt | None]:
    """The rows: the bare model (None), each source, and the two blends."""
    sources = [SoftPrompt.load(specs[name].prompt_path()) for name in SOURCES]
    blends = {
        "interpolate 0.5/0.5": blend_prompts(
            sources,
            method="interpolate",
            name="blend-interpolate",
            description="",
            max_virtual_tokens=MAX_VIRTUAL_TOKENS,
            weights=[0.5, 0.5],
        ).prompt,
        "concat": blend_prompts(
            sources,
            method="concat",
            name="blend-concat",
            description="",
            max_virtual_tokens=MAX_VIRTUAL_TOKENS,
        ).prompt,
    }
    return {"no prompt": None, **dict(zip(SOURCES, sources, strict=True)), **blends}


def print_table(
    rows: dict[str, SoftPrompt | None],
    results: dict[str, dict[str, Answered]],
    judges: dict[str, StyleJudge],
) -> None:
    first, second = (judges[name].character for name in SOURCES)
    questions = len(IDENTITY_QUESTIONS)
    print(
        f"\n| prompt | N | read as {first} | read as {second} | names {first} | names {second} "
        f"| tokens ({first[0]} / {second[0]} contexts) | distinct-2 ({first[0]} / {second[0]}) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, prompt in rows.items():
        by = [results[label][name] for name in SOURCES]
        named = [sum(answer.named for answer in got.identity) for got in by]
        print(
            f"| {label} | {prompt.num_virtual_tokens if prompt is not None else 0} "
            f"| {share_text(by[0].share)} | {share_text(by[1].share)} "
            f"| {named[0]}/{questions} | {named[1]}/{questions} "
            f"| {by[0].mean_tokens:.0f} / {by[1].mean_tokens:.0f} "
            f"| {by[0].distinct2:.2f} / {by[1].distinct2:.2f} |"
        )
    for name in SOURCES:
        judge = judges[name]
        print(
            f"\n{judge.character}: {len(judge.chosen)} of {judge.heldout_size} held-out contexts; "
            f"classifier on {judge.classifier.positives} real lines vs {judge.classifier.negatives} "
            f"bare replies; real held-out lines read as {judge.character}: "
            f"{share_text(judge.real_lines_share)} (check: high)"
        )
    for label in rows:
        answer = results[label][SOURCES[0]].identity[0]
        print(f"{label} to {answer.question!r}: {answer.answer[:100]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=sample_size, default=16, help="held-out contexts, or full")
    parser.add_argument("--negatives", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--identity-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "auto", "int8"))
    parser.add_argument("--json", type=Path, help="write every measure (samples included) here")
    args = parser.parse_args()
    config = StyleConfig(
        sample=args.sample,
        negatives=args.negatives,
        max_new_tokens=args.max_new_tokens,
        identity_tokens=args.identity_tokens,
        seed=args.seed,
    )
    specs = {name: load_spec(PERSONAS / f"{name}.toml") for name in SOURCES}
    rows = prompts_to_judge(specs)
    engine = ChatEngine(load_chat_model(precision=args.precision))
    print(f"model {engine.loaded.model_id} ({engine.loaded.precision}); {config}")
    began = time.perf_counter()
    judges: dict[str, StyleJudge] = {}
    results: dict[str, dict[str, Answered]] = {label: {} for label in rows}
    with tqdm(desc="style", unit="reply", file=sys.stderr) as bar:
        for name in SOURCES:
            judges[name] = judge_for(engine, specs[name], config, bar)
            for label, prompt in rows.items():
                condition = (
                    Condition(NO_PROMPT) if prompt is None else Condition(PERSONA, persona=prompt)
                )
                results[label][name] = judges[name].answer(engine, condition)
    print(f"{time.perf_counter() - began:.0f} s")
    print_table(rows, results, judges)
    if args.json:
        record = {
            label: {name: vars(got) for name, got in by.items()} for label, by in results.items()
        }
        args.json.write_text(json.dumps(record, indent=2, default=vars) + "\n")


if __name__ == "__main__":
    main()
