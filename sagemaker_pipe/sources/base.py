"""The one small interface every transport (local folder, S3) implements.

Transports yield bytes and know nothing of gzip, RecordIO or FIFOs (smart_open-style):
`list` and `read_bytes` serve planning, `stream` serves an epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

CHUNK = 1 << 20  # read size where the data passes through Python


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


class Transport(Protocol):
    def list_objects(self, uri: str) -> list[ObjectRef]:
        """Every object under a prefix, sorted as S3 lists them; errors name the URI."""

    def read_bytes(self, uri: str) -> bytes:
        """A whole small object (a manifest)."""

    def stat(self, refs: Sequence[ObjectRef]) -> list[ObjectRef]:
        """The same refs with sizes, failing on the first that does not exist."""

    def stream(self, refs: Iterable[ObjectRef]) -> Iterator[ObjectStream]:
        """Open each ref in order; a transport may fetch ahead."""
