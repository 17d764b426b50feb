"""Do the starter personas *read* like their speakers? The style measure on each starter.

    python benchmarks/style.py [--personas falstaff hamlet] [--sample 32|full] [--negatives 64]
                               [--max-new-tokens 128] [--identity-tokens 48]
                               [--precision fp32|auto] [--json FILE]

For every starter in personas/ (spec and trained prompt file): a style classifier learns the
speaker's training lines against the bare model's replies to training contexts; then a seeded
sample of held-out contexts (the spec's held-out play, else the validation split) is answered
with no prompt, with the written description as the system message and with the soft prompt, at
the chat's sampling defaults. Prints, per starter and condition, the share of replies the
classifier attributes to the speaker (95% Wilson interval), mean length in tokens, distinct-2 and
how many identity answers name the character; and the measure's own checks: the share on the
speaker's real held-out lines (should be high) and on the bare model's replies (should be low).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from persona.engine.chat import ChatEngine
from persona.model.loader import load_chat_model
from persona.prompt.softprompt import SoftPrompt
from persona.style.identity import IDENTITY_QUESTIONS
from persona.style.report import StyleConfig, StyleReport, measure_style, share_text
from persona.train.spec import load_spec

PERSONAS = Path(__file__).resolve().parent.parent / "personas"
SHOWN = {"no_prompt": "no prompt", "written_prompt": "written prompt", "persona": "persona"}


def sample_size(text: str) -> int | None:
    return None if text == "full" else int(text)


def measure(engine: ChatEngine, spec_path: Path, config: StyleConfig) -> StyleReport:
    spec = load_spec(spec_path)
    split = spec.speaker_split()
    train, held = split.train, split.heldout
    return measure_style(
        engine,
        SoftPrompt.load(spec.prompt_path()),
        speaker=spec.speaker,
        train=train,
        heldout=held,
        description=spec.description,
        config=config,
    )


def print_report(name: str, report: StyleReport, seconds: float) -> None:
    print(
        f"\n{name} ({report.character}): {report.sample_size} of {report.heldout_size} held-out "
        f"contexts; classifier on {report.positives} real lines vs {report.negatives} bare "
        f"replies; {seconds:.0f} s"
    )
    print(f"  {'condition':<15} {'style share [95% CI]':<22} {'tokens':>6} {'dist-2':>6}  named")
    for condition in report.conditions:
        named = report.named(condition)
        print(
            f"  {SHOWN[condition]:<15} {share_text(report.share[condition]):<22} "
            f"{report.mean_tokens[condition]:6.1f} {report.distinct2[condition]:6.2f}  "
            f"{'yes' if named else 'no'} ({named}/{len(IDENTITY_QUESTIONS)})"
        )
    print(
        f"  {'real lines':<15} {share_text(report.real_lines_share):<22} "
        f"{report.real_lines_tokens:6.1f} {report.real_lines_distinct2:6.2f}  (check: high)"
    )
    print(f"  {'bare replies':<15} {share_text(report.bare_share):<22} {'':>13}  (check: low)")
    for condition in report.conditions:
        answer = report.identity[condition][0]
        print(f"  {SHOWN[condition]} to {answer.question!r}: {answer.answer[:100]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", nargs="*", help="starter names (default: every starter)")
    parser.add_argument("--sample", type=sample_size, default=32, help="held-out contexts, or full")
    parser.add_argument("--negatives", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--identity-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "auto", "int8"))
    parser.add_argument("--json", type=Path, help="write every report (replies included) here")
    args = parser.parse_args()
    config = StyleConfig(
        sample=args.sample,
        negatives=args.negatives,
        max_new_tokens=args.max_new_tokens,
        identity_tokens=args.identity_tokens,
        seed=args.seed,
    )
    engine = ChatEngine(load_chat_model(precision=args.precision))
    print(f"model {engine.loaded.model_id} ({engine.loaded.precision}); {config}")
    reports = {}
    for spec_path in sorted(PERSONAS.glob("*.toml")):
        spec = load_spec(spec_path)
        prompt_path = spec.prompt_path()
        if prompt_path is None or not prompt_path.exists():
            continue
        if args.personas and spec.name not in args.personas:
            continue
        began = time.perf_counter()
        reports[spec.name] = measure(engine, spec_path, config)
        print_report(spec.name, reports[spec.name], time.perf_counter() - began)
    if args.json:
        args.json.write_text(
            json.dumps({name: r.to_dict() for name, r in reports.items()}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
