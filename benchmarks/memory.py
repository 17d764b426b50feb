"""Peak memory of a chat turn: a fresh process loads the default model, applies a persona and replies.

    python benchmarks/memory.py [--tokens 32]

Runs one child process per precision (fp32, int8) so each peak is its own, and prints the peak
resident set size (ru_maxrss) after the reply, plus the resident size after the imports and once
the model is ready. The model loads as chat loads it (the start's warm-up thread, persona's own decoder where it applies).
Target: the int8 chat path peaks at <= 700 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
from persona.model import warmup
warmup.begin(None, precision=sys.argv[1], backend="torch")  # as `persona chat` and `persona reply` start: before torch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.model.loader import load_chat_model
from persona.prompt.softprompt import SoftPrompt
from persona.starters import find_starters

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

imports = rss_mb()
loaded = load_chat_model(precision=sys.argv[1])  # as `persona chat` and `persona reply` load it
ready = rss_mb()
persona = SoftPrompt.load(find_starters()[0].prompt_path)
engine = ChatEngine(loaded)
engine.reply([{"role": "user", "content": "What do you think of love?"}], persona,
             GenerationConfig(temperature=0, max_new_tokens=int(sys.argv[2])))
print(json.dumps({"imports": imports, "ready": ready, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    print("chat turn in a fresh process: resident memory (MB)")
    for precision in ("fp32", "int8"):
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", CHILD, precision, str(args.tokens)],
            capture_output=True,
            text=True,
            check=True,
        )
        numbers = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  {precision}: imports {numbers['imports']:5.0f}   model ready {numbers['ready']:6.0f}   peak {numbers['peak']:6.0f}"
        )
    print("target: int8 peak <= 700 MB")


if __name__ == "__main__":
    main()
