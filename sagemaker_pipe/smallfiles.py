"""Units made only of small pieces (small local files, literal manifest bytes), read in bulk.

At 4 KiB a file, per-file Python work is the whole cost: a stream object, a splice and a
write per file would spend ten system calls and a dozen allocations on four kilobytes. Here
a file costs open, read and close; its bytes go straight into a batch of about a megabyte,
RecordIO framing included. The channel runs this in a helper thread, so the batch before is
written to the FIFO meanwhile, or for a long run in reader processes (readers.py).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

from sagemaker_pipe.chunks import BATCH, PROMPT_S
from sagemaker_pipe.sources import ObjectRef
from sagemaker_pipe.sources.local import SMALL, is_small, read_small
from sagemaker_pipe.transforms import ATTRIBUTE, MAX_RECORD, RECORDIO_MAGIC, recordio_header

if TYPE_CHECKING:  # not imported at run time: reader processes (readers.py) start without config and YAML
    from sagemaker_pipe.plan import Unit

_HEADER = struct.Struct("<II")
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO put in a file's place must not block
log = logging.getLogger("sagemaker_pipe")


Piece = bytes | tuple[str, int]  # literal bytes, or a small file as (path, listed size)
Pieces = tuple[Piece, ...]  # one unit's


def pieces(unit: Unit, files: bool) -> Pieces | None:
    """The unit as pieces to read in bulk, or None if one of its parts must be streamed.

    Worked out once per job: in the per-file loop, unpacking a tuple costs less than reading
    an ObjectRef's attributes, and plain tuples are quick to hand to reader processes.
    """
    out: list[Piece] = []
    for p in unit.parts:
        if isinstance(p, bytes):
            out.append(p)
        elif files and is_small(p):
            out.append((p.uri, p.size or 0))
        else:
            return None
    return tuple(out)


def batches(units: Sequence[Pieces], recordio: bool, name: str,
            epoch: int) -> Generator[tuple[bytearray, int], None, None]:
    """The units' bytes in batches of about BATCH bytes, each with the units complete after it.

    A file that reads as anything but its listed size (at most SMALL + 1 bytes are read) is
    opened again through `read_small`, which says how it changed since it was listed.
    A batch also ends PROMPT_S after it began, so that on a slow file system the first bytes
    do not wait for a megabyte's worth of files.
    """
    open_, read, close, pack, now = os.open, os.read, os.close, _HEADER.pack, time.monotonic
    debug = log.isEnabledFor(logging.DEBUG)
    batch = bytearray()
    done = 0
    due = now() + PROMPT_S
    for unit in units:
        for piece in unit:
            if isinstance(piece, bytes):
                data = piece
            else:
                uri, size = piece
                try:
                    fd = open_(uri, _FLAGS)
                    try:
                        data = read(fd, SMALL + 1)
                    finally:
                        close(fd)
                except OSError:
                    data = None
                if data is None or len(data) != size:
                    data = read_small(ObjectRef(uri, uri, size))
                if debug:
                    log.debug("channel=%s epoch=%d object=%s bytes=%d", name, epoch, uri, len(data))
            n = len(data)
            if recordio:
                batch += pack(RECORDIO_MAGIC, n) if n <= MAX_RECORD else recordio_header(
                    n, ATTRIBUTE if piece is data else uri)
                batch += data
                batch += _PADS[n & 3]
            else:
                batch += data
        done += 1
        if len(batch) >= BATCH or now() >= due:
            yield batch, done
            batch = bytearray()
            due = now() + PROMPT_S
    yield batch, done
