"""SDK v3 (`sagemaker-train`): `local_pipe_mode()`, inside which ModelTrainer.train() in LOCAL_CONTAINER mode has Pipe.

    with local_pipe_mode():
        trainer = ModelTrainer(training_image=..., training_mode=Mode.LOCAL_CONTAINER,
                               training_input_mode="Pipe", compute=Compute(instance_type="local", instance_count=2))
        trainer.train(input_data_config=[Channel(channel_name="train", data_source=..., input_mode="Pipe")])

Inside the block ModelTrainer builds `_PipeLocalContainer`s instead of the SDK's `_LocalContainer`:
the SDK keeps the plain File channels; sagemaker-pipe starts when the compose file is written and
stops before the SDK collects the artifacts and deletes the host folders.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sagemaker.core.utils.utils import serialize
from sagemaker.train import model_trainer as sdk_trainer
from sagemaker.train.local import local_container as sdk_local

from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.sdk.channels import ChannelSplit, split_channels
from sagemaker_pipe.sdk.internals import check_v3, swapped
from sagemaker_pipe.sdk.job import PipeJob, aws_env

_SWAP = threading.Lock()  # ModelTrainer.train looks the container class up in its module
_JOB_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("training_input_mode", default="File")


@contextlib.contextmanager
def local_pipe_mode(sidecar_image: str | None = None) -> Iterator[None]:
    """Within this block, local-container training serves Pipe channels (and sharded File channels) with sagemaker-pipe.

    sidecar_image: run sagemaker-pipe as this image, one container per host, inside the SDK's
    compose project, instead of on the host (Docker Desktop: FIFOs do not cross its VM).
    """
    check_v3()
    container = functools.partial(_pipe_container, sidecar_image=sidecar_image)
    train = _with_job_mode(sdk_trainer.ModelTrainer.train)
    with _SWAP, swapped(sdk_trainer, "_LocalContainer", container), swapped(sdk_trainer.ModelTrainer, "train", train):
        yield


def _with_job_mode(train: Callable[..., Any]) -> Callable[..., Any]:
    """ModelTrainer.train, telling the container the job's TrainingInputMode (which the SDK does not pass on)."""
    @functools.wraps(train)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _JOB_MODE.set(str(self.training_input_mode or "File"))
        try:
            return train(self, *args, **kwargs)
        finally:
            _JOB_MODE.reset(token)
    return wrapper


def _pipe_container(*, sidecar_image: str | None, **kwargs: Any) -> _PipeLocalContainer:
    channels = kwargs.get("input_data_config") or []
    split = split_channels([serialize(c) for c in channels], _JOB_MODE.get())
    # The SDK sees only its own channels: nothing to download, nothing to refuse.
    kwargs["input_data_config"] = [c for c in channels if c.channel_name in split.sdk_channels]
    container = _PipeLocalContainer(**kwargs)
    container._pipe_split = split
    container._sidecar_image = sidecar_image
    return container


class _PipeLocalContainer(sdk_local._LocalContainer):
    """The SDK's local container set, with sagemaker-pipe started before compose and stopped after it."""

    _pipe_split: ChannelSplit | None = None
    _sidecar_image: str | None = None
    _pipe: PipeJob | None = None

    def train(self, wait: bool) -> str:
        assert self._pipe_split is not None
        if not wait and self._pipe_split.served:
            raise ConfigError("train(wait=False) cannot serve Pipe channels in local mode: the SDK would delete the "
                              "host folders holding the FIFOs while the containers run; use wait=True")
        try:
            return super().train(wait)
        finally:
            if self._pipe is not None:
                self._pipe.finish()
                self._pipe.check()  # a failed stream fails the job, whatever compose said

    def _generate_compose_file(self, environment: dict[str, str], volumes: list[str]) -> dict:
        content = super()._generate_compose_file(environment, volumes)
        assert self._pipe_split is not None
        boto_session = self.sagemaker_session.boto_session if self.sagemaker_session is not None else None
        self._pipe = PipeJob(self._pipe_split, self.hosts or [], self.container_root,
                             aws=aws_env(boto_session, None), sidecar_image=self._sidecar_image)
        compose_file = Path(self.container_root) / sdk_local.DOCKER_COMPOSE_FILENAME
        return self._pipe.start(content, compose_file, self._get_compose_cmd_prefix())

    def retrieve_artifacts(self, compose_data: dict) -> str:
        if self._pipe is not None:
            self._pipe.finish()  # before the SDK deletes the host folders the FIFOs are in
        return super().retrieve_artifacts(compose_data)
