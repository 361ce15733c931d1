"""What happens to an object's bytes between the source and the FIFO: gunzip, then RecordIO.

Transforms see streams, never URIs or FIFOs. Every path checks that the bytes produced match
the length promised (the object's size, or the RecordIO header), so a source that shrinks or
breaks mid-object stops the job instead of yielding a short or shifted epoch.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

from sagemaker_pipe.chunks import CHUNK, FLUSH, PROMPT_S, Chunk, FileSpan, ObjectStream, PipeSpan, SinkChunk
from sagemaker_pipe.errors import DataError, Stopped

log = logging.getLogger("sagemaker_pipe")


@functools.cache
def _inflater() -> Any:
    """ISA-L's zlib-compatible inflater (about twice zlib's speed) when installed, else zlib.

    `pip install sagemaker-pipe[fast]` brings it; SAGEMAKER_PIPE_GZIP=zlib forces the fallback.
    """
    if os.environ.get("SAGEMAKER_PIPE_GZIP", "").lower() != "zlib":
        try:
            from isal import isal_zlib

            return isal_zlib
        except ImportError:
            log.info("isal is not installed: gunzipping with zlib (pip install isal for about 2x)")
    return zlib


RECORDIO_MAGIC = 0xCED7230A
MAX_RECORD = (1 << 29) - 1  # the length field has 29 bits; longer payloads would need split records
GZIP_HOLD = 64 << 20  # gunzipped RecordIO payloads up to this are held once; longer ones are inflated twice
_PAD = b"\0\0\0"
GZIP_MAGIC = b"\x1f\x8b"
GZIP_SETTING = "CompressionType: Gzip"  # named in every gunzip error: the setting that asked for it
ATTRIBUTE = "an augmented manifest attribute"  # how a RecordIO error names a piece that is no object


def recordio_header(length: int, name: str) -> bytes:
    if length > MAX_RECORD:
        raise DataError(f"{name} is {length} bytes, too large for one RecordIO record of at most {MAX_RECORD} "
                        "(RecordWrapperType: RecordIO)")
    return struct.pack("<II", RECORDIO_MAGIC, length)


def recordio_padding(length: int) -> bytes:
    return _PAD[: -length % 4]


def record(payload: bytes, name: str) -> bytes:
    """A whole RecordIO record around literal bytes (an augmented manifest's attribute)."""
    return recordio_header(len(payload), name) + payload + recordio_padding(len(payload))


def object_chunks(stream: ObjectStream, gunzip: bool, recordio: bool) -> Iterator[Chunk]:
    """The bytes one object contributes to the epoch."""
    name = stream.ref.uri
    if not gunzip:
        body = _checked(stream.chunks(), stream.size, name)
        if recordio:
            yield recordio_header(stream.size, name)
            yield from body
            yield recordio_padding(stream.size)
        else:
            yield from body
        return
    if not recordio:
        yield from inflate(stream)
        return
    held: list[bytes] = []
    length = 0
    inflated = inflate(stream)
    for piece in inflated:
        length += len(piece)
        held.append(piece)
        if length > GZIP_HOLD:  # too long to hold: count the rest, then inflate again while writing
            held.clear()
            length += sum(len(p) for p in inflated)
            break
    yield recordio_header(length, name)
    if held:
        yield from held
    else:
        again = stream.reopen()
        try:
            yield from _checked(inflate(again), length, name)
        finally:
            again.close()
    yield recordio_padding(length)


def inflate(stream: ObjectStream) -> Iterator[bytes]:
    """Gunzip as the bytes arrive, member after member, at most CHUNK bytes of output at a time.

    Like gzip(1), an empty object inflates to nothing and NUL padding after the last member is
    ignored; anything else that is not gzip stops the job naming the object.
    """
    inflater = _inflater()  # chosen on first use, so its log line goes where the CLI sends logs
    name = stream.ref.uri
    d: Any = None
    buf = b""
    while True:
        if not buf:
            buf = stream.read(CHUNK)
            if not buf:
                break
        if d is None or d.eof:
            if d is not None and not buf.strip(b"\0"):
                buf = b""
                continue
            if len(buf) >= 2 and buf[:2] != GZIP_MAGIC:
                raise DataError(f"{name} is not gzip data ({GZIP_SETTING})")
            d = inflater.decompressobj(zlib.MAX_WBITS | 16)
        try:
            out = d.decompress(buf, CHUNK)
        except inflater.error as e:
            raise DataError(f"{name} is not valid gzip data: {e} ({GZIP_SETTING})") from None
        buf = d.unused_data if d.eof else d.unconsumed_tail
        if out:
            yield out
    if d is not None and not d.eof:
        out = d.flush()  # output zlib held back under the CHUNK bound
        if out:
            yield out
        if not d.eof:
            raise DataError(f"{name} is not valid gzip data: truncated ({GZIP_SETTING})")


def _checked(chunks: Iterator[Chunk], expected: int, name: str) -> Iterator[Chunk]:
    """Pass chunks through, failing if they add up to anything but `expected` bytes."""
    total = 0
    for c in chunks:
        total += len(c)
        if total > expected:
            raise DataError(f"{name} grew while it was being streamed")
        yield c
    if total != expected:
        raise DataError(f"{name} ended after {total} of {expected} bytes (changed or cut while streaming)")


class Throttle:
    """Paces one epoch's bytes to `mbps` megabytes per second, to play a slow source (S3 from a small instance)."""

    STEP = 256 << 10  # at most; a slow rate gets pieces of PROMPT_S's worth, so bytes arrive evenly

    def __init__(self, mbps: float, stop: threading.Event) -> None:
        self.rate = mbps * 1e6
        self.step = max(1, min(self.STEP, int(self.rate * PROMPT_S)))
        self.stop = stop
        self.start = time.monotonic()
        self.sent = 0

    def apply(self, chunks: Iterator[SinkChunk]) -> Iterator[SinkChunk]:
        for c in chunks:
            if c is FLUSH:
                yield c
                continue
            for piece in _pieces(c, self.step):
                self.sent += len(piece)
                delay = self.start + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    yield FLUSH  # what the writer gathered goes out before this wait, not after
                    if self.stop.wait(delay):
                        raise Stopped
                yield piece


def _pieces(c: SinkChunk, step: int) -> Iterator[SinkChunk]:
    if isinstance(c, FileSpan):
        for off in range(0, c.length, step):
            yield FileSpan(c.fd, c.offset + off, min(step, c.length - off), c.name)
    elif isinstance(c, PipeSpan):  # a pipe gives its bytes in order: each piece is the next ones
        for off in range(0, c.length, step):
            yield PipeSpan(c.fd, min(step, c.length - off), c.name, c.moved)
    else:
        view = memoryview(c)
        for off in range(0, len(view), step):
            yield view[off : off + step]
