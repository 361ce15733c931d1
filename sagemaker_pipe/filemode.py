"""File and FastFile channels: the channel's objects copied once into `<data>/<channel>/`.

SageMaker downloads a File-mode channel to the instance before the algorithm starts, one file
per object under its key (FastFile mounts the same tree; locally both are a copy). The bytes are
the objects' own: `CompressionType` "is used only in Pipe input mode" (CreateTrainingJob's
Channel), and RecordIO wrapping is a Pipe-mode stream format, so neither is applied here.

Every key is checked before anything is written; each file is written through a temporary
sibling and a rename, so the algorithm never sees half a file.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from sagemaker_pipe import sources
from sagemaker_pipe.chunks import CHUNK, FileSpan, PipeSpan
from sagemaker_pipe.errors import ConfigError, DataError, PipeError, in_channel
from sagemaker_pipe.layout import Layout, make_dirs
from sagemaker_pipe.plan import ChannelPlan
from sagemaker_pipe.sources import ObjectRef

log = logging.getLogger("sagemaker_pipe")
FILE_MODES = ("File", "FastFile")
SPAN_STEP = 64 << 20  # a large local file is copied in steps of this, so shutdown is noticed
_TMP_SUFFIX = ".part"


def is_file_mode(plan: ChannelPlan) -> bool:
    return plan.channel.input_mode in FILE_MODES


class CopyProgress(Protocol):
    """What the copier reports as it goes (progress.ChannelProgress implements it)."""

    def copying(self, objects: int, total_bytes: int) -> None: ...

    def copied_bytes(self, n: int) -> None: ...

    def copied(self, objects: int, nbytes: int, seconds: float) -> None: ...


def safe_key(channel: str, key: str) -> PurePosixPath:
    """The key as a relative path that stays inside the channel folder, or a ConfigError naming it."""
    where = f"channel {channel!r}: object key {key!r}"
    if "\0" in key:
        raise ConfigError(f"{where} contains a NUL byte")
    if not key:
        raise ConfigError(f"{where} is empty: an object named like its prefix cannot be a file in File mode")
    if key.startswith("/"):
        raise ConfigError(f"{where} is absolute and would be written outside the channel folder")
    parts = key.split("/")
    if ".." in parts:
        raise ConfigError(f"{where} contains '..' and would be written outside the channel folder")
    if key.endswith("/"):
        raise ConfigError(f"{where} ends with '/' but has content: it cannot be both a folder and a file")
    if "" in parts or "." in parts:
        raise ConfigError(f"{where} has an empty or '.' path component: not a plain relative path")
    return PurePosixPath(key)


@dataclass(frozen=True)
class FileCopy:
    """One File-mode channel: where it goes and the objects (this host's share) it holds."""

    plan: ChannelPlan
    folder: Path
    files: tuple[tuple[ObjectRef, PurePosixPath], ...]

    @property
    def name(self) -> str:
        return self.plan.channel.name

    @property
    def total_bytes(self) -> int:
        return sum(ref.size or 0 for ref, _ in self.files)


def file_copies(plans: Sequence[ChannelPlan], layout: Layout, warn: bool = True) -> list[FileCopy]:
    """Check every key of every File-mode channel (ConfigError before anything is written)."""
    out = []
    for plan in plans:
        c = plan.channel
        if plan.channel.input_mode not in FILE_MODES:
            continue
        refs = [p for u in plan.epoch(0) for p in u.parts if isinstance(p, ObjectRef)]
        files: dict[PurePosixPath, ObjectRef] = {}
        for ref in refs:
            path = safe_key(c.name, ref.key)
            if path in files and files[path].uri != ref.uri:
                raise ConfigError(f"channel {c.name!r}: object key {ref.key!r} names two objects "
                                  f"({files[path].uri} and {ref.uri})")
            files[path] = ref
        for path in files:
            for parent in path.parents:
                if parent in files:
                    raise ConfigError(f"channel {c.name!r}: object keys {str(parent)!r} and {str(path)!r} "
                                      f"cannot both be files (one would be the other's folder)")
        _check_lengths(c.name, layout.folder(c.name), files)
        for warning in mode_notes(plan) if warn else ():
            log.warning("channel %s: %s", c.name, warning)
        out.append(FileCopy(plan, layout.folder(c.name), tuple((r, p) for p, r in files.items())))
    return out


def _check_lengths(channel: str, folder: Path, paths: Iterable[PurePosixPath]) -> None:
    """Keys whose file name or whole path the target file system cannot hold: refused before any copy."""
    name_max, path_max = _limits(folder)
    for path in paths:
        where = f"channel {channel!r}: object key {_cut(str(path))!r}"
        for part in path.parts:
            if len(os.fsencode(part)) > name_max:
                raise ConfigError(f"{where} has a path component of {len(os.fsencode(part))} bytes; "
                                  f"the file system under {folder} allows {name_max}")
        dest = folder / path
        length = len(os.fsencode(str(dest)))
        temporary = len(os.fsencode(str(dest.parent / _tmp_prefix(dest.name)))) + 8 + len(_TMP_SUFFIX)
        if max(length, temporary) >= path_max:
            raise ConfigError(f"{where} makes a path of {length} bytes under {folder}; "
                              f"the file system allows {path_max - 1}")


def _limits(folder: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX where the folder is (or will be), or Linux's usual 255 and 4096."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _tmp_prefix(name: str) -> str:
    """A file's temporary sibling starts with (some of) its name, and fits wherever the file fits."""
    return f".{name[:32]}."


def _cut(text: str, keep: int = 60) -> str:
    return text if len(text) <= keep else text[:keep] + "..."


def mode_notes(plan: ChannelPlan) -> list[str]:
    """Settings that have no effect in File mode, said once so nobody expects them to."""
    c = plan.channel
    notes: list[str] = []
    if c.input_mode not in FILE_MODES:
        return notes
    if c.gunzip:
        notes.append("CompressionType Gzip applies only in Pipe mode; File mode copies objects as they are "
                     "(SageMaker: 'In File mode, leave this field unset or set it to None')")
    if c.recordio:
        notes.append("RecordWrapperType RecordIO applies only in Pipe mode; File mode copies objects as they are")
    return notes


def copy_all(copies: Sequence[FileCopy], stop: threading.Event,
             progress: Mapping[str, CopyProgress] | None = None) -> bool:
    """Copy every File-mode channel; False if shutdown was requested meanwhile.

    The copy runs in a daemon thread and the caller waits on `stop`, so a signal is answered at
    once even while a download is stalled; files being written when it comes are removed.
    """
    if not copies:
        return True
    outcome: list[bool | BaseException] = []

    def work() -> None:
        try:
            outcome.append(all(copy_channel(fc, stop, progress.get(fc.name) if progress else None)
                               for fc in copies))
        except BaseException as e:  # handed to the caller, which reports it
            outcome.append(e)

    thread = threading.Thread(target=work, name="file-mode-copy", daemon=True)
    thread.start()
    while thread.is_alive():
        if stop.wait(0.1):
            thread.join(1.0)  # a moment to notice and clean up after itself
            _remove_partials()
            return False
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


_partials: set[str] = set()  # temporary files being written right now
_partials_lock = threading.Lock()


def _remove_partials() -> None:
    with _partials_lock:
        paths = list(_partials)
        _partials.clear()
    for path in paths:
        Path(path).unlink(missing_ok=True)


def copy_channel(fc: FileCopy, stop: threading.Event, progress: CopyProgress | None = None) -> bool:
    """Replace `<data>/<channel>/` with exactly the channel's objects; False if stopped midway."""
    try:
        return _copy_channel(fc, stop, progress)
    except PipeError as e:
        raise in_channel(e, fc.name) from None


def _copy_channel(fc: FileCopy, stop: threading.Event, progress: CopyProgress | None) -> bool:
    started = time.monotonic()
    _fresh_folder(fc)
    if progress is not None:
        progress.copying(len(fc.files), fc.total_bytes)
    total = 0
    streams = sources.stream([ref for ref, _ in fc.files])
    try:
        for ref, key in fc.files:
            if stop.is_set():
                return False
            stream = next(streams)
            try:
                n = _copy_object(fc, stream, fc.folder / key, stop, progress)
            finally:
                stream.close()
            if n is None:
                return False
            total += n
            log.debug("File channel %s: %s -> %s (%d bytes)", fc.name, ref.uri, key, n)
    finally:
        streams.close()
    seconds = time.monotonic() - started
    if progress is not None:
        progress.copied(len(fc.files), total, seconds)
    rate = total / seconds / 1e6 if seconds > 0 else 0.0
    log.info("File channel %s: copied %d object%s, %d bytes into %s in %.3f s (%.1f MB/s)",
             fc.name, len(fc.files), "" if len(fc.files) == 1 else "s", total, fc.folder, seconds, rate,
             extra={"fields": {"channel": fc.name, "mode": fc.plan.channel.input_mode, "objects": len(fc.files),
                               "bytes": total, "seconds": round(seconds, 3), "mb_per_s": round(rate, 1),
                               "folder": str(fc.folder)}})
    return True


def _fresh_folder(fc: FileCopy) -> None:
    """The channel folder, emptied of whatever an earlier run left (the algorithm sees only this job's files)."""
    folder = fc.folder
    try:
        st = folder.lstat()
    except FileNotFoundError:
        st = None
    try:
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                if any(folder.iterdir()):
                    log.info("File channel %s: replacing the files an earlier run left in %s", fc.name, folder)
                    shutil.rmtree(folder)
            else:
                folder.unlink()  # a FIFO or file of that name from an earlier run in another mode
        make_dirs(folder)
    except OSError as e:
        raise ConfigError(f"channel {fc.name!r}: cannot prepare {folder} for File mode: "
                          f"{e.strerror or e}") from None


def _copy_object(fc: FileCopy, stream: sources.ObjectStream, dest: Path, stop: threading.Event,
                 progress: CopyProgress | None) -> int | None:
    """One object to one file, byte for byte; None if stopped midway (nothing is left behind)."""
    name = stream.ref.uri
    try:
        make_dirs(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_tmp_prefix(dest.name), suffix=_TMP_SUFFIX)
    except OSError as e:
        raise DataError(f"channel {fc.name!r}: cannot write {dest}: {e.strerror or e}") from None
    with _partials_lock:
        _partials.add(tmp)
    done = False
    try:
        total = 0
        try:
            for chunk in stream.chunks():
                if stop.is_set():
                    return None
                if isinstance(chunk, FileSpan):
                    n = _copy_span(chunk, fd, stop)
                    if n is None:
                        return None
                elif isinstance(chunk, PipeSpan):
                    n = _copy_pipe(chunk, fd)
                else:
                    _write_all(fd, memoryview(chunk))
                    n = len(chunk)
                total += n
                if total > stream.size:
                    raise DataError(f"{name} grew while it was being copied")
                if progress is not None:
                    progress.copied_bytes(n)
            if total != stream.size:
                raise DataError(f"{name} ended after {total} of {stream.size} bytes (changed or cut while copying)")
            os.fchmod(fd, 0o644)
        except OSError as e:
            raise DataError(f"channel {fc.name!r}: cannot write {dest}: {e.strerror or e}") from None
        finally:
            os.close(fd)
        try:
            os.replace(tmp, dest)
        except OSError as e:
            raise DataError(f"channel {fc.name!r}: cannot write {dest}: {e.strerror or e}") from None
        done = True
        return total
    finally:
        with _partials_lock:
            _partials.discard(tmp)
        if not done:
            Path(tmp).unlink(missing_ok=True)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_pipe(span: PipeSpan, fd: int) -> int:
    """Bytes already waiting in a pipe (a spliced S3 body), moved into the file by splice."""
    left = span.length
    while left:
        try:
            n = os.splice(span.fd, fd, left)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            data = os.read(span.fd, min(left, CHUNK))  # a file system without splice support
            _write_all(fd, memoryview(data))
            n = len(data)
        if n == 0:
            raise DataError(f"{span.name} ended {left} bytes early")
        left -= n
    return span.length


def _copy_span(span: FileSpan, fd: int, stop: threading.Event) -> int | None:
    """Bytes of a local file, kernel to kernel where it can; None if stopped midway."""
    offset, end = span.offset, span.offset + span.length
    fast = hasattr(os, "copy_file_range")
    while offset < end:
        if stop.is_set():
            return None
        step = min(SPAN_STEP, end - offset)
        n = 0
        if fast:
            try:
                n = os.copy_file_range(span.fd, fd, step, offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                    raise
                fast = False
                continue
        else:
            data = os.pread(span.fd, min(step, CHUNK), offset)
            _write_all(fd, memoryview(data))
            n = len(data)
        if n == 0:
            raise DataError(f"{span.name} ended after {offset - span.offset} of {span.length} bytes "
                            "(changed while copying)")
        offset += n
    return span.length
