"""One sidecar per ml-root: an flock on `<ml-root>/input/.sagemaker-pipe.lock` holding the owner's pid.

Two sidecars on one ml-root would replace each other's FIFOs and config files. The kernel drops
an flock when its process dies, however it died, so a lock file left by a killed sidecar is
simply taken over; the pid inside is only there to name the holder in the error.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.layout import make_dirs

ATTEMPTS = 10  # a holder removing the file while we open it makes us try again; never more than this


class RootLock:
    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the pid that holds it."""
        try:
            make_dirs(self.path.parent)
            for _ in range(ATTEMPTS):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                    os.close(fd)
                    raise ConfigError(f"ml-root {self.root} is in use by sagemaker-pipe pid {holder} "
                                      f"(lock {self.path}); stop it or use another --ml-root") from None
                if _same_file(fd, self.path):  # not a file its last holder unlinked meanwhile
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    self._fd = fd
                    return
                os.close(fd)
        except OSError as e:
            raise ConfigError(f"cannot lock ml-root {self.root} ({self.path}): {e.strerror}") from None
        raise ConfigError(f"cannot lock ml-root {self.root}: {self.path} keeps being replaced")

    def release(self) -> None:
        """Remove the file, then drop the lock (in that order: a waiting process re-checks the file)."""
        if self._fd >= 0:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
