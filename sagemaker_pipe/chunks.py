"""The values that flow through the pipeline, from sources through transforms into the sink.

Sources (sources/, readers.py), transforms (transforms.py, smallfiles.py) and the FIFO sink
(fifo.py) all speak these types and depend on this module, never on one another, so each can
change or be tested alone.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from sagemaker_pipe.errors import Stopped

CHUNK = 1 << 20  # read size where the data passes through Python
BATCH = 1 << 20  # small pieces are gathered up to this before one write()
PROMPT_S = 0.02  # ... but no byte waits in a batch longer than this while more is being gathered
POLL_S = 0.1  # the longest a blocked worker goes without checking for shutdown


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


PIPE_MAX = _pipe_max()  # the largest pipe buffer an unprivileged process may ask for


@dataclass(frozen=True)
class ObjectRef:
    """One object to stream: where it is, its key relative to the channel's root, its listed size."""

    uri: str
    key: str
    size: int | None = None
    etag: str | None = None  # S3's version marker, so a resumed GET cannot splice two versions


@dataclass(frozen=True)
class FileSpan:
    """Bytes still in a file: the sink can splice them into the FIFO without copying through Python."""

    fd: int
    offset: int
    length: int
    name: str  # for the error when the file turns out shorter than its span

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class PipeSpan:
    """Bytes waiting in a pipe (a reader process's answer): spliced on, never copied through Python."""

    fd: int
    length: int
    name: str  # for the error when the pipe ends early
    moved: list[int]  # [bytes the sink took], shared with the pieces a Throttle cuts: the rest is still in the pipe

    def __len__(self) -> int:
        return self.length


Chunk = bytes | bytearray | memoryview | FileSpan  # what a source gives
SinkChunk = Chunk | PipeSpan  # what a channel gives its FIFO
FLUSH = memoryview(b"")  # not data: the source is about to wait, so the sink sends what it gathered now


class ObjectStream(Protocol):
    """An opened object. `size` is known once open, so RecordIO can write its header first."""

    ref: ObjectRef
    size: int

    def read(self, n: int = CHUNK) -> bytes:
        """Up to n bytes; b"" at the end."""

    def chunks(self) -> Iterator[Chunk]:
        """The whole object, as spans or bytes, for the plain (untransformed) path."""

    def ready(self) -> bool:
        """Whether the next read has its bytes at hand (else the channel flushes before it waits)."""

    def reopen(self) -> ObjectStream:
        """The same object from its first byte again (used when a length must be counted first)."""

    def close(self) -> None: ...


def wait_readable(fd: int, stop: threading.Event) -> None:
    """Wait until a pipe has bytes (a PipeSpan's, or its writer is gone), checking for shutdown every POLL_S."""
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    while not poll.poll(POLL_S * 1000):
        if stop.is_set():
            raise Stopped
