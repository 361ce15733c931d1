"""Units made only of small pieces (small local files, literal manifest bytes), read in bulk.

At 4 KiB a file, per-file Python work is the whole cost: a stream object, a splice and a
write per file would spend ten system calls and a dozen allocations on four kilobytes. Here
a file costs open, read and close; its bytes go straight into a batch of about a megabyte,
RecordIO framing included. The channel runs this in a helper thread, so the batch before is
written to the FIFO meanwhile.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Generator, Sequence

from sagemaker_pipe.errors import DataError
from sagemaker_pipe.fifo import BATCH
from sagemaker_pipe.plan import Unit
from sagemaker_pipe.sources import ObjectRef
from sagemaker_pipe.sources.local import SMALL, is_small, read_small
from sagemaker_pipe.transforms import MAX_RECORD, RECORDIO_MAGIC, recordio_header

_HEADER = struct.Struct("<II")
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4
_FLAGS = os.O_RDONLY | os.O_CLOEXEC
log = logging.getLogger("sagemaker_pipe")


def is_bulk(unit: Unit, files: bool) -> bool:
    """Whether every piece of the unit is literal bytes or (when `files`) a small local file."""
    return all(isinstance(p, bytes) or (files and is_small(p)) for p in unit.parts)


def batches(units: Sequence[Unit], recordio: bool, name: str,
            epoch: int) -> Generator[tuple[bytearray, int], None, None]:
    """The units' bytes in batches of about BATCH bytes, each with the units complete after it.

    A file that is not the size it was listed with is read again through `read_small`, which
    takes a grown file whole and refuses a shrunk one, naming it.
    """
    open_, read, close, pack = os.open, os.read, os.close, _HEADER.pack
    debug = log.isEnabledFor(logging.DEBUG)
    batch = bytearray()
    done = 0
    ref: ObjectRef | None = None
    try:
        for unit in units:
            for part in unit.parts:
                if isinstance(part, bytes):
                    data = part
                else:
                    ref = part
                    fd = open_(part.uri, _FLAGS)
                    try:
                        data = read(fd, SMALL + 1)
                    finally:
                        close(fd)
                    if len(data) != part.size:
                        data = read_small(part)
                    if debug:
                        log.debug("channel=%s epoch=%d object=%s bytes=%d", name, epoch, part.uri, len(data))
                n = len(data)
                if recordio:
                    batch += pack(RECORDIO_MAGIC, n) if n <= MAX_RECORD else recordio_header(n, name)
                    batch += data
                    batch += _PADS[n & 3]
                else:
                    batch += data
            done += 1
            if len(batch) >= BATCH:
                yield batch, done
                batch = bytearray()
    except OSError as e:
        where = ref.uri if ref is not None else name
        raise DataError(f"cannot read {where}: {e.strerror}") from None
    yield batch, done
