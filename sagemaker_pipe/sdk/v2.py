"""SDK v2 (`sagemaker` 2.x): `PipeLocalSession`, a drop-in for `sagemaker.local.LocalSession` with Pipe mode.

    estimator = Estimator(..., instance_type="local", instance_count=2, input_mode="Pipe",
                          sagemaker_session=PipeLocalSession())
    estimator.fit({"train": TrainingInput("s3://bucket/train/", distribution="ShardedByS3Key")})

Its client hands the SDK only the plain File channels, and builds the job's containers with
`_PipeContainer`, which starts sagemaker-pipe once the SDK has written its config files and
compose file (in `_generate_compose_file("train")`, just before `docker compose up`) and stops
it before the SDK collects the artifacts and deletes the host folders.

SDK v2's local mode runs the whole job inside `create_training_job`, so `fit(wait=False)` still
returns only when the job is over: there is no detached run to refuse.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from sagemaker.local import image as sdk_image
from sagemaker.local import local_session as sdk_session
from sagemaker.local.local_session import LocalSagemakerClient, LocalSession

from sagemaker_pipe.sdk.channels import ChannelSplit, split_channels
from sagemaker_pipe.sdk.internals import check_v2, swapped
from sagemaker_pipe.sdk.job import PipeJob, aws_env

_SWAP = threading.Lock()  # create_training_job looks the container class up in its module


class PipeLocalSession(LocalSession):
    """LocalSession whose training jobs serve Pipe channels (and sharded File channels) with sagemaker-pipe.

    sidecar_image: run sagemaker-pipe as this image, one container per host, inside the SDK's
    compose project, instead of on the host (Docker Desktop: FIFOs do not cross its VM).
    """

    def __init__(self, *args: Any, sidecar_image: str | None = None, **kwargs: Any) -> None:
        check_v2()
        self.sidecar_image = sidecar_image
        super().__init__(*args, **kwargs)

    def _initialize(self, *args: Any, **kwargs: Any) -> None:
        super()._initialize(*args, **kwargs)
        self.sagemaker_client = _PipeSagemakerClient(self)


class _PipeSagemakerClient(LocalSagemakerClient):
    def create_training_job(self, TrainingJobName: str, AlgorithmSpecification: dict, OutputDataConfig: dict,
                            ResourceConfig: dict, InputDataConfig: list | None = None,
                            Environment: dict | None = None, **kwargs: Any) -> None:
        channels = InputDataConfig or []
        split = split_channels(channels, AlgorithmSpecification.get("TrainingInputMode", "File"))
        sdk_channels = [c for c in channels if c["ChannelName"] in split.sdk_channels]
        container = functools.partial(_PipeContainer, split=split,
                                      sidecar_image=getattr(self.sagemaker_session, "sidecar_image", None))
        with _SWAP, swapped(sdk_session, "_SageMakerContainer", container):
            super().create_training_job(TrainingJobName, AlgorithmSpecification, OutputDataConfig, ResourceConfig,
                                        InputDataConfig=sdk_channels, Environment=Environment, **kwargs)


class _PipeContainer(sdk_image._SageMakerContainer):
    """The SDK's container set, with sagemaker-pipe started before compose and stopped after it."""

    def __init__(self, *args: Any, split: ChannelSplit, sidecar_image: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipe_split = split
        self.sidecar_image = sidecar_image
        self.pipe: PipeJob | None = None

    def train(self, input_data_config: Any, output_data_config: Any, hyperparameters: Any, environment: Any,
              job_name: str) -> Any:
        try:
            return super().train(input_data_config, output_data_config, hyperparameters, environment, job_name)
        finally:
            if self.pipe is not None:
                self.pipe.finish()
                self.pipe.check()  # a failed stream fails the job, whatever compose said

    def _generate_compose_file(self, command: str, additional_volumes: Any = None,
                               additional_env_vars: Any = None) -> dict:
        content = super()._generate_compose_file(command, additional_volumes, additional_env_vars)
        if command != "train":
            return content
        session = self.sagemaker_session
        self.pipe = PipeJob(self.pipe_split, self.hosts, self.container_root,
                            aws=aws_env(session.boto_session, getattr(session, "s3_endpoint_url", None)),
                            sidecar_image=self.sidecar_image)
        compose_file = Path(self.container_root) / sdk_image.DOCKER_COMPOSE_FILENAME
        # _compose() extends compose_cmd_prefix in place: take the bare prefix from a fresh lookup
        # (SDKs before `docker compose` v2 support run plain docker-compose).
        lookup = getattr(self, "_get_compose_cmd_prefix", lambda: ["docker-compose"])
        return self.pipe.start(content, compose_file, lookup())

    def retrieve_artifacts(self, compose_data: dict, output_data_config: Any, job_name: str) -> Any:
        if self.pipe is not None:
            self.pipe.finish()  # before the SDK deletes the host folders the FIFOs are in
        return super().retrieve_artifacts(compose_data, output_data_config, job_name)
