"""Test data, made fresh by every run (deterministic seeds), so results never depend on stray files.

Bulk content is cut from one random block: the plain paths never look at the bytes, and
writing 2 GiB this way costs a memcpy, not 2 GiB of os.urandom.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

from common import MIB


def random_block(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def write_sized_files(folder: Path, sizes: list[int], block: bytes) -> list[Path]:
    """Files of the given sizes, each a slice of `block` (which must be at least as long as the largest)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    view = memoryview(block)
    for i, size in enumerate(sizes):
        p = folder / f"part-{i:05d}.bin"
        with open(p, "wb") as f:
            f.write(view[(i * 4096) % (len(block) - size + 1):][:size])
        paths.append(p)
    return paths


def local_sizes(total: int, low: int, high: int, seed: int = 5) -> list[int]:
    """File sizes between low and high (MiB-aligned) that add up to about `total`."""
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(rng.randrange(low // MIB, high // MIB + 1) * MIB)
    return sizes


def write_small_files(folder: Path, count: int, size: int, per_folder: int = 1000) -> list[Path]:
    """`count` files of `size` bytes, `per_folder` to a sub-folder (as a sharded dataset would be laid out)."""
    block = random_block(4 * MIB, seed=2)
    paths = []
    for i in range(count):
        sub = folder / f"{i // per_folder:04d}"
        if i % per_folder == 0:
            sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"{i:07d}.bin"
        off = (i * size) % (len(block) - size)
        with open(p, "wb") as f:
            f.write(block[off:off + size])
        paths.append(p)
    return paths


def csv_block(size: int, seed: int) -> bytes:
    """CSV-like training rows (ids, categories, floats): compresses about 3-4x, like real tabular data."""
    rng = random.Random(seed)
    cats = ["electronics", "books", "garden", "toys", "grocery", "sports", "beauty", "auto"]
    rows: list[str] = []
    n = 0
    i = 0
    while n < size:
        row = (f"{i},{rng.randrange(1_000_000)},{rng.choice(cats)},{rng.random():.4f},"
               f"{rng.randrange(5) + 1},{1_600_000_000 + rng.randrange(50_000_000)}\n")
        rows.append(row)
        n += len(row)
        i += 1
    return "".join(rows).encode()[:size]


def gzip_member(data: bytes, level: int = 6) -> bytes:
    """One gzip member, as `gzip -6` would write it."""
    c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def write_gzip_files(folder: Path, count: int, block_size: int, distinct: int = 4) -> tuple[list[Path], int]:
    """`count` gzip files, each one member of a `block_size` CSV block; returns (paths, inflated bytes).

    Deflate's window is 32 KiB, so reusing a few distinct blocks across files changes nothing for
    the inflater and saves compressing hundreds of MiB at every run.
    """
    folder.mkdir(parents=True, exist_ok=True)
    members = [gzip_member(csv_block(block_size, seed=10 + k)) for k in range(min(distinct, count))]
    paths = []
    for i in range(count):
        p = folder / f"part-{i:05d}.csv.gz"
        p.write_bytes(members[i % len(members)])
        paths.append(p)
    return paths, count * block_size


def total_size(paths: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in paths)


def write_repeated(path: Path, size: int, seed: int, block_size: int = 64 * MIB) -> Path:
    """A large file made of one random block written over and over (GiB-sized data in a second or two)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = random_block(min(block_size, size), seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    return path
