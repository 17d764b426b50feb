"""The KV cache of persona's Llama decoder: keys and values of every layer, grown in place."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, grown in place, cropped by length.

    A full buffer grows by a quarter (64 positions at least), not by doubling: a prompt of L
    positions is encoded into buffers of exactly L, and the reply that follows would otherwise
    double them at its first token, so a server's row held twice what it used
    (`benchmarks/rows_memory.py`); growing by a quarter still copies each position a bounded
    number of times as a conversation grows.
    """

    def __init__(self) -> None:
        self._keys: list[torch.Tensor] = []  # per layer (B, H_kv, capacity, d)
        self._values: list[torch.Tensor] = []
        self._length = 0

    def get_seq_length(self) -> int:
        return self._length

    @property
    def nbytes(self) -> int:
        """Bytes held, capacity included (crop keeps the buffers)."""
        return sum(t.untyped_storage().nbytes() for t in (*self._keys, *self._values))

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` positions (negative: drop that many from the end), as DynamicCache does."""
        if max_length < 0:
            max_length = self._length + max_length
        self._length = max(0, min(self._length, max_length))

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s keys and values so far, (B, H_kv, length, d) each."""
        return self._keys[index][:, :, : self._length], self._values[index][:, :, : self._length]

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H_kv, t, d) at positions start..start+t of `layer`; return all of them so far."""
        end = start + keys.shape[2]
        if layer == len(self._keys):
            self._keys.append(keys.new_empty(*keys.shape[:2], max(end, 64), keys.shape[3]))
            self._values.append(values.new_empty(*values.shape[:2], max(end, 64), values.shape[3]))
        elif end > self._keys[layer].shape[2]:
            held = self._keys[layer].shape[2]
            capacity = max(end, held + max(64, held // 4))  # see the class docstring
            self._keys[layer] = _grow(self._keys[layer], start, capacity)
            self._values[layer] = _grow(self._values[layer], start, capacity)
        # narrow() rather than [:, :, a:b]: one call instead of Python indexing, per call of every layer
        self._keys[layer].narrow(2, start, end - start).copy_(keys)
        self._values[layer].narrow(2, start, end - start).copy_(values)
        self._length = end
        return self._keys[layer].narrow(2, 0, end), self._values[layer].narrow(2, 0, end)


def _grow(buffer: torch.Tensor, keep: int, capacity: int) -> torch.Tensor:
    grown = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    grown[:, :, :keep] = buffer[:, :, :keep]
    return grown
