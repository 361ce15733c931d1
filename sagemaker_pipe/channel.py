"""One channel's epoch loop: wait for the reader, create the next FIFO, stream, close, repeat."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sagemaker_pipe import sources, transforms
from sagemaker_pipe.fifo import FifoSet, FifoWriter, ReaderGone, open_writer
from sagemaker_pipe.layout import Layout
from sagemaker_pipe.plan import ChannelPlan
from sagemaker_pipe.sources import ObjectRef

log = logging.getLogger("sagemaker_pipe")


@dataclass(frozen=True)
class EpochStats:
    channel: str
    epoch: int
    objects: int
    bytes: int
    seconds: float
    complete: bool  # False when the reader closed before the end

    def line(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        end = "" if self.complete else " reader=closed-early"
        return (
            f"channel={self.channel} epoch={self.epoch} objects={self.objects} bytes={self.bytes} "
            f"seconds={self.seconds:.3f} MB/s={rate:.1f}{end}"
        )


class ChannelWorker:
    """Serves `<channel>_0, _1, ...` until `epochs` are done or `stop` is set.

    `<channel>_0` is made by the sidecar before start; `<channel>_{n+1}` is made as soon as a
    reader opens `<channel>_n`, so it always exists before `_n` reaches EOF.
    """

    def __init__(self, plan: ChannelPlan, layout: Layout, fifos: FifoSet,
                 stop: threading.Event, epochs: int | None = None) -> None:
        self.plan = plan
        self.layout = layout
        self.fifos = fifos
        self.stop = stop
        self.epochs = epochs
        self.name = plan.channel.name

    def run(self) -> None:
        """Raises Stopped on shutdown, DataError when an object cannot be streamed."""
        path = self.layout.fifo(self.name, 0)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            writer = open_writer(path, self.stop)
            started = time.monotonic()
            has_next = self.epochs is None or epoch + 1 < self.epochs
            next_path = self.fifos.create(self.layout.fifo(self.name, epoch + 1)) if has_next else None
            try:
                objects, complete = self.stream_epoch(writer, epoch)
            finally:
                writer.close()
                self.fifos.remove(path)
            log.info(EpochStats(self.name, epoch, objects, writer.written,
                                time.monotonic() - started, complete).line())
            if next_path is None:
                return
            path, epoch = next_path, epoch + 1

    def stream_epoch(self, writer: FifoWriter, epoch: int) -> tuple[int, bool]:
        """Write the epoch's units; returns (units written, whether the reader took them all)."""
        c = self.plan.channel
        units = self.plan.epoch(epoch)
        streams = sources.stream([p for u in units for p in u.parts if isinstance(p, ObjectRef)])
        done = 0
        try:
            for unit in units:
                for part in unit.parts:
                    if isinstance(part, bytes):
                        writer.write_all([transforms.record(part, c.name) if c.recordio else part])
                        continue
                    stream = next(streams)
                    try:
                        writer.write_all(transforms.object_chunks(stream, c.gunzip, c.recordio))
                    finally:
                        stream.close()
                    log.debug("channel=%s epoch=%d object=%s bytes=%d", c.name, epoch, part.uri, stream.size)
                done += 1
            writer.flush()
        except ReaderGone:
            return done, False
        finally:
            streams.close()
        return done, True
