"""The keys of the library's settings table that persona itself reads and writes."""

from __future__ import annotations

DEFAULT_PERSONA_KEY = "default_persona"  # the persona a chat opens with when none is named
