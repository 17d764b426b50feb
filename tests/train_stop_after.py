"""`persona train ARGS...` that stops as Ctrl-C would after STEP steps; run under accelerate launch.

    python tests/train_stop_after.py STEP train LOG --name ...

The data-parallel tests start it with 2 processes to leave a checkpoint behind mid-run.
"""

from __future__ import annotations

import sys

import persona.train.run as run
from persona.cli.main import main


def stop_after(step: int) -> None:
    real_loop = run.train_loop

    def interrupted_loop(*args, **kwargs):
        def press(done: int, loss: float) -> None:
            if done == step:
                raise KeyboardInterrupt

        return real_loop(*args, **{**kwargs, "on_step": press})

    run.train_loop = interrupted_loop


if __name__ == "__main__":
    stop_after(int(sys.argv[1]))
    raise SystemExit(main(sys.argv[2:]))
