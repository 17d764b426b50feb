"""Is int8 good enough to be the default for chat? Held-out NLL and decode speed, fp32 vs int8.

    python benchmarks/quantize.py [--examples 48] [--tokens 48]

For every starter persona in personas/ (spec and trained prompt file), scores the same held-out
replies with the fp32 model and with the int8 model, soft prompt in front, the way chat computes
them: the context is encoded in one pass and the reply is then fed one token at a time through the
KV cache (so int8 is measured on both of its kernels: many rows, and one row per decode step).
Prints the relative NLL change, then times greedy decode for both. int8 may be the chat default
only if every persona's NLL moves by less than 1%.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from persona.dialogue.encode import encode_examples
from persona.dialogue.examples import build_examples
from persona.dialogue.sources import read_source
from persona.dialogue.split import split_by_conversation
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.engine.torch_backend import torch_backend
from persona.model.loader import load_model
from persona.prompt.inject import IGNORE_INDEX
from persona.prompt.render import Renderer
from persona.prompt.softprompt import SoftPrompt
from persona.train.spec import load_spec

PERSONAS = Path(__file__).resolve().parent.parent / "personas"


def heldout_sets(renderer: Renderer, limit: int) -> list[tuple[SoftPrompt, list]]:
    sets = []
    for spec_path in sorted(PERSONAS.glob("*.toml")):
        spec = load_spec(spec_path)
        prompt_path = spec.prompt_path()
        if prompt_path is None or not prompt_path.exists():
            continue
        prompt = SoftPrompt.load(prompt_path)
        config = spec.train_config()
        if spec.heldout:
            examples = build_examples(
                read_source(spec.heldout, base=spec.base), spec.speaker, config.context_turns
            )
        else:  # the held-out scenes of its one play, drawn as training drew them
            played = build_examples(
                read_source(spec.train, base=spec.base), spec.speaker, config.context_turns
            )
            _, examples = split_by_conversation(played, config.validation_fraction, config.seed)
        examples = [example for example in examples if example.context][:limit]
        encoded = encode_examples(
            renderer,
            examples,
            "persona",
            system=prompt.system or None,  # as the persona was trained and as chat renders it
            max_length=config.max_length,
            max_reply_tokens=config.max_reply_tokens,
        )
        sets.append((prompt, encoded))
    return sets


def incremental_nll(model, prompt: SoftPrompt, encoded: list) -> tuple[float, int]:
    """NLL per reply token, computed as chat computes it: the persona and the context in one
    prefill, then token by token through decode steps (either kind of persona: the backend puts it
    in front)."""
    total, count = 0.0, 0
    backend = torch_backend(model)
    with torch.inference_mode():
        for example in encoded:
            first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
            ids = example.input_ids
            cache = backend.new_cache()
            logits = backend.prefill(cache, ids[:first], prompt.embeddings, kind=prompt.kind)
            for position in range(first, len(ids)):
                if (
                    example.labels[position] != IGNORE_INDEX
                ):  # the label at a position is that position's token
                    total -= float(torch.log_softmax(logits.float(), dim=-1)[ids[position]])
                    count += 1
                if position + 1 < len(ids):
                    logits = backend.decode([ids[position]], [cache])[0]  # (V,): chat's step
    return total / count, count


def decode_rate(loaded, tokens: int) -> float:
    engine = ChatEngine(loaded)
    engine.stop_ids = set()
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
    engine.reply(
        [{"role": "user", "content": "Tell me a long story about a sailor."}], None, config
    )
    return engine.last.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48, help="held-out examples per persona")
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    fp32 = load_model(precision="fp32")  # transformers' LlamaForCausalLM: the reference
    int8 = load_model(precision="int8", native=True)  # as chat loads it
    renderer = Renderer(fp32.tokenizer)
    print("held-out NLL per reply token with the soft prompt")
    print(f"  {'persona':12s} {'tokens':>7s} {'fp32':>7s} {'int8':>7s} {'change':>8s}")
    worst = 0.0
    for prompt, encoded in heldout_sets(renderer, args.examples):
        base, tokens = incremental_nll(fp32.model, prompt, encoded)
        quant, _ = incremental_nll(int8.model, prompt, encoded)
        change = (quant - base) / base
        worst = max(worst, abs(change))
        print(f"  {prompt.name:12s} {tokens:7d} {base:7.4f} {quant:7.4f} {change:+8.2%}")
    print(
        f"  largest change {worst:.2%}: int8 {'qualifies' if worst < 0.01 else 'does NOT qualify'} as the chat default (< 1%)"
    )
    rates = {"fp32": [], "int8": []}
    for _ in range(2):  # alternate, so load on a shared machine hits both alike
        for name, loaded in (("fp32", fp32), ("int8", int8)):
            rates[name].append(decode_rate(loaded, args.tokens))
    best = {name: max(values) for name, values in rates.items()}
    print(
        f"decode tokens/s (best of 2): fp32 {best['fp32']:.1f}, int8 {best['int8']:.1f}, ratio {best['int8'] / best['fp32']:.2f}x"
    )
    print(f"torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
