"""What the int8 layers' two pieces of module state pay for, on the default model's shapes.

    python benchmarks/int8_calls.py [--calls 200] [--rows 30] [--threads N]

Prints (1) one decode-step call of an int8 layer: `Int8Linear.row` (fbgemm's kernel called boxed
through the dispatcher, looked up once per process) against the same kernel called as
`torch.ops.quantized.linear_dynamic`, per call and per decode step (120 such calls in the fused
SmolLM2-135M); (2) one many-rows call (a prefill chunk): the weight dequantised into the per-thread
scratch buffer against `F.linear` on a freshly dequantised `.weight`, per call and per prefill
(120 layer calls). Each figure is the fastest of several rounds, the two cases taking turns. Both
paths compute the same numbers; the benchmark checks that too. Both pieces belong to the
"row-by-row" kernel (persona.model.quantize), which the layers are switched to here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from persona.model.quantize import GUARD, Int8Linear, require_int8, set_int8_kernel

# (out, in) of the fused decoder projections of SmolLM2-135M: qkv, o, gate_up, down
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
CALLS_PER_STEP = 120  # 30 layers x 4 projections


def per_call(
    cases: list[tuple[Callable[..., object], tuple[object, ...]]], calls: int, rounds: int = 15
) -> list[float]:
    """Seconds per call of each `function(*arguments)`: the fastest of `rounds` rounds of `calls`
    calls, the cases taking turns round by round, so that a busy machine slows them alike."""
    best = [float("inf")] * len(cases)
    for _ in range(rounds):
        for index, (function, arguments) in enumerate(cases):
            start = time.perf_counter()
            for _ in range(calls):
                function(*arguments)
            best[index] = min(best[index], (time.perf_counter() - start) / calls)
    return best


def fresh_weight_linear(layer: Int8Linear, rows: torch.Tensor) -> torch.Tensor:
    """The many-rows call without the scratch buffer: `.weight` dequantised afresh."""
    return F.linear(rows, layer.weight, layer.bias)  # (R, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="one-row calls a round")
    parser.add_argument("--rows", type=int, default=30, help="rows of a many-rows call")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    require_int8()
    torch.manual_seed(0)
    layers = [Int8Linear.from_linear(torch.nn.Linear(i, o)) for o, i in SHAPES]
    set_int8_kernel(torch.nn.Sequential(*layers), "row-by-row")
    operator = torch.ops.quantized.linear_dynamic
    boxed, plain, scratch, fresh = [], [], [], []
    with torch.inference_mode():
        for layer in layers:
            (packed,) = layer.prepack()  # one block: fewer than PACK_BLOCK_ROWS outputs
            row = torch.randn(1, layer.in_features)  # (1, in)
            rows = torch.randn(args.rows, layer.in_features)  # (R, in)
            guarded = F.pad(row, (0, len(GUARD)))  # (1, in + 2): the packed weight's width
            assert torch.equal(layer.row(row), operator(guarded, packed, False) + layer.bias)
            assert torch.equal(layer(rows), fresh_weight_linear(layer, rows))
            one, other = per_call(
                [(layer.row, (row,)), (operator, (guarded, packed, False))], args.calls
            )
            boxed.append(one)
            plain.append(other)
            one, other = per_call(
                [(layer, (rows,)), (fresh_weight_linear, (layer, rows))], args.calls // 20
            )
            scratch.append(one)
            fresh.append(other)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    mean = statistics.fmean
    print("\none row (a decode step's call), mean over the four projection shapes")
    print(f"  Int8Linear.row (boxed)     {mean(boxed) * 1e6:7.1f} us/call")
    print(f"  torch.ops operator         {mean(plain) * 1e6:7.1f} us/call")
    saved = (mean(plain) - mean(boxed)) * CALLS_PER_STEP * 1e3
    print(f"  saved per decode step      {saved:7.2f} ms ({CALLS_PER_STEP} calls)")
    print(f"\n{args.rows} rows (a prefill chunk), mean over the four projection shapes")
    print(f"  into the scratch buffer    {mean(scratch) * 1e6:7.1f} us/call")
    print(f"  fresh .weight              {mean(fresh) * 1e6:7.1f} us/call")
    saved = (mean(fresh) - mean(scratch)) * CALLS_PER_STEP * 1e3
    print(f"  saved per prefill          {saved:7.2f} ms ({CALLS_PER_STEP} calls)")


if __name__ == "__main__":
    main()
