"""int8 for batched rows: the "per-row" kernel against the previous "row-by-row" one and float32, in one run.

    python benchmarks/int8_rows.py [--examples 16] [--batch 1 8 32] [--steps 5] [--threads 0]

(1) held-out NLL per reply token of every starter persona, computed as chat computes it (see
benchmarks/quantize.py): float32 (transformers' model, the reference), int8 "row-by-row" (fbgemm's
kernel once per row, the dequantised weight for a prefill) and int8 "per-row" (each row over its own
range, all rows in one kernel call: what int8 runs now); (2) the batched decode step of persona's
own decoder (NativeBackend.decode, every row with its own cache and length) at each --batch size,
float32 and both int8 kernels, in turns, best of --steps steps each; (3) the prefill of one
--prompt-tokens prompt the same way. Skip (1) with --examples 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quantize import heldout_sets, incremental_nll  # noqa: E402  (benchmarks/quantize.py)

from persona.engine.torch_backend import NativeBackend  # noqa: E402
from persona.model.loader import load_model  # noqa: E402
from persona.model.quantize import KERNELS, packing_done, set_int8_kernel  # noqa: E402
from persona.prompt.render import Renderer  # noqa: E402

PROMPT_IDS = list(range(200, 260))  # a cache of 20..26 positions per row


def nll_table(fp32, int8, examples: int) -> None:
    renderer = Renderer(fp32.tokenizer)
    print("held-out NLL per reply token with the persona (change against float32)")
    print(f"  {'persona':12s} {'tokens':>7s} {'fp32':>7s}" + "".join(f" {k:>18s}" for k in KERNELS))
    for prompt, encoded in heldout_sets(renderer, examples):
        base, tokens = incremental_nll(fp32.model, prompt, encoded)
        cells = []
        for kernel in KERNELS:
            set_int8_kernel(int8.model, kernel)
            quant, _ = incremental_nll(int8.model, prompt, encoded)
            cells.append(f"{quant:7.4f} ({(quant - base) / base:+7.2%})")
        print(
            f"  {prompt.name:12s} {tokens:7d} {base:7.4f} " + " ".join(f"{c:>18s}" for c in cells)
        )


def step_ms(backend: NativeBackend, rows: int, steps: int) -> float:
    caches = []
    for row in range(rows):
        cache = backend.new_cache()
        backend.prefill(cache, PROMPT_IDS[: 20 + row % 7])
        caches.append(cache)
    tokens = [5] * rows
    backend.decode(tokens, caches)  # warm-up
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        backend.decode(tokens, caches)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def prefill_ms(backend: NativeBackend, tokens: int, repeats: int) -> float:
    ids = [200 + index % 1000 for index in range(tokens)]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend.prefill(backend.new_cache(), ids)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16, help="held-out examples per persona")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    int8 = load_model(precision="int8", native=True)  # as chat and serve load it
    if args.examples:
        nll_table(load_model(precision="fp32"), int8, args.examples)
    native = load_model(precision="fp32", native=True)
    while not packing_done():
        time.sleep(0.1)
    print(f"batched decode step, ms (best of {args.steps}), in turns")
    with torch.inference_mode():
        for rows in args.batch:
            timings = {"fp32": step_ms(NativeBackend(native.model), rows, args.steps)}
            for kernel in KERNELS:
                set_int8_kernel(int8.model, kernel)
                timings[f"int8 {kernel}"] = step_ms(NativeBackend(int8.model), rows, args.steps)
            cells = "  ".join(f"{name} {ms:7.1f}" for name, ms in timings.items())
            ratio = timings["fp32"] / timings[f"int8 {KERNELS[0]}"]
            print(f"  {rows:3d} rows: {cells}   fp32 / int8 {KERNELS[0]}: {ratio:.2f}x")
        timings = {"fp32": prefill_ms(NativeBackend(native.model), args.prompt_tokens, args.steps)}
        for kernel in KERNELS:
            set_int8_kernel(int8.model, kernel)
            timings[f"int8 {kernel}"] = prefill_ms(
                NativeBackend(int8.model), args.prompt_tokens, args.steps
            )
        cells = "  ".join(f"{name} {ms:7.1f}" for name, ms in timings.items())
        print(f"prefill of {args.prompt_tokens} tokens, ms: {cells}")
    print(f"torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
