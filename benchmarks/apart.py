"""Can a reader tell the starter personas apart? Self shares among k speakers, at the chat's sampling.

    python benchmarks/apart.py [--personas falstaff juliet ...] [--answer lear ...] [--sample 24]
                               [--max-new-tokens 96] [--seeds 3] [--precision fp32|auto] [--json FILE]

One classifier (persona.style.apart) learns the real training lines of every starter compared;
then, for each starter, a seeded sample of its held-out contexts is answered with its written
prompt (the description as the system message) and with the persona, at the chat's sampling
defaults, and every reply is given to one of the k speakers. Prints each persona's self share (the
share given to its own speaker, 95% Wilson interval) beside its written prompt's and chance (1/k),
the classifier's self share on the speakers' real held-out lines (the check: high), and how many
of the identity answers, sampled at the chat's temperature with `--seeds` seeds, name the
character. The goal: every persona above its written prompt and at least twice chance; naming
3/3 for every seed. `--answer` generates for some of the compared starters only (the classifier
still tells all of them apart): a quicker look after retraining one.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from persona.dialogue.examples import Example
from persona.dialogue.split import seeded_sample
from persona.engine.chat import ChatEngine
from persona.engine.config import PersonaDefaults, generation_config
from persona.model.loader import load_chat_model
from persona.prompt.softprompt import SoftPrompt
from persona.style.apart import SpeakerClassifier, self_shares
from persona.style.data import with_context
from persona.style.generate import PERSONA, WRITTEN_PROMPT, Condition, generate_replies
from persona.style.identity import IDENTITY_QUESTIONS, character_name, names_character
from persona.style.report import share_text
from persona.train.spec import load_spec

PERSONAS = Path(__file__).resolve().parent.parent / "personas"
MAX_LINES = 2000  # real training lines per speaker the classifier learns from, at most


@dataclass
class Starter:
    name: str
    speaker: str
    persona: SoftPrompt
    description: str | None
    train: list[Example]
    heldout: list[Example]
    replies: dict[str, list[str]] = field(default_factory=dict)  # condition -> replies
    named: dict[str, list[int]] = field(default_factory=dict)  # condition -> per seed, of 3
    defaults: PersonaDefaults = field(default_factory=PersonaDefaults)  # the spec's [defaults]


def load_starter(spec_path: Path) -> Starter | None:
    spec = load_spec(spec_path)
    prompt_path = spec.prompt_path()
    if prompt_path is None or not prompt_path.exists():
        return None
    split = spec.speaker_split()
    return Starter(
        spec.name,
        spec.speaker,
        SoftPrompt.load(prompt_path),
        spec.description,
        list(split.train),
        list(split.heldout),
        defaults=PersonaDefaults.from_dict(spec.defaults),
    )


def answer(engine: ChatEngine, starter: Starter, args: argparse.Namespace) -> None:
    chosen = seeded_sample(with_context(starter.heldout, "held-out"), args.sample, args.seed)
    contexts = [example.context for example in chosen]
    conditions = [Condition(PERSONA, persona=starter.persona)]
    if starter.description:
        conditions.insert(0, Condition(WRITTEN_PROMPT, system=starter.description))
    # the chat's sampling for this character: its own defaults over the built-in ones, for the
    # written prompt too (the same sampling on both sides)
    defaults = starter.defaults
    sampling = generation_config(defaults, max_new_tokens=args.max_new_tokens, seed=args.seed)
    name = character_name(starter.speaker)
    questions = [[{"role": "user", "content": q}] for q in IDENTITY_QUESTIONS]
    for condition in conditions:
        replies = generate_replies(engine, contexts, condition, sampling, batch_size=8)
        starter.replies[condition.name] = [reply.text for reply in replies]
        starter.named[condition.name] = []
        for seed in range(args.seeds):
            config = generation_config(defaults, max_new_tokens=48, seed=1000 + seed)
            answers = generate_replies(engine, questions, condition, config, batch_size=3)
            starter.named[condition.name].append(
                sum(names_character(a.text, name) for a in answers)
            )
    starter.replies["real lines"] = [example.reply for example in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", nargs="*", help="starter names (default: every starter)")
    parser.add_argument(
        "--answer", nargs="*", help="starters whose replies are measured (default: all compared)"
    )
    parser.add_argument("--sample", type=int, default=24, help="held-out contexts per persona")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument(
        "--seeds", type=int, default=3, help="sampled identity answers per question"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "auto", "int8"))
    parser.add_argument("--json", type=Path, help="write the replies and shares here")
    args = parser.parse_args()
    began = time.perf_counter()
    engine = ChatEngine(load_chat_model(precision=args.precision))
    starters = [
        starter
        for path in sorted(PERSONAS.glob("*.toml"))
        if (starter := load_starter(path)) is not None
        and (not args.personas or starter.name in args.personas)
    ]
    classifier = SpeakerClassifier(
        {s.speaker: [e.reply for e in s.train][:MAX_LINES] for s in starters}
    )
    answered = [s for s in starters if not args.answer or s.name in args.answer]
    for starter in answered:
        answer(engine, starter, args)
    k = len(starters)
    print(
        f"model {engine.loaded.model_id} ({engine.loaded.precision}); {k} speakers, chance "
        f"{1 / k:.0%}; {args.sample} held-out contexts each, {args.max_new_tokens} tokens, "
        f"{time.perf_counter() - began:.0f} s"
    )
    print(
        f"  {'persona':<10} {'persona self share':<22} {'written prompt':<22} "
        f"{'real lines (check)':<22} named (persona / written, per seed)"
    )
    record = {}
    for starter in answered:
        shares = {
            condition: self_shares(classifier, {starter.speaker: texts})[starter.speaker]
            for condition, texts in starter.replies.items()
        }
        written = shares.get(WRITTEN_PROMPT)
        print(
            f"  {starter.name:<10} {share_text(shares[PERSONA].as_tuple()):<22} "
            f"{share_text(written.as_tuple()) if written else '-':<22} "
            f"{share_text(shares['real lines'].as_tuple()):<22} "
            f"{starter.named[PERSONA]} / {starter.named.get(WRITTEN_PROMPT, '-')}"
        )
        record[starter.name] = {
            "self_share": {c: s.as_tuple() for c, s in shares.items()},
            "named": starter.named,
            "replies": starter.replies,
        }
    if args.json:
        args.json.write_text(json.dumps({"chance": 1 / k, "personas": record}, indent=2) + "\n")


if __name__ == "__main__":
    main()
