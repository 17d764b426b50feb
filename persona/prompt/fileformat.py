"""Facts of our soft-prompt file, readable without torch: the tensor's key, the format's name and
version, the size bound, and the checksum the library keeps of a prompt's values.

A persona file is a single safetensors file: the (N, D) float32 tensor under `prompt_embeddings`
(the key PEFT uses) and the metadata as strings in the safetensors header.
"""

from __future__ import annotations

import hashlib

TENSOR_KEY = "prompt_embeddings"
FORMAT_NAME = "persona.softprompt"
FORMAT_VERSION = "1"
MAX_FILE_BYTES = 256 * 1024 * 1024  # a soft prompt is KBs to a few MBs; refuse anything absurd


def values_sha256(values: bytes | memoryview) -> str:
    """The checksum of a prompt: sha256 of its (N, D) float32 values as stored (little-endian,
    row-major), hex."""
    return hashlib.sha256(values).hexdigest()
