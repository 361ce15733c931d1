"""One channel's epoch loop: wait for the reader, create the next FIFO, stream, close, repeat."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from sagemaker_pipe import sources, transforms
from sagemaker_pipe.fifo import BATCH, FifoSet, FifoWriter, ReaderGone, open_writer
from sagemaker_pipe.layout import Layout
from sagemaker_pipe.plan import ChannelPlan, Unit
from sagemaker_pipe.sources import ObjectRef, ObjectStream
from sagemaker_pipe.sources.base import Chunk
from sagemaker_pipe.sources.local import is_small, read_small

log = logging.getLogger("sagemaker_pipe")
MIN_WAIT_S = 0.005  # waits shorter than this, in all, say nothing about either side


@dataclass(frozen=True)
class EpochStats:
    """One epoch of one channel, with where the time went."""

    channel: str
    epoch: int
    objects: int
    bytes: int
    seconds: float
    blocked_s: float  # pipe full: the writer waited for the algorithm
    starved_s: float  # pipe empty: the algorithm waited for the source
    complete: bool  # False when the reader closed before the end

    @property
    def verdict(self) -> str:
        """algorithm-bound, input-bound or balanced: which side the other mostly waited for."""
        least = max(0.1 * self.seconds, MIN_WAIT_S)
        if self.starved_s >= 2 * self.blocked_s and self.starved_s >= least:
            return "input-bound"
        if self.blocked_s >= 2 * self.starved_s and self.blocked_s >= least:
            return "algorithm-bound"
        return "balanced"

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def fields(self) -> dict[str, object]:
        return {
            "channel": self.channel, "epoch": self.epoch, "objects": self.objects, "bytes": self.bytes,
            "seconds": round(self.seconds, 3), "mb_per_s": round(self.mb_per_s, 1),
            "writer_blocked_s": round(self.blocked_s, 3), "reader_starved_s": round(self.starved_s, 3),
            "verdict": self.verdict, "complete": self.complete,
        }

    def line(self) -> str:
        end = "" if self.complete else " reader=closed-early"
        return (
            f"channel={self.channel} epoch={self.epoch} objects={self.objects} bytes={self.bytes} "
            f"seconds={self.seconds:.3f} MB/s={self.mb_per_s:.1f} "
            f"writer-blocked={_share(self.blocked_s, self.seconds)} "
            f"reader-starved={_share(self.starved_s, self.seconds)} verdict={self.verdict}{end}"
        )


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "0%"


class ChannelWorker:
    """Serves `<channel>_0, _1, ...` until `epochs` are done or `stop` is set.

    `<channel>_0` is made by the sidecar before start; `<channel>_{n+1}` is made as soon as a
    reader opens `<channel>_n`, so it always exists before `_n` reaches EOF.
    """

    def __init__(self, plan: ChannelPlan, layout: Layout, fifos: FifoSet,
                 stop: threading.Event, epochs: int | None = None,
                 on_epoch: Callable[[EpochStats], None] | None = None,
                 on_open: Callable[[int, FifoWriter], None] | None = None) -> None:
        self.on_open = on_open  # a reader opened epoch n's FIFO (progress, idle exit: progress.py)
        self.plan = plan
        self.layout = layout
        self.fifos = fifos
        self.stop = stop
        self.epochs = epochs
        self.on_epoch = on_epoch
        self.name = plan.channel.name

    def run(self) -> None:
        """Raises Stopped on shutdown, DataError when an object cannot be streamed."""
        path = self.layout.fifo(self.name, 0)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            writer = open_writer(path, self.stop)
            if self.on_open is not None:
                self.on_open(epoch, writer)
            started = time.monotonic()
            has_next = self.epochs is None or epoch + 1 < self.epochs
            next_path = self.fifos.create(self.layout.fifo(self.name, epoch + 1)) if has_next else None
            try:
                objects, complete = self.stream_epoch(writer, epoch)
            finally:
                writer.close()
                self.fifos.remove(path)
            stats = EpochStats(self.name, epoch, objects, writer.written, time.monotonic() - started,
                               writer.blocked_s, writer.starved_s, complete)
            log.info(stats.line(), extra={"fields": stats.fields()})
            if self.on_epoch is not None:
                self.on_epoch(stats)
            if next_path is None:
                return
            path, epoch = next_path, epoch + 1

    def stream_epoch(self, writer: FifoWriter, epoch: int) -> tuple[int, bool]:
        """Write the epoch's units; returns (units sent, whether the reader took them all)."""
        c = self.plan.channel
        units = self.plan.epoch(epoch)
        inline = not c.gunzip  # small local files are read whole by _chunks, not opened as streams
        refs = [p for u in units for p in u.parts if isinstance(p, ObjectRef) and not (inline and is_small(p))]
        streams = sources.stream(refs)
        sent = [0]
        body = self._chunks(units, streams, epoch, sent)
        chunks = transforms.Throttle(c.throttle_mbps, self.stop).apply(body) if c.throttle_mbps else body
        try:
            writer.write_all(chunks)
            writer.flush()
        except ReaderGone:
            return sent[0], False
        finally:
            body.close()  # closes the object it was in the middle of
            streams.close()
        return sent[0], True

    def _chunks(self, units: list[Unit], streams: Iterator[ObjectStream], epoch: int,
                sent: list[int]) -> Generator[Chunk, None, None]:
        """The epoch's bytes; small pieces are gathered here, so the sink sees megabytes, not files."""
        c = self.plan.channel
        inline_files = not c.gunzip
        debug = log.isEnabledFor(logging.DEBUG)
        batch = bytearray()
        for unit in units:
            for part in unit.parts:
                if isinstance(part, bytes) or (inline_files and is_small(part)):
                    data = part if isinstance(part, bytes) else read_small(part)
                    if debug and not isinstance(part, bytes):
                        log.debug("channel=%s epoch=%d object=%s bytes=%d", c.name, epoch, part.uri, len(data))
                    if c.recordio:
                        batch += transforms.recordio_header(len(data), c.name)
                        batch += data
                        batch += transforms.recordio_padding(len(data))
                    else:
                        batch += data
                    if len(batch) >= BATCH:
                        yield batch
                        batch = bytearray()
                    continue
                if batch:
                    yield batch
                    batch = bytearray()
                stream = next(streams)
                try:
                    yield from transforms.object_chunks(stream, c.gunzip, c.recordio)
                finally:
                    stream.close()
                log.debug("channel=%s epoch=%d object=%s bytes=%d", c.name, epoch, part.uri, stream.size)
            sent[0] += 1
        if batch:
            yield batch
