"""sagemaker_pipe.ahead: a producer run in a helper thread, a bounded number of items ahead.

The channel relies on four promises: the items arrive in order, a producer's error reaches the
consumer after the items before it, the producer never runs more than `depth` items ahead, and
closing the consumer's generator stops the producer (and closes it, in its own thread) before
close() returns, so the caller may then close what the producer was reading.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from sagemaker_pipe.ahead import ahead

pytestmark = pytest.mark.timeout(20)


def test_items_arrive_in_order_from_another_thread():
    threads = set()

    def produce() -> Iterator[int]:
        for i in range(1000):
            threads.add(threading.get_ident())
            yield i

    assert list(ahead(produce(), 3)) == list(range(1000))
    assert threads and threading.get_ident() not in threads


def test_an_error_arrives_after_the_items_before_it():
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("broken at 3")

    got = []
    with pytest.raises(ValueError, match="broken at 3"):
        for item in ahead(produce(), 8):
            got.append(item)
    assert got == [1, 2]


@pytest.mark.parametrize("depth", [1, 4])
def test_the_producer_stays_at_most_depth_items_ahead(depth):
    produced = [0]

    def produce() -> Iterator[int]:
        for i in range(200):
            produced[0] += 1
            yield i

    leads = []
    for consumed, _ in enumerate(ahead(produce(), depth), start=1):
        threading.Event().wait(0.001)  # give the producer every chance to run ahead
        leads.append(produced[0] - consumed)
    # the queue holds `depth`; one more item may be made and be waiting to be put
    assert max(leads) <= depth + 1, max(leads)
    assert max(leads) >= depth - 1, leads  # and it does run ahead


def test_closing_early_stops_and_closes_the_producer_before_returning():
    events: list[str] = []
    release = threading.Event()

    def produce() -> Iterator[int]:
        try:
            for i in range(10_000):
                if i == 4:
                    release.set()  # the queue (depth 4) is full: the producer blocks putting this one
                yield i
        finally:
            events.append("producer closed")

    consumer = ahead(produce(), 4)
    assert next(consumer) == 0
    assert release.wait(5)
    consumer.close()
    assert events == ["producer closed"]  # done before close() returned, not some time later


def test_closing_while_the_producer_is_slow_waits_for_its_current_item():
    """The helper is never left running on a resource the caller is about to close."""
    inside = threading.Event()
    finished: list[str] = []

    def produce() -> Iterator[int]:
        yield 0
        inside.set()
        threading.Event().wait(0.3)  # a slow read
        finished.append("item 1 done")
        yield 1

    consumer = ahead(produce(), 2)
    assert next(consumer) == 0
    assert inside.wait(5)
    consumer.close()
    assert finished == ["item 1 done"]


def test_an_empty_producer():
    assert list(ahead(iter(()), 2)) == []
