"""Every path under the ml-root, and the writers of the config files the algorithm reads.

Kept in one place (like sagemaker-training-toolkit's environment.py) so that no other
module spells out `/opt/ml/...` itself.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ML_ROOT = "/opt/ml"
CONTAINER_CONFIG = "/config/channels.yaml"
CONTAINER_STATUS_FILE = "/tmp/sagemaker-pipe/status.json"  # the image's root file system is read-only
STATUS_FOLDER = ".sagemaker-pipe"  # under <ml-root>/input; removed with the status file when the sidecar exits


def status_file(named: str | None, ml_root: str | os.PathLike[str]) -> Path:
    """The sidecar's status file: the one named (--status-file, SAGEMAKER_PIPE_STATUS_FILE), else a
    hidden one beside the config and data folders, so that `status --ml-root DIR` finds it."""
    return Path(named) if named else Path(ml_root) / "input" / STATUS_FOLDER / "status.json"


@dataclass(frozen=True)
class Layout:
    """The folders SageMaker lays out for an algorithm, below one root."""

    data_dir: Path
    config_dir: Path | None  # None in the original tool's form: FIFOs only
    root: Path | None = None  # the ml-root; None in the original tool's form

    @classmethod
    def under(cls, ml_root: str | os.PathLike[str]) -> Layout:
        root = Path(ml_root)
        return cls(data_dir=root / "input" / "data", config_dir=root / "input" / "config", root=root)

    def _under_root(self, *parts: str) -> Path:
        assert self.root is not None
        return self.root.joinpath(*parts)

    @property
    def input_dir(self) -> Path:
        return self._under_root("input")

    @property
    def lock_file(self) -> Path:
        """Held by the one sidecar serving this ml-root (lock.py); in input/, the folder a sidecar container shares."""
        return self.input_dir / ".sagemaker-pipe.lock"

    @property
    def model_dir(self) -> Path:
        """What the algorithm leaves here becomes model.tar.gz."""
        return self._under_root("model")

    @property
    def output_dir(self) -> Path:
        return self._under_root("output")

    @property
    def output_data_dir(self) -> Path:
        """What the algorithm leaves here becomes output.tar.gz."""
        return self._under_root("output", "data")

    @property
    def failure_file(self) -> Path:
        """The algorithm writes its failure reason here before exiting non-zero."""
        return self._under_root("output", "failure")

    @property
    def checkpoints_dir(self) -> Path:
        return self._under_root("checkpoints")

    def fifo(self, channel: str, epoch: int) -> Path:
        return self.data_dir / f"{channel}_{epoch}"

    def folder(self, channel: str) -> Path:
        """A File or FastFile channel's folder: its objects, one file per key."""
        return self.data_dir / channel

    def write_config(self, name: str, content: Any) -> None:
        """Write `<config_dir>/<name>` atomically: a reader never sees half a file."""
        assert self.config_dir is not None
        make_dirs(self.config_dir)
        write_atomic(self.config_dir / name, json.dumps(content, indent=2, sort_keys=True) + "\n")


def make_dirs(path: Path) -> None:
    """mkdir -p, each folder it makes 0755 whatever the umask: the algorithm may run as another uid."""
    missing = []
    top = path
    while not top.exists():
        missing.append(top)
        top = top.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path))


def write_atomic(path: Path, text: str) -> None:
    """Write a world-readable file through a temporary sibling and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
