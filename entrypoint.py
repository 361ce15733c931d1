#!/usr/bin/env python3
"""The container's entry point: the same main as `sagemaker-pipe`, with the container's defaults.

Environment variables (SAGEMAKER_PIPE_CONFIG, SAGEMAKER_PIPE_ML_ROOT, ...) and arguments override them.
"""

import sys

from sagemaker_pipe.cli import main
from sagemaker_pipe.layout import CONTAINER_CONFIG, CONTAINER_STATUS_FILE, DEFAULT_ML_ROOT

CONTAINER_DEFAULTS = {
    "config": CONTAINER_CONFIG,
    "ml_root": DEFAULT_ML_ROOT,
    "status_file": CONTAINER_STATUS_FILE,
}

if __name__ == "__main__":
    sys.exit(main(defaults=CONTAINER_DEFAULTS))
