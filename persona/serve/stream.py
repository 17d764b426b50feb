"""A reply on its way to an HTTP client: the runner's thread writes, the event loop reads.

`Reply` is the sink (persona.engine.contract.Sink) the HTTP layer hands to `Runner.submit`: the
runner calls `piece`, then `finish` or `error`, from its own thread; the event loop reads `pieces()`
and, once it has ended, the counts. `cancel()` (the client left) ends the request at the runner's
next step. Stop strings never reach it: the runner cuts them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from persona.errors import PersonaError

_END = object()  # the last item of a reply's stream


class ReplyStream:
    """Pieces of one reply, and its counts once it is done. Made on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self.cancelled = threading.Event()  # handed to submit: set, the runner ends the request
        self.prompt_tokens = 0  # valid once done; see docs/serving.md for what is counted
        self.completion_tokens = 0
        self.finish_reason = ""  # stop | length | cancelled
        self.done = False

    # ---- the event loop's side ------------------------------------------------------------------

    async def pieces(self) -> AsyncIterator[str]:
        """Text deltas as they come; ends when the reply does, raises what the runner failed with."""
        while True:
            item = await self._items.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, str)
            yield item

    def cancel(self) -> None:
        """The client is gone: the runner frees the row at its next step."""
        self.cancelled.set()

    # ---- the runner's side (any thread) ---------------------------------------------------------

    def piece(self, text: str) -> None:
        self._send(text)

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.finish_reason = reason
        self.done = True
        self._send(_END)

    def error(self, error: PersonaError) -> None:
        self.done = True
        self._send(error)

    def _send(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass
