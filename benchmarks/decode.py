"""Decode speed and time to first token: persona's engines against transformers and llama.cpp, in one run.

    python benchmarks/decode.py [--model PATH] [--tokens 64] [--turns 20]

Prints (1) decode tokens/s and time to first token, with a 20-token soft prompt, of
`model.generate(inputs_embeds=[P ; embed(ids)])` (transformers, float32: the baseline), our
engine in float32 and in int8 (the chat default), and, where llama-cpp-python is installed,
our llama.cpp backend (same soft prompt) and plain llama.cpp on the same GGUF file (no soft
prompt: llama.cpp has none); (2) time to first token at turn 1 and turn N of a growing
conversation, ours (KV cache kept across turns) vs re-encoding the whole history every turn.
Targets: engine decode >= 1.0x generate, int8 >= 0.5x plain llama.cpp, llama backend >= 0.9x plain
llama.cpp; TTFT at turn N <= 1.3x turn 1 and >= 3x faster than re-encoding at turn N.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.model import llamacpp
from persona.model.loader import load_chat_model, load_model
from persona.prompt.inject import prepend_prompt
from persona.prompt.softprompt import SoftPrompt

QUESTION = "Tell me a long story about a sailor who finds a map to a hidden island."
FOLLOW_UPS = [
    "What happened next?",
    "Who did the sailor meet there?",
    "Why was the island hidden?",
    "Describe the weather on the voyage.",
    "What did the map look like?",
    "Was there treasure?",
]


def timed_generate(model, embeds: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=model.generation_config.pad_token_id,
        )
    assert out.shape[1] == new_tokens, out.shape
    return time.perf_counter() - start


def generate_rate(loaded, prompt: SoftPrompt, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(tokens/s after the first, seconds to the first token) of transformers' model.generate."""
    messages = [{"role": "user", "content": QUESTION}]
    ids = torch.tensor([ChatEngine(loaded).renderer.render(messages, prompt)])  # (1, T)
    with torch.inference_mode():
        embeds, _, _ = prepend_prompt(
            prompt.embeddings, loaded.model.get_input_embeddings()(ids)
        )  # (1, N+T, D)
    timed_generate(loaded.model, embeds, 4)  # warm-up
    rates, firsts = [], []
    for _ in range(repeats):
        first = timed_generate(loaded.model, embeds, 1)
        total = timed_generate(loaded.model, embeds, new_tokens)
        rates.append((new_tokens - 1) / (total - first))
        firsts.append(first)
    return statistics.median(rates), statistics.median(firsts)


def engine_rate(
    loaded, prompt: SoftPrompt | None, new_tokens: int, repeats: int
) -> tuple[float, float]:
    """(tokens/s after the first, seconds to the first token) of our engine on `loaded`."""
    engine = ChatEngine(loaded)
    engine.stop_ids = set()  # decode exactly new_tokens, like min_new_tokens on the baseline
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=new_tokens)
    messages = [{"role": "user", "content": QUESTION}]
    engine.reply(messages, prompt, GenerationConfig(temperature=0, max_new_tokens=4))  # warm-up
    rates, firsts = [], []
    for _ in range(repeats):
        engine.clear_cache()
        for _piece in engine.stream(messages, prompt, config):
            pass
        assert engine.last.new_tokens == new_tokens
        rates.append(engine.last.tokens_per_second)
        firsts.append(engine.last.first_token_seconds)
    return statistics.median(rates), statistics.median(firsts)


def plain_llamacpp_rate(
    gguf: str, prompt_text: str, new_tokens: int, repeats: int
) -> tuple[float, float]:
    """llama.cpp on its own (llama-cpp-python's Llama, greedy, no soft prompt): the reference speed."""
    from llama_cpp import Llama

    llm = Llama(
        gguf,
        n_ctx=2048,
        n_threads=llamacpp.default_threads(),
        n_threads_batch=llamacpp.default_threads(),
        verbose=False,
    )
    no_eos = {llm.token_eos(): float("-inf")}
    rates, firsts = [], []
    for index in range(repeats + 1):
        llm.reset()
        start = time.perf_counter()
        stamps = [
            time.perf_counter()
            for _ in llm.create_completion(
                prompt_text, max_tokens=new_tokens, temperature=0.0, stream=True, logit_bias=no_eos
            )
        ]
        if index:  # the first round warms up
            assert len(stamps) >= new_tokens, len(
                stamps
            )  # a last chunk may only carry the finish reason
            rates.append((new_tokens - 1) / (stamps[new_tokens - 1] - stamps[0]))
            firsts.append(stamps[0] - start)
    del llm
    return statistics.median(rates), statistics.median(firsts)


def first_token_times(
    loaded, prompt: SoftPrompt, turns: int
) -> list[tuple[int, float, float, int]]:
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
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]},
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the embedded default)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-int8", dest="int8", action="store_false", help="skip the int8 engine row"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)  # transformers' model class, float32: the baseline
    generator = torch.Generator().manual_seed(0)
    vocab = loaded.model.get_input_embeddings().weight
    rows = torch.randint(0, vocab.shape[0], (20,), generator=generator)
    prompt = SoftPrompt(
        vocab[rows].detach().clone(), name="bench", fingerprint=loaded.fingerprint
    )  # (20, D)
    print(
        f"model {loaded.model_id} ({loaded.fingerprint}), torch threads {torch.get_num_threads()}"
    )

    print(f"\ndecode, {args.tokens} tokens, 20-token soft prompt, median of {args.repeats}")
    print(f"  {'':24s} {'tokens/s':>8s}  {'first token':>11s}")
    theirs, their_first = generate_rate(loaded, prompt, args.tokens, args.repeats)
    print(f"  {'transformers generate':24s} {theirs:8.1f}  {their_first:10.3f}s")
    del loaded
    chat_fp32 = load_chat_model(
        args.model, precision="fp32"
    )  # as chat loads it: persona's own decoder
    ours, our_first = engine_rate(chat_fp32, prompt, args.tokens, args.repeats)
    print(
        f"  {'persona fp32':24s} {ours:8.1f}  {our_first:10.3f}s   {ours / theirs:.2f}x generate (target >= 1.0x)"
    )
    int8_rate = 0.0
    if args.int8:
        quantized = load_chat_model(args.model, precision="int8")
        int8_rate, int8_first = engine_rate(quantized, prompt, args.tokens, args.repeats)
        del quantized
        print(
            f"  {'persona int8 (default)':24s} {int8_rate:8.1f}  {int8_first:10.3f}s   {int8_rate / theirs:.2f}x generate"
        )
    if llamacpp.available():
        backend = load_chat_model(args.model, backend="llama")
        llama_rate, llama_first = engine_rate(backend, prompt, args.tokens, args.repeats)
        prompt_text = ChatEngine(backend).prompt_text(
            [{"role": "user", "content": QUESTION}], prompt
        )
        gguf = str(backend.model.gguf)
        backend.model.close()
        del backend
        plain, plain_first = plain_llamacpp_rate(gguf, prompt_text, args.tokens, args.repeats)
        print(
            f"  {'persona llama backend':24s} {llama_rate:8.1f}  {llama_first:10.3f}s   {llama_rate / plain:.2f}x plain llama.cpp (target >= 0.9x)"
        )
        print(f"  {'plain llama.cpp':24s} {plain:8.1f}  {plain_first:10.3f}s   (no soft prompt)")
        if args.int8:
            print(f"  persona int8 / plain llama.cpp: {int8_rate / plain:.2f}x (target >= 0.5x)")
    else:
        print("  (llama-cpp-python not installed: no llama.cpp rows; pip install 'persona[llama]')")
    loaded = chat_fp32

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
