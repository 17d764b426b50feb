"""Decode speed and time to first token: persona's engine against plain transformers, in one run.

    python benchmarks/decode.py [--model PATH] [--tokens 64] [--turns 20]

Prints (1) decode tokens/s of our streaming engine with a 20-token soft prompt vs
`model.generate(inputs_embeds=[P ; embed(ids)])` on the same model and prompt (float32 both), and
our engine on the int8 model chat uses by default, and (2) time to first
token at turn 1 and turn N of a growing conversation, ours (KV cache kept across turns) vs
re-encoding the whole history every turn. Targets: decode >= 1.0x generate; TTFT at turn N
<= 1.3x turn 1 and >= 3x faster than re-encoding at turn N.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.model.loader import load_model
from persona.prompt.inject import prepend_prompt
from persona.prompt.softprompt import SoftPrompt

QUESTION = "Tell me a long story about a sailor who finds a map to a hidden island."
FOLLOW_UPS = [
    "What happened next?", "Who did the sailor meet there?", "Why was the island hidden?",
    "Describe the weather on the voyage.", "What did the map look like?", "Was there treasure?",
]


def timed_generate(model, embeds: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=model.generation_config.pad_token_id,
        )
    assert out.shape[1] == new_tokens, out.shape
    return time.perf_counter() - start


def decode_rates(loaded, prompt: SoftPrompt, new_tokens: int, repeats: int) -> tuple[float, float]:
    engine = ChatEngine(loaded)
    engine.stop_ids = set()  # decode exactly new_tokens, like min_new_tokens on the baseline
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=new_tokens)
    messages = [{"role": "user", "content": QUESTION}]
    ids = torch.tensor([engine.renderer.render(messages, prompt)])  # (1, T)
    with torch.inference_mode():
        embeds, _, _ = prepend_prompt(prompt.embeddings, loaded.model.get_input_embeddings()(ids))  # (1, N+T, D)
    ours, theirs = [], []
    timed_generate(loaded.model, embeds, 4)  # warm-up
    for _ in range(repeats):
        engine.clear_cache()
        for _piece in engine.stream(messages, prompt, config):
            pass
        assert engine.last.new_tokens == new_tokens
        ours.append(engine.last.tokens_per_second)
        first = timed_generate(loaded.model, embeds, 1)
        total = timed_generate(loaded.model, embeds, new_tokens)
        theirs.append((new_tokens - 1) / (total - first))
    return statistics.median(ours), statistics.median(theirs)


def first_token_times(loaded, prompt: SoftPrompt, turns: int) -> list[tuple[int, float, float, int]]:
    cached = ChatEngine(loaded)
    fresh_config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=1)
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
    messages = [{"role": "user", "content": QUESTION}]
    rows = []
    for turn in range(1, turns + 1):
        reply = cached.reply(messages, prompt, config)
        ours = cached.last.first_token_seconds
        tokens = cached.last.prompt_tokens
        reencode = ChatEngine(loaded)  # no cache: the whole history runs again
        reencode.reply(messages, prompt, fresh_config)
        rows.append((turn, ours, reencode.last.first_token_seconds, tokens))
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]}]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the embedded default)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 engine row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    generator = torch.Generator().manual_seed(0)
    vocab = loaded.model.get_input_embeddings().weight
    rows = torch.randint(0, vocab.shape[0], (20,), generator=generator)
    prompt = SoftPrompt(vocab[rows].detach().clone(), name="bench", fingerprint=loaded.fingerprint)  # (20, D)
    print(f"model {loaded.model_id} ({loaded.fingerprint}), torch threads {torch.get_num_threads()}")

    ours, theirs = decode_rates(loaded, prompt, args.tokens, args.repeats)
    print(f"\ndecode, {args.tokens} tokens, 20-token soft prompt, median of {args.repeats}")
    print(f"  model.generate : {theirs:6.1f} tokens/s")
    print(f"  persona engine : {ours:6.1f} tokens/s   ratio {ours / theirs:.2f}x (target >= 1.0x)")
    if args.int8:
        quantized = load_model(args.model, precision="int8")
        int8_rate, _ = decode_rates(quantized, prompt, args.tokens, args.repeats)
        del quantized
        print(f"  persona int8   : {int8_rate:6.1f} tokens/s   ratio {int8_rate / theirs:.2f}x (the chat default)")

    rows = first_token_times(loaded, prompt, args.turns)
    print(f"\ntime to first token over a growing conversation ({args.turns} turns)")
    print("  turn  history_tokens  ours_s  reencode_s")
    for turn, ours_s, reencode_s, tokens in rows:
        if turn in (1, 2, 5, 10, 15, args.turns):
            print(f"  {turn:4d}  {tokens:14d}  {ours_s:6.3f}  {reencode_s:10.3f}")
    first, last = rows[0], rows[-1]
    print(f"  turn {args.turns} / turn 1 (ours): {last[1] / first[1]:.2f}x (target <= 1.3x)")
    print(f"  re-encode / ours at turn {args.turns}: {last[2] / last[1]:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
