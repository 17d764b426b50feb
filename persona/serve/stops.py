"""Stop strings for the server's schedulers: the engine's `StopScanner`, which every reply uses."""

from __future__ import annotations

from persona.engine.stops import StopScanner

__all__ = ["StopScanner"]
