"""The smallest terminal the chat screen draws in; `persona chat` refuses a smaller one up front."""

from __future__ import annotations

MIN_WIDTH, MIN_HEIGHT = 40, 12  # columns, lines: below this a chat would be too squashed to read
