"""The reply's piece buffer: pushed from a worker thread, drained by the screen; nothing lost."""

from __future__ import annotations

import queue
import threading

import pytest

from persona.tui.pieces import PieceBuffer


def test_only_the_first_push_after_a_drain_asks_for_one() -> None:
    buffer = PieceBuffer()
    assert buffer.push("Arr") is True
    assert buffer.push(",") is False and buffer.push(" matey") is False
    drained = buffer.take()
    assert drained.text == "Arr, matey"
    assert buffer.push("!") is False  # the screen is still drawing: it has not reopened
    assert buffer.reopen() is True  # "!" is waiting: ask again at once
    assert buffer.take().text == "!"
    assert buffer.reopen() is False  # nothing waiting: the next push asks
    assert buffer.push("?") is True


def test_the_latest_speed_is_kept_and_zero_does_not_erase_it() -> None:
    buffer = PieceBuffer()
    buffer.push("a", 10.0)
    buffer.push("b", 0.0)
    assert buffer.take().tokens_per_second == 10.0
    buffer.push("c", 12.5)
    assert buffer.take().tokens_per_second == 12.5


def test_close_hands_over_the_rest_and_ends_the_reply() -> None:
    buffer = PieceBuffer()
    buffer.push("one ")
    assert buffer.take().text == "one "
    buffer.push("two")
    assert buffer.close().text == "two"
    assert buffer.take().text == "" and buffer.reopen() is False
    with pytest.raises(RuntimeError, match="after its reply was closed"):
        buffer.push("three")


def test_a_reply_stopped_before_any_drain_still_hands_over_every_piece() -> None:
    buffer = PieceBuffer()
    for piece in ("Once", " upon", " a"):
        buffer.push(piece)
    assert buffer.close().text == "Once upon a"  # cancelled: what came so far is kept


def test_pieces_from_a_worker_thread_arrive_complete_and_in_order() -> None:
    buffer = PieceBuffer()
    pieces = [f"<{index}>" for index in range(20_000)]
    requests: queue.Queue[bool] = queue.Queue()  # the screen's message queue
    worker_done = threading.Event()

    def worker() -> None:
        for piece in pieces:
            if buffer.push(piece, 1.0):
                requests.put(True)
        worker_done.set()

    shown: list[str] = []
    drains = 0
    thread = threading.Thread(target=worker)
    thread.start()
    while not (worker_done.is_set() and requests.empty()):
        try:
            requests.get(timeout=0.01)
        except queue.Empty:
            continue
        drains += 1
        shown.append(buffer.take().text)
        if buffer.reopen():
            requests.put(True)
    thread.join()
    shown.append(buffer.close().text)
    assert "".join(shown) == "".join(pieces)
    assert 1 <= drains < len(pieces)  # pieces gathered between drains went together
