"""The label of a position with no target (PEFT's and transformers' convention), torch-free so
that rendering a conversation does not import torch."""

from __future__ import annotations

IGNORE_INDEX = -100
