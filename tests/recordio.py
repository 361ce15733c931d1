"""A strict RecordIO reader and writer for the tests.

Written from the format description in shared/PIPE_MODE.md section 3, independently of the
sagemaker_pipe package: each record is

    little-endian u32 magic 0xced7230a
    little-endian u32: low 29 bits = payload length, top 3 bits = continuation flag
    payload
    zero bytes up to a multiple of 4

The reader is strict: a bad magic, a non-zero flag, non-zero padding or a truncated record is an
error (the package must always write whole, unsplit records).
"""

from __future__ import annotations

import struct

MAGIC = 0xCED7230A
LENGTH_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
    pass


def encode(payload: bytes) -> bytes:
    """One whole record holding ``payload``."""
    if len(payload) > LENGTH_MASK:
        raise RecordIOError("payload too large for one record")
    pad = (-len(payload)) % 4
    return struct.pack("<II", MAGIC, len(payload)) + payload + b"\0" * pad


def decode(data: bytes) -> list[bytes]:
    """Split a whole RecordIO stream into payloads; raise RecordIOError on anything malformed."""
    records: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 8:
            raise RecordIOError(f"truncated header at offset {pos} ({end - pos} bytes left)")
        magic, word = struct.unpack_from("<II", data, pos)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic {magic:#010x} at offset {pos}")
        flag = word >> 29
        if flag != 0:
            raise RecordIOError(f"continuation flag {flag} at offset {pos} (expected whole records)")
        length = word & LENGTH_MASK
        start = pos + 8
        stop = start + length
        padded = stop + ((-length) % 4)
        if padded > end:
            raise RecordIOError(f"record at offset {pos} needs {padded - pos} bytes, {end - pos} left")
        padding = data[stop:padded]
        if padding.strip(b"\0"):
            raise RecordIOError(f"non-zero padding after record at offset {pos}")
        records.append(bytes(data[start:stop]))
        pos = padded
    return records
