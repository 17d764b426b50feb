"""Mixed-persona batch throughput: B conversations with different personas in one decode, vs one at a time.

    python benchmarks/batch.py [--batch 8] [--tokens 32] [--precision fp32]

Every row has a different starter persona (cycling through those in personas/) and its own
question; the same requests are then decoded one by one. Prints generated tokens/s of both and the
ratio (target: batch 8 >= 4x batch 1), and checks that each row's greedy reply equals its solo run.
"""

from __future__ import annotations

import argparse
import time

from persona.engine.batch import BatchRequest, generate_batch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.model.loader import load_model
from persona.prompt.softprompt import SoftPrompt
from persona.starters import find_starters

QUESTIONS = [
    "What do you think of love?",
    "Where shall we dine tonight?",
    "Tell me of your father.",
    "What is honour?",
    "Why are you so sad?",
    "Who is the fairest in the land?",
    "What would you do with a crown?",
    "Is the forest a good place to live?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    args = parser.parse_args()
    loaded = load_model(precision=args.precision, native=True)  # the decoder chat and serve run
    personas = [SoftPrompt.load(starter.prompt_path) for starter in find_starters()]
    requests = [
        BatchRequest(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            personas[i % len(personas)],
        )
        for i in range(args.batch)
    ]
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=args.tokens)
    engine = ChatEngine(loaded)
    engine.stop_ids = set()  # every row generates exactly --tokens tokens, so the counts compare
    generate_batch(
        engine, requests[:1], GenerationConfig(temperature=0, max_new_tokens=2)
    )  # warm-up

    batched, batch_seconds = generate_batch(engine, requests, config)
    solo_seconds, same = 0.0, 0
    for request, row in zip(requests, batched, strict=True):
        engine = ChatEngine(loaded)
        engine.stop_ids = set()
        start = time.perf_counter()
        engine.reply(request.messages, request.persona, config)
        solo_seconds += time.perf_counter() - start
        same += engine.last.token_ids == row.token_ids
    tokens = args.tokens * len(requests)
    batch_rate, solo_rate = tokens / batch_seconds, tokens / solo_seconds
    print(
        f"mixed-persona batch, {len(requests)} rows ({len({r.persona.name for r in requests})} personas), "
        f"{args.tokens} tokens each, {loaded.precision}"
    )
    print(f"  one at a time : {solo_rate:6.1f} tokens/s ({solo_seconds:.1f} s)")
    print(
        f"  one batch     : {batch_rate:6.1f} tokens/s ({batch_seconds:.1f} s)   ratio {batch_rate / solo_rate:.2f}x (target >= 4x)"
    )
    print(f"  rows whose greedy reply equals their solo run: {same} of {len(requests)}")


if __name__ == "__main__":
    main()
