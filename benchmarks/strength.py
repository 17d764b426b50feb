"""What does persona strength (classifier-free guidance) buy on the starters?

    python benchmarks/strength.py [--personas falstaff] [--strengths 1 1.5 2 3] [--sample 8]
                                  [--negatives 16] [--nll-sample 32] [--json FILE]

For every starter and strength S: the style share of replies to a seeded sample of held-out
contexts (the style classifier of benchmarks/style.py, built once per starter), how many of the
three identity questions the greedy answer names the character in, mean reply length in tokens,
distinct-2, tokens per second of those replies (the bare row rides along for S != 1), and the
held-out NLL of the guided distribution: per reply token of held-out lines,
-log softmax(log p_bare + S (log p_persona - log p_bare)), on transformers' float32 model.
Replies are sampled at the chat's defaults with strength S (as `persona chat --strength S`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from persona.dialogue.examples import Example
from persona.dialogue.split import seeded_sample
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.model.calling import cache_argument_name
from persona.model.loader import load_chat_model, load_model
from persona.prompt.deep import prefilled_cache
from persona.prompt.inject import prepend_prompt
from persona.prompt.render import Renderer
from persona.prompt.softprompt import SoftPrompt
from persona.style.data import with_context
from persona.style.generate import PERSONA, Condition
from persona.style.report import StyleConfig, StyleJudge, share_text
from persona.train.loss import decoder_and_head
from persona.train.spec import load_spec

PERSONAS = Path(__file__).resolve().parent.parent / "personas"
SPEED_TEST = [{"role": "user", "content": "Tell me a long story about your youth."}]


@dataclasses.dataclass
class GuidedStyle(StyleConfig):
    """The style measure's settings, its replies made at one persona strength."""

    strength: float = 1.0

    def sampling(self) -> GenerationConfig:
        return dataclasses.replace(super().sampling(), strength=self.strength)

    def greedy(self) -> GenerationConfig:
        return dataclasses.replace(super().greedy(), strength=self.strength)


def reply_log_probs(
    model: Any, persona: SoftPrompt | None, ids: list[int], replied: int
) -> torch.Tensor:
    """(replied, V) log-probabilities of the positions that predict the last `replied` ids."""
    decoder, head = decoder_and_head(model)
    tokens = torch.tensor([ids])  # (1, T)
    embeds = model.get_input_embeddings()(tokens)  # (1, T, D)
    mask = torch.ones_like(tokens)  # (1, T)
    if persona is not None and persona.kind == "deep":
        cache = prefilled_cache(model, persona.embeddings, persona.layout, 1)
        mask = torch.cat([mask.new_ones(1, persona.num_virtual_tokens), mask], dim=1)  # (1, N+T)
        hidden = decoder(
            inputs_embeds=embeds,
            attention_mask=mask,
            use_cache=True,
            **{cache_argument_name(decoder): cache},
        ).last_hidden_state  # (1, T, D)
    else:
        if persona is not None:
            embeds, mask, _ = prepend_prompt(persona.embeddings, embeds, mask, None)  # (1, N+T, D)
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    predicting = hidden[0, -replied - 1 : -1]  # (replied, D)
    return torch.log_softmax(head(predicting).float(), dim=-1)  # (replied, V)


def guided_nll(
    model: Any,
    renderer: Renderer,
    persona: SoftPrompt,
    examples: list[Example],
    strengths: list[float],
) -> dict[float, float]:
    """Held-out NLL per reply token (the end-of-turn token included) of the guided distribution."""
    totals = dict.fromkeys(strengths, 0.0)
    count = 0
    with torch.inference_mode():
        for example in examples:
            ids, labels = renderer.render_example(example.context, example.reply, persona)
            bare_ids, bare_labels = renderer.render_example(example.context, example.reply, None)
            targets = [label for label in labels if label != -100]
            assert targets == [label for label in bare_labels if label != -100]
            replied = len(targets)
            with_persona = reply_log_probs(model, persona, ids, replied)  # (R, V)
            bare = reply_log_probs(model, None, bare_ids, replied)  # (R, V)
            target = torch.tensor(targets)  # (R,)
            for strength in strengths:
                mixed = torch.log_softmax(bare + strength * (with_persona - bare), dim=-1)
                totals[strength] -= float(mixed.gather(1, target[:, None]).sum())
            count += replied
    return {strength: total / count for strength, total in totals.items()}


def measure(
    engine: ChatEngine, model: Any, name: str, strengths: list[float], args: argparse.Namespace
) -> dict[str, Any]:
    spec = load_spec(PERSONAS / f"{name}.toml")
    persona = SoftPrompt.load(spec.prompt_path())
    split = spec.speaker_split()
    train, held = split.train, split.heldout
    start = time.perf_counter()
    nll_examples = seeded_sample(with_context(held, "held-out"), args.nll_sample, 1)
    nll = guided_nll(model, engine.renderer, persona, nll_examples, strengths)
    print(
        f"  held-out NLL on {len(nll_examples)} lines: {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    style = GuidedStyle(
        sample=args.sample, negatives=args.negatives, max_new_tokens=args.max_new_tokens
    )
    judge = StyleJudge(engine, speaker=spec.speaker, train=train, heldout=held, config=style)
    rows = {}
    for strength in strengths:
        judge.config = dataclasses.replace(style, strength=strength)
        start = time.perf_counter()
        answered = judge.answer(engine, Condition(PERSONA, persona=persona))
        seconds = time.perf_counter() - start
        engine.reply(
            SPEED_TEST, persona, GenerationConfig(max_new_tokens=32, seed=0, strength=strength)
        )
        speed = engine.last.tokens_per_second  # one chat reply's decode rate, as chat shows it
        rows[strength] = {
            "share": answered.share,
            "named": sum(a.named for a in answered.identity),
            "mean_tokens": answered.mean_tokens,
            "distinct2": answered.distinct2,
            "heldout_nll": nll[strength],
            "seconds": seconds,
            "tokens_per_second": speed,
            "samples": answered.samples,
            "identity": [a.answer for a in answered.identity],
        }
        print(
            f"  S={strength:<4g} style {share_text(answered.share):<18} named "
            f"{rows[strength]['named']}/3  tokens {answered.mean_tokens:5.1f}  dist-2 "
            f"{answered.distinct2:.2f}  NLL {nll[strength]:.3f}  {speed:.1f} tok/s  {seconds:.0f} s",
            flush=True,
        )
    return {
        "real_lines_share": judge.real_lines_share,
        "real_lines_tokens": judge.real_lines_tokens,
        "sample": len(judge.chosen),
        "nll_sample": len(nll_examples),
        "strengths": {str(s): row for s, row in rows.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--personas", nargs="*", default=None)
    parser.add_argument("--strengths", nargs="*", type=float, default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--sample", type=int, default=8, help="held-out contexts answered")
    parser.add_argument("--negatives", type=int, default=16)
    parser.add_argument("--nll-sample", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = args.personas or sorted(p.stem for p in PERSONAS.glob("*.toml"))
    engine = ChatEngine(load_chat_model())
    model = load_model().model  # transformers' float32 model, for the held-out NLL
    report = {}
    for name in names:
        print(f"\n{name}", flush=True)
        report[name] = measure(engine, model, name, args.strengths, args)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else str(value)


if __name__ == "__main__":
    main()
