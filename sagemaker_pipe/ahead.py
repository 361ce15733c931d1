"""Run a producer a few items ahead of its consumer, in a helper thread.

Inflating, reading files and writing the FIFO each release the GIL for their bulk, so a channel
whose producer and writer take turns in one thread leaves a core idle. Here the producer runs
in its own thread while the channel's thread writes what it made before.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")
_END = object()
_POLL_S = 0.1  # how often a producer with a full queue checks whether the consumer left


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def ahead(items: Iterator[T], depth: int, idle: U | None = None) -> Generator[T | U, None, None]:
    """Yield what `items` yields, produced in a helper thread at most `depth` items ahead.

    With `idle`, that is yielded first whenever the next item is not ready yet: the consumer
    learns that it is about to wait (fifo.FLUSH: send what was gathered meanwhile).

    An error in the producer is raised here, in the consumer, in order. Closing this generator
    stops the producer and waits for it, so the consumer may then close what the producer read
    from (a file descriptor must not be closed under a thread still reading it).
    """
    q: queue.Queue[object] = queue.Queue(depth)
    left = threading.Event()

    def put(item: object) -> bool:
        while not left.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, who raises it
            put(_Failed(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="ahead", daemon=True)
    worker.start()
    try:
        while True:
            if idle is None:
                item = q.get()
            else:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    yield idle
                    item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        left.set()
        worker.join()
