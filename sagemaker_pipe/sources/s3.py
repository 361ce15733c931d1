"""S3 through boto3: listing, manifests, and an epoch's objects fetched ahead in parallel.

An epoch's objects are cut into parts (one per small object, ranges of PART bytes for large
ones, or whole objects from a near server: S3Transport.near) that a small pool of daemon
threads fetches ahead, never holding more than READ_AHEAD bytes per channel (a whole-object
part waits for the reader past that). The part at the head streams as its bytes arrive, so
the FIFO sees an object's first bytes long before the object is complete. A body that breaks
mid-way is resumed with a Range GET from the exact byte reached. Every GET carries If-Match
with the listed ETag, so all bytes come from the version listed, or the job stops naming the
object. Whole objects up to SMALL_MAX go through one thread that keeps many keep-alive GETs
in flight (s3_small.py: a quarter of the CPU per object or less); a part too long to hold goes
from a plain-HTTP server socket -> pipe -> FIFO by splice (s3_splice.py); the rest is read by
plain signed GETs (s3_get.py);
anything but a 200 or 206 is repeated through get_object, so throttling and 5xx answers are
botocore's to retry (standard mode) and its errors are what the job reports.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from urllib3.exceptions import HTTPError

from sagemaker_pipe.chunks import CHUNK, PIPE_MAX, Chunk, ObjectRef, PipeSpan
from sagemaker_pipe.errors import ConfigError, DataError
from sagemaker_pipe.sources import s3_small, s3_splice
from sagemaker_pipe.sources.s3_get import NOT_HERE, Body, SignedGet

log = logging.getLogger("sagemaker_pipe")
MIB = 1 << 20


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise ConfigError(f"{name} must be a number (got {value!r})") from None


READ_AHEAD = int(_env_number("SAGEMAKER_PIPE_S3_READ_AHEAD_MB", 64) * MIB)  # per channel
PART = int(_env_number("SAGEMAKER_PIPE_S3_PART_MB", 8) * MIB)
THREADS = int(_env_number("SAGEMAKER_PIPE_S3_THREADS", 16))
RANGES = os.environ.get("SAGEMAKER_PIPE_S3_RANGES", "auto").lower()  # auto, always or never
NEAR_S = 0.005  # a server whose fastest GETs answer within this is near: one stream per object beats ranges
READ_TIMEOUT = _env_number("SAGEMAKER_PIPE_S3_READ_TIMEOUT", 60)
RESUMES = 5  # broken bodies resumed per part before the object is declared lost
SMALL = os.environ.get("SAGEMAKER_PIPE_S3_SMALL", "auto").lower()  # auto or never
# s3_small.py hands over a body only once it is complete: larger parts stream through s3_get.py as they arrive
SMALL_MAX = CHUNK


if RANGES not in ("auto", "always", "never"):
    raise ConfigError(f"SAGEMAKER_PIPE_S3_RANGES must be auto, always or never (got {RANGES!r})")
if SMALL not in ("auto", "never"):
    raise ConfigError(f"SAGEMAKER_PIPE_S3_SMALL must be auto or never (got {SMALL!r})")


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"{uri}: no bucket in the S3 URI")
    return bucket, key


class S3Transport:
    def __init__(self) -> None:
        self._client: Any = None
        self._get: SignedGet | None = None
        self._small: s3_small.SmallGet | None = None
        self._splice: s3_splice.SpliceGet | None = None
        self._lock = threading.Lock()
        self._pool = _Pool(THREADS)
        self._answers: deque[float] = deque(maxlen=64)  # seconds the last GETs took to answer

    @property
    def near(self) -> bool:
        """Whether large objects are fetched as one stream each rather than as parallel ranges.

        Parallel ranges multiply the bandwidth of a distant server (S3 gives one connection a
        fraction of what many get); a server whose fastest recent GETs answered within NEAR_S
        (on this host or LAN: MinIO, SeaweedFS, LocalStack) gives one stream all it has, and
        there ranges only cost CPU. The fastest, not the average: parallel GETs queue at the
        server, and queueing says nothing about distance. S3 over the internet takes tens of ms.
        """
        if RANGES != "auto":
            return RANGES == "never"
        return bool(self._answers) and min(self._answers) < NEAR_S

    @property
    def client(self) -> Any:
        """One thread-safe client, made on first use from the standard chain and endpoint variables."""
        self._connect()
        return self._client

    @property
    def signed_get(self) -> SignedGet:
        """Object bodies' GETs, with the same session, config and timeouts as the client."""
        self._connect()
        assert self._get is not None
        return self._get

    def _connect(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            retries: dict[str, Any] = {}
            if not os.environ.get("AWS_RETRY_MODE"):
                retries["mode"] = "standard"
            if not os.environ.get("AWS_MAX_ATTEMPTS"):
                retries["total_max_attempts"] = 5
            config = Config(
                retries=retries or None,
                read_timeout=READ_TIMEOUT,
                connect_timeout=10,
                max_pool_connections=THREADS + 4,
            )
            core = botocore.session.get_session()
            self._get = SignedGet(core, config, (10, READ_TIMEOUT), THREADS + 4)
            credentials = core.get_credentials()
            if SMALL == "auto" and credentials is not None:
                self._small = s3_small.SmallGet(self._get, credentials, core.get_config_variable("ca_bundle"),
                                                READ_TIMEOUT, 10)
                self._splice = s3_splice.SpliceGet(self._small, 10, READ_TIMEOUT)
            self._client = boto3.session.Session(botocore_session=core).client("s3", config=config)

    def list_objects(self, uri: str) -> list[ObjectRef]:
        """Every object whose key starts with the prefix (a plain string match), folder markers skipped."""
        bucket, prefix = split_uri(uri)
        root = prefix[: prefix.rfind("/") + 1]  # keys are kept relative to the prefix's folder
        refs = []
        with _errors(uri):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/") and obj["Size"] == 0:
                        continue
                    refs.append(ObjectRef(f"s3://{bucket}/{key}", key[len(root):], obj["Size"], obj.get("ETag")))
        refs.sort(key=lambda r: r.uri.encode("utf-8"))  # S3's order, whatever the server returned
        return refs

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_uri(uri)
        with _errors(uri):
            return bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def stat(self, refs: Sequence[ObjectRef]) -> list[ObjectRef]:
        """HEAD every object in parallel; the first missing one fails the job, named."""
        results: list[Any] = [None] * len(refs)
        done = threading.Semaphore(0)

        def head(i: int, ref: ObjectRef) -> None:
            bucket, key = split_uri(ref.uri)
            try:
                with _errors(ref.uri):
                    r = self.client.head_object(Bucket=bucket, Key=key)
                results[i] = ObjectRef(ref.uri, ref.key, r["ContentLength"], r.get("ETag"))
            except ConfigError as e:
                results[i] = e
            finally:
                done.release()

        for i, ref in enumerate(refs):
            self._pool.submit(functools.partial(head, i, ref))
        for _ in refs:
            done.acquire()
        for r in results:
            if isinstance(r, ConfigError):
                raise r
        return results

    def stream(self, refs: Iterable[ObjectRef]) -> Iterator[S3Stream]:
        ahead = _ReadAhead(self, list(refs))
        try:
            for i, ref in enumerate(ahead.refs):
                yield S3Stream(ref, ahead, i)
        finally:
            ahead.cancel()

    def start(self, part: _Part) -> bool:
        """Fetch a whole object of at most SMALL_MAX bytes through s3_small.py, if fit for its bucket.

        False when the part is not for that path: then nothing was sent.
        """
        self._connect()
        if self._small is None or part.length > min(SMALL_MAX, READ_AHEAD) or part.length != part.ref.size:
            return False  # (its loop must never wait for room)
        return _SmallPart(self, self._small, part).start()

    def splices(self, part: _Part) -> bool:
        """Whether a part too long to hold (over READ_AHEAD) goes socket -> pipe -> FIFO by splice:
        from a plain-HTTP server without a proxy (s3_splice.py)."""
        self._connect()
        return (self._splice is not None and part.length > READ_AHEAD
                and self._splice.fits(split_uri(part.ref.uri)[0]))

    def fetch(self, part: _Part, pos: int | None = None, resumes: int = 0) -> None:
        """Fill one part (from byte `pos` on), resuming a broken body from the exact byte reached."""
        bucket, key = split_uri(part.ref.uri)
        pos, end = part.start if pos is None else pos, part.end
        while pos < end and not part.cancelled:
            headers = _headers(part, pos)
            try:
                body = self._body(part, bucket, key, headers, pos)
                total = _total_size(body.headers)
                if total != part.ref.size:
                    body.close()
                    raise _changed(part.ref, total)
                _skip(body, _start(body.headers), pos, part.ref.uri)
                try:
                    while pos < end and not part.cancelled:
                        if isinstance(body, s3_splice.SplicedBody):
                            n = body.splice(part.pipe_in, end - pos, lambda: part.cancelled)
                            part.announce(n)
                        else:
                            data = body.read(min(CHUNK, end - pos))
                            n = len(data)
                            if n:
                                part.put(data)
                        if not n and not part.cancelled:
                            raise _Short
                        pos += n
                finally:
                    body.close()
            except (BotoCoreError, HTTPError, OSError, _Short) as e:
                if part.cancelled:
                    return
                resumes += 1
                if resumes > RESUMES:
                    raise DataError(f"{part.ref.uri}: download failed at byte {pos} after {RESUMES} resumes "
                                    f"({type(e).__name__})") from None
                log.warning("%s: body broke at byte %d (%s); resuming", part.ref.uri, pos, type(e).__name__)
                time.sleep(min(0.1 * 2**resumes, 2.0))

    def _body(self, part: _Part, bucket: str, key: str, headers: dict[str, str],
              pos: int) -> Body | s3_splice.SplicedBody:
        """The answer to one GET: spliced for a pipe part, else read through Python; an error, a
        redirect or throttling goes on to get_object, botocore's to retry or word. A spliced
        answer is taken only when its bytes are exactly [pos, end): sized, not chunked, and a
        Range answered from pos on; any other goes through Python."""
        sent = time.monotonic()
        if part.pipe_in >= 0 and self._splice is not None:
            try:
                spliced = self._splice.get(bucket, key, headers)
            except OSError:  # no answer at all: the plain path below, then botocore, retry and word it
                spliced = None
            if spliced is not None and spliced.status in (200, 206) and _exact(spliced.headers, pos, part.end):
                self._answers.append(time.monotonic() - sent)
                return spliced
            if spliced is not None:
                spliced.close()
                if spliced.status in (200, 206):  # framed otherwise: the plain path reads it right
                    return self.signed_get.get(bucket, key, headers) or self._get_object(part.ref.uri, bucket, key,
                                                                                          headers)
                if spliced.status in NOT_HERE:
                    self.signed_get.refuse(bucket)
                return self._get_object(part.ref.uri, bucket, key, headers)
        body = self.signed_get.get(bucket, key, headers)
        if body is None:
            return self._get_object(part.ref.uri, bucket, key, headers)
        self._answers.append(time.monotonic() - sent)
        return body

    def _get_object(self, uri: str, bucket: str, key: str, headers: dict[str, str]) -> Body:
        """The same GET through botocore: its retries, region redirects and error messages."""
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if "Range" in headers:
            args["Range"] = headers["Range"]
        if "If-Match" in headers:
            args["IfMatch"] = headers["If-Match"]
        try:
            response = self.client.get_object(**args)
        except ClientError as e:
            raise DataError(f"{uri}: {_describe(e)}") from None
        return Body(response["ResponseMetadata"]["HTTPHeaders"], response["Body"])


def _headers(part: _Part, pos: int) -> dict[str, str]:
    """A GET's Range (unless it is the whole object) and If-Match on the listed ETag."""
    headers: dict[str, str] = {}
    if (pos, part.end) != (0, part.ref.size):
        headers["Range"] = f"bytes={pos}-{part.end - 1}"
    if part.ref.etag:  # the version listed, or a 412: never bytes of two versions, nor a silent swap
        headers["If-Match"] = part.ref.etag
    return headers


class _SmallPart:
    """A whole small object fetched by s3_small.py, its body put into the part by the loop thread.

    The body is handed over once complete, so a body that breaks has passed nothing on, and the
    object is fetched again, through the plain path: so are error answers (botocore's retries
    and words; after a redirect, 400 or 403 the bucket is botocore's). A whole-object GET
    carries the object's length: one that differs from the listed size stops the job.
    """

    def __init__(self, transport: S3Transport, small: s3_small.SmallGet, part: _Part) -> None:
        self.transport, self.small, self.part = transport, small, part
        self.sent = 0.0

    def start(self) -> bool:
        bucket, key = split_uri(self.part.ref.uri)
        self.sent = time.monotonic()
        try:
            return self.small.start(bucket, key, self.part.end, _headers(self.part, 0), self.done)
        except BotoCoreError:  # credentials that could not be refreshed: the plain path says so, naming the object
            return False

    def done(self, status: int | None, body: bytes | None, error: str | None) -> None:
        part = self.part
        if body is not None:
            self.transport._answers.append(time.monotonic() - self.sent)  # a small body: about its answer
            if len(body) != part.end:
                part.finish(_changed(part.ref, len(body)))
                return
            if body and not part.cancelled:
                part.put(body)
            part.finish()
        elif part.cancelled:
            part.finish()
        else:
            if status in NOT_HERE:
                self.transport.signed_get.refuse(split_uri(part.ref.uri)[0])
            if status is None:  # no answer: the connection broke, or gave no progress for the read timeout
                log.warning("%s: body broke (%s); fetching it again", part.ref.uri, error)
            self.transport._pool.submit(lambda: part.run(self.transport, 0, 0 if status else 1))


class S3Stream:
    """One object of an epoch (the index-th), read from the parts the read-ahead fetches for it."""

    def __init__(self, ref: ObjectRef, ahead: _ReadAhead, index: int) -> None:
        assert ref.size is not None
        self.ref = ref
        self.size = ref.size
        self._ahead = ahead
        self._index = index
        self._part = ahead.next_part(index)
        self._rest = b""

    def chunks(self) -> Iterator[Chunk]:
        """The object's bytes as they arrive; a spliced part's as PipeSpans, never through Python."""
        while True:
            piece = self._rest or self._piece(spans=True)
            self._rest = b""
            if not len(piece):
                return
            yield piece

    def read(self, n: int = CHUNK) -> bytes:
        while not self._rest:
            piece = self._piece(spans=False)
            if not piece:
                return b""
            self._rest = piece  # type: ignore[assignment]  # bytes, without spans
        data, self._rest = self._rest[:n], self._rest[n:]
        return data

    def _piece(self, spans: bool) -> bytes | PipeSpan:
        """The next bytes of the object, b"" at its end."""
        while self._part is not None:
            piece = self._part.get(spans)
            if len(piece):
                return piece
            self._ahead.release(self._part)
            self._part = self._ahead.next_part(self._index)
        return b""

    def ready(self) -> bool:
        return bool(self._rest) or self._part is None or not self._part.empty()

    def reopen(self) -> S3Stream:
        return S3Stream(self.ref, _ReadAhead(self._ahead.transport, [self.ref]), 0)

    def close(self) -> None:
        """Give back what this object still holds, including parts fetched ahead for it."""
        while self._part is not None:
            self._part.cancelled = True
            self._ahead.release(self._part)
            self._part = self._ahead.next_part(self._index)


class _Short(Exception):
    """The body ended before the bytes the response promised."""


class _Part:
    """Bytes [start, end) of the index-th object, filled by a pool thread, drained by the FIFO writer."""

    def __init__(self, ref: ObjectRef, index: int, start: int, end: int) -> None:
        self.ref, self.index, self.start, self.end = ref, index, start, end
        self.cancelled = False
        self._q: queue.SimpleQueue[bytes | int | BaseException | None] = queue.SimpleQueue()
        self._buffered = 0  # bytes put and not yet taken
        # only a part longer than READ_AHEAD can fill it (a whole object from a near server)
        self._room = threading.Condition() if end - start > READ_AHEAD else None
        self.pipe_in = self.pipe_out = -1  # a spliced part's pipe (open_pipe): bytes never pass through Python

    @property
    def length(self) -> int:
        return self.end - self.start

    def open_pipe(self) -> None:
        """Carry this part in a pipe: the fetch splices the socket into it, the sink splices it on.
        Without a descriptor to spare it stays an ordinary part."""
        try:
            self.pipe_out, self.pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.fcntl(self.pipe_in, fcntl.F_SETPIPE_SZ, PIPE_MAX)
        except OSError:
            pass  # over the user's pipe-buffer quota: the default size works, in smaller steps
        self._room = None  # the pipe is the bound

    def announce(self, n: int) -> None:
        """n more bytes are in the pipe."""
        if n:
            self._q.put(n)

    def put(self, data: bytes) -> None:
        """Queue bytes for the reader; a part longer than READ_AHEAD (a whole object) waits for room."""
        if self.pipe_in >= 0:  # bytes that came through Python after all (botocore's path): into the pipe
            view = memoryview(data)
            while view and not self.cancelled:  # each write told at once: the pipe may hold less than data
                try:
                    n = os.write(self.pipe_in, view)
                except BlockingIOError:
                    s3_splice.ready(self.pipe_in, select.POLLOUT, 0.1)
                    continue
                self.announce(n)
                view = view[n:]
            return
        if self._room is None:
            self._q.put(data)
            return
        with self._room:
            while self._buffered >= READ_AHEAD and not self.cancelled:
                self._room.wait(0.1)
            self._buffered += len(data)
        self._q.put(data)

    def run(self, transport: S3Transport, pos: int | None = None, resumes: int = 0) -> None:
        try:
            if not self.cancelled:
                transport.fetch(self, pos, resumes)
            self.finish()
        except BaseException as e:  # handed to the reader, who stops the job naming the object
            self.finish(e)
        finally:
            if self.pipe_in >= 0:
                os.close(self.pipe_in)  # the reader closes the other end (close_pipe)
                self.pipe_in = -1

    def close_pipe(self) -> None:
        """The reader's end of a spliced part, once the reader is done with the part."""
        if self.pipe_out >= 0:
            os.close(self.pipe_out)
            self.pipe_out = -1

    def finish(self, error: BaseException | None = None) -> None:
        """The end of the part, or the error that ended it."""
        self._q.put(error)

    def empty(self) -> bool:
        return self._q.empty()

    def get(self, spans: bool = False) -> bytes | PipeSpan:
        """The next bytes, b"" at the end of the part; a failed download raises here. A spliced
        part's bytes come as PipeSpans (`spans`), or are read out of the pipe."""
        item = self._q.get()
        if item is None:
            self._q.put(None)  # stay at the end for any later call
            return b""
        if isinstance(item, BaseException):
            self._q.put(item)
            raise item if isinstance(item, DataError) else DataError(f"{self.ref.uri}: {item}")
        if isinstance(item, int):
            return PipeSpan(self.pipe_out, item, self.ref.uri, [0]) if spans else _read_exactly(self.pipe_out, item)
        if self._room is not None:
            with self._room:
                self._buffered -= len(item)
                self._room.notify()
        return item


class _ReadAhead:
    """Schedules an epoch's parts in order while the bytes they hold stay under READ_AHEAD.

    The part the writer needs next is always scheduled, budget or not, so one object larger
    than the budget still streams, a part at a time.
    """

    def __init__(self, transport: S3Transport, refs: list[ObjectRef]) -> None:
        self.transport = transport
        self.refs = refs
        part = max([PART] + [r.size or 0 for r in refs]) if transport.near else PART  # near: whole objects
        self._todo: deque[_Part] = deque(p for i, r in enumerate(refs) for p in _split(r, i, part))
        self._ahead: deque[_Part] = deque()  # scheduled, not yet handed to a stream
        self._held = 0
        self._lock = threading.Lock()
        self._fill()

    def next_part(self, index: int) -> _Part | None:
        """The next part of object `index`, or None when it has no more."""
        with self._lock:
            if self._ahead and self._ahead[0].index == index:
                part = self._ahead.popleft()
            elif not self._ahead and self._todo and self._todo[0].index == index:
                part = self._todo.popleft()
                self._schedule(part)
            else:
                part = None
        self._fill()
        return part

    def release(self, part: _Part) -> None:
        part.close_pipe()
        with self._lock:
            self._held -= part.length
        self._fill()

    def cancel(self) -> None:
        with self._lock:
            for p in self._ahead:
                p.cancelled = True
                p.close_pipe()
            self._ahead.clear()
            self._todo.clear()

    def _fill(self) -> None:
        with self._lock:
            while (
                self._todo
                and len(self._ahead) < 4 * THREADS
                and self._held + self._todo[0].length <= READ_AHEAD
            ):
                part = self._todo.popleft()
                self._schedule(part)
                self._ahead.append(part)

    def _schedule(self, part: _Part) -> None:
        self._held += part.length
        if not self.transport.start(part):
            if self.transport.splices(part):
                part.open_pipe()
            self.transport._pool.submit(lambda: part.run(self.transport))


def _split(ref: ObjectRef, index: int, size: int) -> list[_Part]:
    assert ref.size is not None
    return [_Part(ref, index, start, min(start + size, ref.size)) for start in range(0, ref.size, size)]


class _Pool:
    """Daemon worker threads, started on first use: a stalled socket never delays exit."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if not self._started:
                for i in range(self.size):
                    threading.Thread(target=self._work, name=f"s3-{i}", daemon=True).start()
                self._started = True
        self._tasks.put(task)

    def _work(self) -> None:
        while True:
            self._tasks.get()()


def _start(headers: Any) -> int:
    """The first byte an answer carries: Content-Range's start, 0 for a whole body."""
    content_range = headers.get("content-range")  # "bytes 100-199/1234"
    return int(content_range.split()[1].split("-")[0]) if content_range else 0


def _exact(headers: dict[str, str], pos: int, end: int) -> bool:
    """Whether an answer's body is exactly bytes [pos, end), as raw bytes on the socket."""
    return ("transfer-encoding" not in headers and headers.get("content-length") == str(end - pos)
            and _start(headers) == pos)


def _skip(body: Body | s3_splice.SplicedBody, start: int, pos: int, uri: str) -> None:
    """Bring a body that starts before pos (a server that answered a Range with the whole
    object) to pos; one that starts anywhere else cannot be placed."""
    if start == pos:
        return
    if start > pos or not isinstance(body, Body):
        body.close()
        raise DataError(f"{uri}: the server answered bytes from {start} on to a request from byte {pos}")
    left = pos - start
    while left:
        data = body.read(min(CHUNK, left))
        if not data:
            raise _Short
        left -= len(data)


def _read_exactly(fd: int, n: int) -> bytes:
    """n bytes that are in the pipe already (announced by its writer)."""
    data = os.read(fd, n)
    while len(data) < n:  # a pipe read stops at a page boundary at times
        data += os.read(fd, n - len(data))
    return data


def _changed(ref: ObjectRef, total: int) -> DataError:
    return DataError(f"{ref.uri} is {total} bytes now, {ref.size} when listed; it changed while the job ran")


def _total_size(headers: Any) -> int:
    content_range = headers.get("content-range")  # "bytes 0-99/1234"
    if content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(headers["content-length"])


def _describe(e: ClientError) -> str:
    err = e.response.get("Error", {})
    code = err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if str(code) in ("412", "PreconditionFailed"):  # If-Match on the listed ETag
        return "changed while the job ran (its ETag is no longer the one listed: PreconditionFailed)"
    names = {"404": "NoSuchKey", "403": "AccessDenied"}
    message = err.get("Message")
    code = names.get(str(code), code)
    return f"{code}: {message}" if message else str(code)


class _errors:
    """Turn boto3's failures at planning time into one-line ConfigErrors naming the URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        if e is None or isinstance(e, ConfigError):
            return
        if isinstance(e, NoCredentialsError):
            raise ConfigError(f"{self.uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        if isinstance(e, ClientError):
            raise ConfigError(f"{self.uri}: {_describe(e)}") from None
        if isinstance(e, (BotoCoreError, HTTPError, OSError)):
            raise ConfigError(f"{self.uri}: {e}") from None
