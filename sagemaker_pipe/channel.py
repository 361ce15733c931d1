"""One channel's epoch loop: wait for the reader, create the next FIFO, stream, close, repeat."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from sagemaker_pipe import readers, smallfiles, sources, transforms
from sagemaker_pipe.ahead import ahead
from sagemaker_pipe.chunks import FLUSH, SinkChunk
from sagemaker_pipe.errors import Stopped
from sagemaker_pipe.fifo import FifoSet, FifoWriter, ReaderGone, open_writer
from sagemaker_pipe.layout import Layout
from sagemaker_pipe.plan import ChannelPlan, Unit
from sagemaker_pipe.sources import ObjectRef, ObjectStream

log = logging.getLogger("sagemaker_pipe")
MIN_EPOCH_S = 0.05  # shorter epochs are mostly start-up: their shares of waiting say nothing
AHEAD = 8  # chunks (up to a megabyte each) a helper thread may hold ready for the writer
_IDLE = object()  # from ahead(): the helper has nothing ready


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
        """Which side mostly waited for the other, in words that match the two shares printed beside it.

        input-bound: the reader was starved (>= 10% of the epoch, twice the writer's wait);
        algorithm-bound: the writer was blocked (likewise); balanced: neither waited much, or both
        alike; too-short: an epoch under MIN_EPOCH_S, where a few milliseconds of start-up would
        read as 98% starved.
        """
        if self.seconds < MIN_EPOCH_S:
            return "too-short"
        least = 0.1 * self.seconds
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
        # units read in bulk (small files, literal bytes): their pieces, and their number in that
        # table by identity (epochs reorder the same units)
        files = not plan.channel.gunzip
        self._table: list[smallfiles.Pieces] = []
        self._bulk: dict[int, int] = {}
        for u in plan.units:
            if (p := smallfiles.pieces(u, files)) is not None:
                self._bulk[id(u)] = len(self._table)
                self._table.append(p)
        self._all_bulk = len(self._bulk) == len(plan.units)  # many small files: no pass looking for streams
        self._readers = (readers.Readers(self._table, plan.channel.recordio, self.name, stop)
                         if files and readers.count() else None)  # started by the first long run

    def run(self) -> None:
        """Raises Stopped on shutdown, DataError when an object cannot be streamed."""
        try:
            self._run()
        finally:
            if self._readers is not None:
                self._readers.close()

    def _run(self) -> None:
        path = self.layout.fifo(self.name, 0)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            writer = open_writer(path, self.stop)
            try:
                if self.stop.is_set():
                    raise Stopped
                if self.on_open is not None:
                    self.on_open(epoch, writer)
                started = time.monotonic()
                has_next = self.epochs is None or epoch + 1 < self.epochs
                next_path = self.fifos.create(self.layout.fifo(self.name, epoch + 1)) if has_next else None
                objects, complete = self.stream_epoch(writer, epoch)
            except BaseException:
                # Cut short (a failed object, a stop): an EOF now would look like the epoch's end,
                # so the write end stays open until the sidecar ends (Sidecar.run decides when).
                self.fifos.hold(writer.detach())
                raise
            finally:
                self.fifos.remove(path)
            writer.close()
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
        refs = [] if self._all_bulk else [
            p for u in units if id(u) not in self._bulk for p in u.parts if isinstance(p, ObjectRef)]
        streams = sources.stream(refs)
        produced = self._chunks(units, streams, epoch)
        if c.gunzip:  # inflate in a helper thread, beside this thread's writes (inflated chunks are bytes, never spans)
            produced = _ahead(produced)
        sent = [0]
        body = _counted(produced, sent)
        chunks = transforms.Throttle(c.throttle_mbps, self.stop).apply(body) if c.throttle_mbps else body
        try:
            writer.write_all(chunks)
            writer.flush()
        except ReaderGone:
            return sent[0], False
        finally:
            body.close()
            produced.close()  # closes the object it was in the middle of
            streams.close()
        return sent[0], True

    def _chunks(self, units: list[Unit], streams: Iterator[ObjectStream],
                epoch: int) -> Generator[tuple[SinkChunk, int], None, None]:
        """The epoch's bytes, each with the count of units complete once it is written.

        Runs of units made only of small pieces go through smallfiles.batches, so the sink sees
        megabytes, not files; any other unit's objects are opened as streams.
        """
        c = self.plan.channel
        bulk = self._bulk
        done = 0
        run: list[int] = []
        for unit in units:
            number = bulk.get(id(unit))
            if number is not None:
                run.append(number)
                continue
            if run:
                yield from self._bulk_batches(run, done, epoch)
                done += len(run)
                run = []
            for part in unit.parts:
                if isinstance(part, bytes):
                    yield (transforms.record(part, transforms.ATTRIBUTE) if c.recordio else part), done
                    continue
                stream = next(streams)
                try:
                    chunks = transforms.object_chunks(stream, c.gunzip, c.recordio)
                    while True:
                        if not stream.ready():  # a wait for the network: what is gathered goes first
                            yield FLUSH, done
                        chunk = next(chunks, None)
                        if chunk is None:
                            break
                        yield chunk, done
                finally:
                    stream.close()
                log.debug("channel=%s epoch=%d object=%s bytes=%d", c.name, epoch, part.uri, stream.size)
            done += 1
        if run:
            yield from self._bulk_batches(run, done, epoch)
            done += len(run)
        yield b"", done  # carries the final count

    def _bulk_batches(self, run: list[int], done: int,
                      epoch: int) -> Generator[tuple[SinkChunk, int], None, None]:
        """A run of small-piece units (numbers in the table) in megabyte batches.

        A long run is read by reader processes (readers.py), unless each file is to be logged.
        A short one is read by a helper thread while this one writes (a gunzip channel's whole
        epoch already runs in one). Only this run goes to the helper: a stream's file spans
        must be spliced before this thread closes their file.
        """
        c = self.plan.channel
        if self._readers is not None and len(run) >= readers.MIN_UNITS and not log.isEnabledFor(logging.DEBUG):
            for chunk, k in self._readers.stream(run, epoch):
                yield chunk, done + k
            return
        batches = ((batch, done + k) for batch, k in
                   smallfiles.batches([self._table[i] for i in run], c.recordio, c.name, epoch))
        if not c.gunzip:
            batches = _ahead(batches, done)
        try:
            yield from batches
        finally:
            batches.close()  # the helper thread is done before the caller moves on


def _ahead(produced: Iterator[tuple[SinkChunk, int]], done: int = 0) -> Generator[tuple[SinkChunk, int], None, None]:
    """`produced` made in a helper thread; whenever its next chunk is not ready, FLUSH comes first
    (with the count of units complete so far, `done` before the first chunk)."""
    for item in ahead(produced, AHEAD, idle=_IDLE):
        if item is _IDLE:
            yield FLUSH, done
        else:
            yield item  # type: ignore[misc]
            done = item[1]  # type: ignore[index]


def _counted(produced: Iterator[tuple[SinkChunk, int]], sent: list[int]) -> Generator[SinkChunk, None, None]:
    """The chunks alone; `sent[0]` follows the units whose last byte went to the writer."""
    for chunk, done in produced:
        yield chunk
        sent[0] = done
