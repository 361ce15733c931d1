"""Consumer programs for the engine tests, run as separate processes.

    python consumers.py PATTERN --epochs N [--start S] [--modes M1,M2,...]
                        [--wait SECONDS] [--out DIR] [--timeout SECONDS]

PATTERN is a FIFO path with ``{n}`` for the epoch number (``/ml/input/data/train_{n}``).
For each epoch n from S to S+N-1 the consumer waits (bounded by --wait) for the path to exist,
opens it for reading (blocking, like every real consumer), consumes it according to that epoch's
mode and prints one JSON line:

    {"epoch": n, "mode": ..., "bytes": <count>, "sha256": <hex>, "is_fifo": bool,
     "perm": <octal string of the permission bits>, "eof": bool,
     "next_exists_at_eof": bool | null, "out": <file or null>}

``next_exists_at_eof`` is checked right after read() returned EOF, before closing: it tells
whether FIFO n+1 already existed at the moment epoch n ended. In the modes that read to EOF
(full, slow) the record also has "first_byte_s" (seconds from open() returning to the first
byte, null if none) and "seconds" (to EOF); with --timeline, "timeline" lists [seconds since
open, bytes so far] after every read.

Modes (the last one given repeats for the remaining epochs):
    full           read to EOF
    partial:K      read exactly K bytes (or up to EOF if shorter), then close
    openclose      open and close at once without reading
    slow:C:D       read to EOF in reads of at most C bytes, sleeping D seconds after each
    stall:K        read K bytes, print {"event": "stalled", ...}, then hold the FIFO open without
                   reading until killed (or --timeout)
    gate:K         read K bytes, print {"event": "gated", ...}, wait (bounded by --wait) for the
                   file given by --gate to exist, then read on to EOF
    mlio           like ml-io's SageMakerPipe: no waiting for the path; open it O_NONBLOCK, up to
                   3 tries 1 s apart; select() until data (or EOF) is there; read, select()ing on
                   EAGAIN. The record gets "open_attempts".

Errors (path never appeared) print {"epoch": n, "error": ...} and exit 3. A global watchdog
(--timeout, default 50 s) exits 4 so that a consumer can never hang a test run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import stat
import sys
import time

CHUNK = 1 << 16


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def wait_for(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if os.path.lexists(path):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def parse_mode(text: str) -> tuple[str, list[float]]:
    name, *args = text.split(":")
    if name not in ("full", "partial", "openclose", "slow", "stall", "gate", "mlio"):
        raise SystemExit(f"unknown mode {text!r}")
    return name, [float(a) for a in args]


def consume_mlio(path: str, next_path: str, out: str | None, timeout: float = 20.0) -> dict:
    import errno
    import select

    fd = -1
    attempts = 0
    while fd < 0:
        attempts += 1
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if attempts == 3:
                raise SystemExit(f"{path}: cannot be opened after 3 tries") from None
            time.sleep(1)
    st = os.fstat(fd)
    result: dict = {"is_fifo": stat.S_ISFIFO(st.st_mode), "perm": oct(stat.S_IMODE(st.st_mode)),
                    "open_attempts": attempts, "eof": False, "next_exists_at_eof": None}
    digest = hashlib.sha256()
    total = 0
    sink = open(out, "wb") if out else None

    def wait_for_data() -> None:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise SystemExit(f"{path}: no data within {timeout} s")

    try:
        wait_for_data()  # so that the first read cannot mistake "no writer yet" for EOF
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise
                wait_for_data()
                continue
            if not chunk:
                result["eof"] = True
                result["next_exists_at_eof"] = os.path.lexists(next_path)
                break
            digest.update(chunk)
            total += len(chunk)
            if sink:
                sink.write(chunk)
    finally:
        os.close(fd)
        if sink:
            sink.close()
    result.update(bytes=total, sha256=digest.hexdigest())
    return result


def consume(path: str, next_path: str, mode: str, args: list[float], out: str | None,
            stall_seconds: float, gate: str | None = None, gate_wait: float = 15.0,
            timeline: list | None = None) -> dict:
    if mode == "mlio":
        return consume_mlio(path, next_path, out)
    st = os.stat(path)
    result: dict = {
        "is_fifo": stat.S_ISFIFO(st.st_mode),
        "perm": oct(stat.S_IMODE(st.st_mode)),
        "next_exists_at_eof": None,
        "eof": False,
    }
    digest = hashlib.sha256()
    total = 0
    sink = open(out, "wb") if out else None
    fd = os.open(path, os.O_RDONLY)  # blocks until the writer opens, like real consumers
    try:
        if mode == "openclose":
            pass
        elif mode in ("partial", "stall", "gate"):
            want = int(args[0])
            while total < want:
                chunk = os.read(fd, min(CHUNK, want - total))
                if not chunk:
                    result["eof"] = True
                    result["next_exists_at_eof"] = os.path.lexists(next_path)
                    break
                digest.update(chunk)
                total += len(chunk)
                if sink:
                    sink.write(chunk)
            if mode == "stall":
                emit({"event": "stalled", "bytes": total, "path": path})
                time.sleep(stall_seconds)
            if mode == "gate" and not result["eof"]:
                emit({"event": "gated", "bytes": total, "path": path})
                if not gate or not wait_for(gate, gate_wait):
                    raise SystemExit(f"gate file {gate} did not appear")
                while True:
                    chunk = os.read(fd, CHUNK)
                    if not chunk:
                        result["eof"] = True
                        result["next_exists_at_eof"] = os.path.lexists(next_path)
                        break
                    digest.update(chunk)
                    total += len(chunk)
                    if sink:
                        sink.write(chunk)
        else:
            size = int(args[0]) if mode == "slow" else CHUNK
            delay = args[1] if mode == "slow" else 0.0
            opened = time.monotonic()
            result["first_byte_s"] = None
            if timeline is not None:
                result["timeline"] = timeline
            while True:
                chunk = os.read(fd, size)
                now = time.monotonic() - opened
                result["seconds"] = round(now, 4)
                if chunk and result["first_byte_s"] is None:
                    result["first_byte_s"] = round(now, 4)
                if chunk and timeline is not None:
                    timeline.append([round(now, 4), total + len(chunk)])
                if not chunk:
                    # The end of the epoch: is the next FIFO there already?
                    result["eof"] = True
                    result["next_exists_at_eof"] = os.path.lexists(next_path)
                    break
                digest.update(chunk)
                total += len(chunk)
                if sink:
                    sink.write(chunk)
                if delay:
                    time.sleep(delay)
    finally:
        os.close(fd)
        if sink:
            sink.close()
    result.update(bytes=total, sha256=digest.hexdigest())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("pattern")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--modes", default="full")
    p.add_argument("--wait", type=float, default=15.0)
    p.add_argument("--out", default=None, help="directory to save each epoch's bytes in")
    p.add_argument("--timeout", type=float, default=50.0)
    p.add_argument("--stall-seconds", type=float, default=40.0)
    p.add_argument("--gate", default=None, help="file whose appearance releases a gate:K consumer")
    p.add_argument("--timeline", action="store_true", help="record [seconds, bytes so far] after every read")
    a = p.parse_args(argv)

    def watchdog(signum, frame):  # pragma: no cover - only on a hang
        emit({"error": "consumer watchdog expired"})
        os._exit(4)

    signal.signal(signal.SIGALRM, watchdog)
    signal.setitimer(signal.ITIMER_REAL, a.timeout)

    modes = [parse_mode(m) for m in a.modes.split(",")]
    for i in range(a.epochs):
        n = a.start + i
        mode, args = modes[min(i, len(modes) - 1)]
        path = a.pattern.format(n=n)
        if mode != "mlio" and not wait_for(path, a.wait):
            emit({"epoch": n, "error": f"{path} did not appear within {a.wait} s"})
            return 3
        out = os.path.join(a.out, f"epoch_{n}.bin") if a.out else None
        res = consume(path, a.pattern.format(n=n + 1), mode, args, out, a.stall_seconds,
                      a.gate, a.wait, [] if a.timeline else None)
        res.update(epoch=n, mode=mode, out=out)
        emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
