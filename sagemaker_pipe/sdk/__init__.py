"""Pipe mode inside the SageMaker Python SDK's own local mode (`pip install 'sagemaker-pipe[sdk]'`).

    from sagemaker_pipe.sdk import PipeLocalSession   # SDK v2 (sagemaker 2.x): Estimator.fit()
    from sagemaker_pipe.sdk import local_pipe_mode    # SDK v3 (sagemaker-train): ModelTrainer.train()

Each name imports its own SDK only when used: the two SDKs cannot share one environment.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PipeLocalSession", "local_pipe_mode"]


def __getattr__(name: str) -> Any:
    if name == "PipeLocalSession":
        from sagemaker_pipe.sdk.v2 import PipeLocalSession

        return PipeLocalSession
    if name == "local_pipe_mode":
        from sagemaker_pipe.sdk.v3 import local_pipe_mode

        return local_pipe_mode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
