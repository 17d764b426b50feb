"""KV cache memory of a server's rows: bytes a row holds at a given length, and how many fit in 2 GB.

    python benchmarks/rows_memory.py [--lengths 128,512,2048] [--budget-gb 2]

Loads the default model as `persona serve` does (int8, persona's own decoder), encodes a
conversation of each length into a fresh KV cache (the cache every row of the batching server
keeps) and decodes one token of the reply, and prints what the cache then holds
(`KVCache.nbytes`, capacity included: the buffers grew at that token) against what it uses (the
model's layers x 2 x KV heads x head size x 4 bytes per position), then how many rows of that
length fit in the budget. The weights are counted apart: every row shares them.
"""

from __future__ import annotations

import argparse

import torch

from persona.model.loader import load_model
from persona.model.quantize import exact_activations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="128,512,2048")
    parser.add_argument("--budget-gb", type=float, default=2.0)
    args = parser.parse_args()
    loaded = load_model(precision="int8", native=True)
    model, config = loaded.model, loaded.model.config
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    per_position = int(config.num_hidden_layers) * 2 * kv_heads * head_dim * 4
    budget = args.budget_gb * 1024**3
    print(
        f"{loaded.model_id}: {config.num_hidden_layers} layers x 2 x {kv_heads} KV heads x "
        f"{head_dim} x 4 bytes = {per_position / 1024:.1f} KiB per position (float32)"
    )
    print(f"  {'length':>7s} {'held MiB':>9s} {'used MiB':>9s} {'rows in budget':>15s}")
    generator = torch.Generator().manual_seed(0)
    for length in (int(part) for part in args.lengths.split(",")):
        ids = torch.randint(0, int(config.vocab_size), (1, length), generator=generator)
        cache = model.new_cache()
        with torch.inference_mode(), exact_activations():
            model(input_ids=ids, cache=cache, logits_to_keep=1)
        with torch.inference_mode():  # the reply's first token: the buffers grow
            model(input_ids=ids[:, :1], cache=cache, logits_to_keep=1)
        held = cache.nbytes
        print(
            f"  {length:7d} {held / 1024**2:9.1f} {length * per_position / 1024**2:9.1f}"
            f" {int(budget // held):15d}"
        )


if __name__ == "__main__":
    main()
