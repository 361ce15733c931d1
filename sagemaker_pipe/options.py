"""Command-line parsing shared by the sidecar and every subcommand: one-line errors, the
environment variables that set options, and option values in seconds."""

from __future__ import annotations

import argparse
from typing import NoReturn

from sagemaker_pipe.errors import ConfigError

PROG = "sagemaker-pipe"
ENV = {  # option -> environment variable that sets it (for the container)
    "config": "SAGEMAKER_PIPE_CONFIG",
    "ml_root": "SAGEMAKER_PIPE_ML_ROOT",
    "epochs": "SAGEMAKER_PIPE_EPOCHS",
    "status_file": "SAGEMAKER_PIPE_STATUS_FILE",
    "hosts": "SAGEMAKER_PIPE_HOSTS",
    "current_host": "SAGEMAKER_PIPE_CURRENT_HOST",
    "throttle_mbps": "SAGEMAKER_PIPE_THROTTLE_MBPS",
    "log_format": "SAGEMAKER_PIPE_LOG_FORMAT",
    "progress_interval": "SAGEMAKER_PIPE_PROGRESS_INTERVAL",
    "exit_when_idle": "SAGEMAKER_PIPE_EXIT_WHEN_IDLE",
    "hold_on_failure": "SAGEMAKER_PIPE_HOLD_ON_FAILURE",
    "failure_hold": "SAGEMAKER_PIPE_FAILURE_HOLD",
}


class Parser(argparse.ArgumentParser):
    """Usage errors as ConfigError (exit 2, one line), named by the subcommand ("run: ...")."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        raise ConfigError(f"{command}: {message}" if command else message)


def seconds(value: str | None, option: str, default: float | None, zero: bool = False) -> float | None:
    """A number of seconds given to `option` (0 allowed where it means off); `default` when unset."""
    if value is None or value == "":
        return default
    try:
        n = float(value)
    except ValueError:
        n = -1.0
    if not (n > 0 or (zero and n == 0)) or n != n or n == float("inf"):
        raise ConfigError(f"{option} must be a {'non-negative' if zero else 'positive'} number of seconds "
                          f"(got {value!r})")
    return n
