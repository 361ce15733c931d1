"""The one small interface every transport (local folder, S3) implements.

Transports yield bytes and know nothing of gzip, RecordIO or FIFOs (smart_open-style):
`list` and `read_bytes` serve planning, `stream` serves an epoch. What they yield is in chunks.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from sagemaker_pipe.chunks import ObjectRef, ObjectStream


class Transport(Protocol):
    def list_objects(self, uri: str) -> list[ObjectRef]:
        """Every object under a prefix, sorted as S3 lists them; errors name the URI."""

    def read_bytes(self, uri: str) -> bytes:
        """A whole small object (a manifest)."""

    def stat(self, refs: Sequence[ObjectRef]) -> list[ObjectRef]:
        """The same refs with sizes, failing on the first that does not exist."""

    def stream(self, refs: Iterable[ObjectRef]) -> Iterator[ObjectStream]:
        """Open each ref in order; a transport may fetch ahead."""
