"""Local folders and files, listed the way the same tree uploaded to S3 would list."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sagemaker_pipe.chunks import CHUNK, Chunk, FileSpan, ObjectRef
from sagemaker_pipe.errors import ConfigError, DataError

SMALL = 64 << 10  # up to this, one read() into the sink's batch beats opening a stream and a splice


def sort_key(key: str) -> bytes:
    """S3 lists keys in ascending UTF-8 byte order; undecodable names keep their bytes."""
    return key.encode("utf-8", "surrogateescape")


def is_small(ref: ObjectRef) -> bool:
    """Small local files are read whole (see read_small) instead of being opened as streams."""
    return ref.size is not None and ref.size <= SMALL and not ref.uri.startswith("s3://")


def read_small(ref: ObjectRef) -> bytes:
    """A small file's bytes in one open-read-close: at 4 KiB a file, per-file overhead is the cost."""
    fd = open_listed(ref)
    try:
        data = os.read(fd, (ref.size or 0) + 1)
    except OSError as e:
        raise DataError(f"cannot read {ref.uri}: {e.strerror}") from None
    finally:
        os.close(fd)
    if ref.size is not None and len(data) != ref.size:
        raise changed(ref, f"{len(data)} bytes")
    return data


def open_listed(ref: ObjectRef) -> int:
    """The file `ref` lists, opened: still a regular file of its listed size, or a DataError.

    The open never blocks (a FIFO put in its place) and nothing is read yet, so a file that
    became a device, a folder or a larger file costs no memory; the check is on what was
    opened, so a symlink swapped in meanwhile cannot slip past it.
    """
    try:
        fd = os.open(ref.uri, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise DataError(f"cannot open {ref.uri}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise changed(ref, f"now {_kind(st.st_mode)}")
        if ref.size is not None and st.st_size != ref.size:
            raise changed(ref, f"{st.st_size} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd


def changed(ref: ObjectRef, now: str) -> DataError:
    """A file that is not what was listed would make a short, long or endless epoch: refuse it."""
    listed = "" if ref.size is None else f", {ref.size} bytes when listed"
    return DataError(f"{ref.uri} changed since it was listed ({now}{listed})")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


class LocalStream:
    """An open local file, checked against its listing; it never reads past the listed size."""

    def __init__(self, ref: ObjectRef) -> None:
        self.ref = ref
        self.fd = open_listed(ref)
        self.size = ref.size if ref.size is not None else os.fstat(self.fd).st_size
        self.pos = 0

    def read(self, n: int = CHUNK) -> bytes:
        try:
            data = os.read(self.fd, min(n, self.size - self.pos))
        except OSError as e:
            raise DataError(f"cannot read {self.ref.uri}: {e.strerror}") from None
        if not data and self.pos < self.size:
            raise changed(self.ref, f"it ended after {self.pos} bytes")
        self.pos += len(data)
        return data

    def chunks(self) -> Iterator[Chunk]:
        yield FileSpan(self.fd, 0, self.size, self.ref.uri)

    def ready(self) -> bool:
        return True  # a local read does not wait on anything a flush would help

    def reopen(self) -> LocalStream:
        return LocalStream(self.ref)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalTransport:
    """`uri` is an absolute path: a folder (every file below it) or a single file."""

    def list_objects(self, uri: str) -> list[ObjectRef]:
        root = Path(uri)
        try:
            st = root.stat()
        except OSError:
            raise ConfigError(f"{uri}: no such file or folder") from None
        if stat.S_ISREG(st.st_mode):
            check_readable([(uri, st)])
            return [ObjectRef(uri, root.name, st.st_size)]
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{uri}: not a regular file or folder")
        found = sorted(_walk(root), key=lambda f: sort_key(f[0]))
        check_readable([(str(root / key), st) for key, st in found])
        return [ObjectRef(str(root / key), key, st.st_size) for key, st in found]

    def read_bytes(self, uri: str) -> bytes:
        """A manifest: a regular file, read up to its size (never a FIFO's wait nor a device's endless bytes)."""
        try:
            fd = os.open(uri, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ConfigError(f"{uri} is not a regular file")
                parts, left = [], st.st_size
                while left > 0 and (part := os.read(fd, min(left, CHUNK))):
                    parts.append(part)
                    left -= len(part)
                return b"".join(parts)
            finally:
                os.close(fd)
        except OSError as e:
            raise ConfigError(f"cannot read {uri}: {e.strerror}") from None

    def stat(self, refs: Sequence[ObjectRef]) -> list[ObjectRef]:
        found = []
        for ref in refs:
            try:
                st = os.stat(ref.uri)
            except OSError:
                raise ConfigError(f"{ref.uri}: no such file") from None
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{ref.uri}: not a regular file")
            found.append((ref, st))
        check_readable([(ref.uri, st) for ref, st in found])
        return [ObjectRef(ref.uri, ref.key, st.st_size) for ref, st in found]

    def stream(self, refs: Iterable[ObjectRef]) -> Iterator[LocalStream]:
        for ref in refs:
            yield LocalStream(ref)


def check_readable(files: Sequence[tuple[str, os.stat_result]], shown: int = 3) -> None:
    """Files this process may not open fail the job now, not after the reader got an empty epoch.

    The listing's own mode bits decide; access(2) is asked only where they say no (an ACL or
    root's privilege may still allow it), so 100,000 readable files cost no extra system call.
    """
    uid, groups = os.geteuid(), {os.getegid(), *os.getgroups()}
    unreadable = [path for path, st in files if not _bits_allow(st, uid, groups) and not os.access(path, os.R_OK)]
    if unreadable:
        more = f" and {len(unreadable) - shown} more" if len(unreadable) > shown else ""
        raise ConfigError(f"{len(unreadable)} file{'s' if len(unreadable) > 1 else ''} this process "
                          f"(uid {os.geteuid()}) may not read: {', '.join(unreadable[:shown])}{more}")


def _bits_allow(st: os.stat_result, uid: int, groups: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file below root as (relative key, its stat); symlinks followed, loops cut."""
    seen: set[tuple[int, int]] = set()
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:
            continue  # a symlink loop, or a folder reached twice
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise ConfigError(f"cannot list {folder}: {e.strerror}") from None
        for entry in entries:
            key = prefix + entry.name
            try:
                if entry.is_dir():
                    stack.append((Path(entry.path), key + "/"))
                elif entry.is_file():
                    yield key, entry.stat()
            except OSError as e:  # a dangling symlink, or a file that vanished meanwhile
                raise ConfigError(f"cannot read {entry.path}: {e.strerror}") from None
