"""How far the int8 decode step is from this machine's limits, measured here, in one run.

    python benchmarks/limits.py [--rows 1,8,32] [--context 200] [--steps 20]

Measures three ceilings of the machine: memory bandwidth (summing a 1 GiB float32 tensor),
float32 matrix-product throughput (a large square product), and int8 product throughput (the
kernel the int8 layers call, on many rows at once). Then, for a decode step of the default model
at each row count (persona's own decoder, int8, every row with `--context` positions of cache):
the bytes the step must read (int8 weights, the output projection's outlier columns, every row's
keys and values) and the multiply-adds it must do, the time each takes at the measured ceilings
(the step can be no faster than the larger of the two), and the step's measured time beside them.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from persona.model.llama_rows import decode_rows
from persona.model.loader import load_model
from persona.model.quantize import Int8Linear, exact_activations


def best_seconds(function, repeats: int) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bandwidth() -> float:
    """Bytes per second read by a sum over 1 GiB of float32."""
    data = torch.ones(256 * 1024 * 1024)
    return data.nbytes / best_seconds(lambda: data.sum(), 5)


def float32_peak() -> float:
    """Multiply-adds per second of a 2048 x 2048 float32 product."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2048**3 / best_seconds(lambda: torch.mm(a, b), 5)


def int8_peak() -> float:
    """Multiply-adds per second of the int8 kernel on 2048 rows of a 2048 x 2048 layer."""
    layer = Int8Linear.from_linear(torch.nn.Linear(2048, 2048, bias=False))
    rows = torch.randn(2048, 2048)
    with torch.inference_mode():
        return 2048**3 / best_seconds(lambda: layer.row(rows), 5)


def rows_of(
    model, count: int, context: int, generator: torch.Generator
) -> tuple[list, torch.Tensor]:
    """`count` caches of `context` random tokens each (encoded as a prompt is), and a next token
    per row: what one_step decodes."""
    vocab = int(model.config.vocab_size)
    caches = []
    for _ in range(count):
        cache = model.new_cache()
        ids = torch.randint(0, vocab, (1, context), generator=generator)
        with torch.inference_mode(), exact_activations():
            model(input_ids=ids, cache=cache, logits_to_keep=1)
        caches.append(cache)
    return caches, torch.randint(0, vocab, (count,), generator=generator)


def one_step(model, tokens: torch.Tensor, caches: list) -> None:
    """One decode step of every row (chat's single-row step for one row), then undone."""
    with torch.inference_mode():
        if len(caches) == 1:
            model(input_ids=tokens.view(1, 1), cache=caches[0])
        else:
            decode_rows(model, tokens, caches)
    for cache in caches:
        cache.crop(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8,32")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    read, fp32, int8 = bandwidth(), float32_peak(), int8_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"  memory read bandwidth   {read / 1e9:7.1f} GB/s")
    print(f"  float32 product         {fp32 / 1e9:7.1f} G multiply-adds/s")
    print(f"  int8 product (kernel)   {int8 / 1e9:7.1f} G multiply-adds/s")
    loaded = load_model(precision="int8", native=True)
    model = loaded.model
    layers = [m for m in model.modules() if type(m) is Int8Linear]
    weight_bytes = sum(m.out_features * m.in_features for m in layers)  # int8: a byte each
    weight_bytes += sum(m.outlier_weight.nbytes for m in layers if m.outlier_weight is not None)
    macs_per_row = sum(m.out_features * m.in_features for m in layers)
    config = model.config
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(config.hidden_size) // int(config.num_attention_heads)
    kv_per_position = int(config.num_hidden_layers) * 2 * kv_heads * head_dim * 4
    attention_macs = int(config.num_hidden_layers) * 2 * int(config.num_attention_heads) * head_dim
    print(
        f"\n{loaded.model_id}: {weight_bytes / 1e6:.1f} MB of weights read per step, "
        f"{macs_per_row / 1e6:.1f} M multiply-adds per row in the products, "
        f"{kv_per_position / 1024:.1f} KiB of keys and values per position"
    )
    print(
        f"  {'rows':>4s} {'MB read':>8s} {'read ms':>8s} {'G MACs':>7s} {'MAC ms':>7s}"
        f" {'bound ms':>8s} {'step ms':>8s} {'of bound':>8s}"
    )
    generator = torch.Generator().manual_seed(0)
    for count in (int(part) for part in args.rows.split(",")):
        caches, tokens = rows_of(model, count, args.context, generator)

        measured = best_seconds(functools.partial(one_step, model, tokens, caches), args.steps)
        nbytes = weight_bytes + count * (args.context + 1) * kv_per_position
        macs = count * (macs_per_row + (args.context + 1) * attention_macs)
        read_s, mac_s = nbytes / read, macs / int8
        bound = max(read_s, mac_s)
        print(
            f"  {count:4d} {nbytes / 1e6:8.1f} {read_s * 1e3:8.2f} {macs / 1e9:7.2f}"
            f" {mac_s * 1e3:7.2f} {bound * 1e3:8.2f} {measured * 1e3:8.2f} {bound / measured:7.0%}"
        )
    print("bound: the larger of the read time and the multiply-add time at the measured ceilings")


if __name__ == "__main__":
    main()
