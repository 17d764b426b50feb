"""Where the model is loaded decides how fast another thread generates: decode steps on a worker thread.

    python benchmarks/threads.py [--rows 1,8] [--context 200] [--steps 8]

torch's OpenMP keeps a pool of worker threads for each thread that has run parallel work. A
server's scheduler and chat's worker generate on a thread of their own; if the thread that loaded
the model (the main thread) still holds its pool, the decode steps wait longer for their workers.
Three fresh processes, each timing the same int8 decode steps (best of `--steps`):

  main          loaded and stepped on the main thread (the reference);
  worker        loaded on the main thread, stepped on a worker thread (what persona did);
  passing       loaded by load_chat_model (on a thread that ends), stepped on a worker thread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import functools, json, sys, threading, time
sys.path.insert(0, "benchmarks")
import torch
from limits import best_seconds, one_step, rows_of
from persona.model.loader import load_chat_model, load_model
from persona.model.quantize import packing_done

mode, rows, context, steps = sys.argv[1], [int(r) for r in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4])
if mode == "passing":
    model = load_chat_model(precision="int8").model
else:
    model = load_model(precision="int8", native=True).model
while not packing_done():  # the packing thread works on the cores too; let it finish first
    time.sleep(0.05)
timings = {}

def measure():
    generator = torch.Generator().manual_seed(0)
    for count in rows:
        caches, tokens = rows_of(model, count, context, generator)
        timings[count] = best_seconds(functools.partial(one_step, model, tokens, caches), steps)

if mode == "main":
    measure()
else:
    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
print(json.dumps(timings))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    results = {}
    for mode in ("main", "worker", "passing"):
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", CHILD, mode, args.rows]
            + [str(args.context), str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print("int8 decode step, ms (best of", args.steps, "), each way in a fresh process")
    print(
        f"  {'rows':>4s} {'main':>7s} {'worker':>7s} {'passing':>8s} {'worker/main':>11s}"
        f" {'passing/main':>12s}"
    )
    for count in args.rows.split(","):
        main_ms, worker_ms, passing_ms = (results[m][count] * 1e3 for m in results)
        print(
            f"  {count:>4s} {main_ms:7.1f} {worker_ms:7.1f} {passing_ms:8.1f}"
            f" {worker_ms / main_ms:10.2f}x {passing_ms / main_ms:11.2f}x"
        )


if __name__ == "__main__":
    main()
