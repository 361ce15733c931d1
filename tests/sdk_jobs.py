"""Runs one local-mode training job through a real SageMaker SDK, inside that SDK's own venv.

    <sdk venv>/bin/python sdk_jobs.py JOB_JSON

JOB_JSON: {"sdk": "v2" | "v3", "image", "instances", "job_mode", "channels": [...], "hyperparameters",
"container_root", "sidecar_image", "s3_endpoint", "wait"}; each channel: {"name", "uri", and any of
"input_mode", "distribution", "compression", "record_wrapping", "shuffle_seed", "s3_data_type",
"attribute_names", "content_type"}. Prints one line `RESULT {"ok": true, "model_data": ...}` or
`RESULT {"ok": false, "type": ..., "message": ...}`.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
NO_TELEMETRY = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


def run_v2(job: dict[str, Any]) -> str:
    import boto3
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import ShuffleConfig, TrainingInput

    from sagemaker_pipe.sdk import PipeLocalSession

    session = PipeLocalSession(boto_session=boto3.Session(), s3_endpoint_url=job.get("s3_endpoint"),
                               sagemaker_config=NO_TELEMETRY, sidecar_image=job.get("sidecar_image"))
    session.config = {"local": {"local_code": True, "container_root": job["container_root"]}}
    estimator = Estimator(
        image_uri=job["image"], role=ROLE, instance_count=job["instances"], instance_type="local",
        input_mode=job["job_mode"], sagemaker_session=session, hyperparameters=job["hyperparameters"],
        output_path=f"file://{job['container_root']}/output",
    )
    inputs = {}
    for c in job["channels"]:
        inputs[c["name"]] = TrainingInput(
            c["uri"], distribution=c.get("distribution"), compression=c.get("compression"),
            record_wrapping=c.get("record_wrapping"), s3_data_type=c.get("s3_data_type", "S3Prefix"),
            shuffle_config=ShuffleConfig(c["shuffle_seed"]) if "shuffle_seed" in c else None,
            attribute_names=c.get("attribute_names"), input_mode=c.get("input_mode"),
            content_type=c.get("content_type"),
        )
    estimator.fit(inputs, wait=job.get("wait", True), logs=False)
    return estimator.model_data


def run_v3(job: dict[str, Any]) -> str:
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import Channel, DataSource, FileSystemDataSource, S3DataSource, ShuffleConfig
    from sagemaker.train.configs import Compute, OutputDataConfig
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    from sagemaker_pipe.sdk import local_pipe_mode

    channels = []
    for c in job["channels"]:
        if c["uri"].startswith("file://") and not {"distribution", "s3_data_type"} & set(c):
            # a local folder, as ModelTrainer itself makes it in LOCAL_CONTAINER mode
            local = FileSystemDataSource.model_construct(directory_path=c["uri"][7:], file_system_type="EFS")
            source = {"file_system_data_source": local}
        else:
            source = {"s3_data_source": S3DataSource(
                s3_uri=c["uri"], s3_data_type=c.get("s3_data_type", "S3Prefix"),
                s3_data_distribution_type=c.get("distribution", "FullyReplicated"),
                **({"attribute_names": c["attribute_names"]} if "attribute_names" in c else {}))}
        extra = {k: c[v] for k, v in (("input_mode", "input_mode"), ("compression_type", "compression"),
                                      ("record_wrapper_type", "record_wrapping"), ("content_type", "content_type"))
                 if v in c}
        if "shuffle_seed" in c:
            extra["shuffle_config"] = ShuffleConfig(seed=c["shuffle_seed"])
        channels.append(Channel(channel_name=c["name"], data_source=DataSource(**source), **extra))
    with local_pipe_mode(sidecar_image=job.get("sidecar_image")):
        trainer = ModelTrainer(
            training_image=job["image"], role=ROLE, training_mode=Mode.LOCAL_CONTAINER,
            training_input_mode=job["job_mode"], sagemaker_session=Session(sagemaker_config=NO_TELEMETRY),
            compute=Compute(instance_type="local", instance_count=job["instances"]),
            hyperparameters=job["hyperparameters"], local_container_root=job["container_root"],
            output_data_config=OutputDataConfig(s3_output_path=f"file://{job['container_root']}/output"),
        )
        trainer.train(input_data_config=channels, wait=job.get("wait", True), logs=False)
    return f"file://{job['container_root']}/compressed_artifacts/model.tar.gz"


def break_internals(sdk: str) -> None:
    """Stand for an SDK whose local mode changed: a hooked method with other parameters."""
    if sdk == "v2":
        from sagemaker.local.image import _SageMakerContainer as container
    else:
        from sagemaker.train.local.local_container import _LocalContainer as container
    container._generate_compose_file = lambda self, spec: None


def main() -> None:
    job = json.loads(sys.argv[1])
    if job.get("break_internals"):
        break_internals(job["sdk"])
    try:
        model_data = (run_v2 if job["sdk"] == "v2" else run_v3)(job)
        result = {"ok": True, "model_data": model_data}
    except Exception as e:  # the test checks the type and the message
        traceback.print_exc()
        result = {"ok": False, "type": type(e).__name__, "message": str(e)}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
