"""Channel-file typos are named, with "did you mean" (issue 14), through the installed command.

Every top-level key of CreateTrainingJob and `aws sagemaker describe-training-job` stays accepted:
the list is taken here from botocore's own service model, not from the package's constant.
"""

from __future__ import annotations

import sys

import botocore.session
import pytest
from conftest import REPO, channel, error_line, write_channel_file, write_tree

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sagemaker_pipe.fields import TRAINING_JOB_KEYS  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def api_keys() -> set[str]:
    model = botocore.session.get_session().get_service_model("sagemaker")
    return (set(model.operation_model("DescribeTrainingJob").output_shape.members)
            | set(model.operation_model("CreateTrainingJob").input_shape.members))


def test_the_frozen_list_covers_botocores_training_job_keys() -> None:
    missing = api_keys() - TRAINING_JOB_KEYS
    assert not missing, f"add to fields.TRAINING_JOB_KEYS: {sorted(missing)}"


def test_every_describe_training_job_key_is_accepted(tmp_path, sidecar) -> None:
    data = write_tree(tmp_path / "train", {"a": b"x"})
    doc = {key: {} for key in api_keys()}
    doc.update(InputDataConfig=[channel("train", data)], HyperParameters={"lr": "0.1"}, **{"x-mine": {"a": 1}},
               AlgorithmSpecification={"TrainingInputMode": "Pipe", "TrainingImage": "x"},
               ResourceConfig={"InstanceCount": 2, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1},
               TrainingJobName="job", TrainingJobStatus="Completed", ResponseMetadata={"HTTPStatusCode": 200})
    p = sidecar.run("validate", write_channel_file(tmp_path / "describe.json", doc, fmt="json"), installed=True)
    assert p.poll() == 0, p.stderr
    assert "host algo-1 of 2" in p.stdout


def _train(tmp_path, **fields):
    return channel("train", write_tree(tmp_path / "train", {"a": b"x"}), **fields)


def _no_name(tmp_path):
    ch = _train(tmp_path)
    ch["ChanelName"] = ch.pop("ChannelName")
    return ch


TYPOS = {
    "top-level-mode": (lambda t: {"TrainingInputMod": "File", "InputDataConfig": [_train(t)]},
                       "unknown top-level field TrainingInputMod (did you mean TrainingInputMode?)"),
    "top-level-hyper": (lambda t: {"HyperParameter": {"a": 1}, "InputDataConfig": [_train(t)]},
                        "unknown top-level field HyperParameter (did you mean HyperParameters?)"),
    "top-level-resource": (lambda t: {"ResourceConfg": {"InstanceCount": 2}, "InputDataConfig": [_train(t)]},
                           "unknown top-level field ResourceConfg (did you mean ResourceConfig?)"),
    "top-level-input": (lambda t: {"InputDataConfg": [_train(t)]},
                        "unknown top-level field InputDataConfg (did you mean InputDataConfig?)"),
    "top-level-far": (lambda t: {"Zebra": 1, "InputDataConfig": [_train(t)]},
                      "unknown top-level field Zebra (keys of your own, such as YAML anchors, start with x-)"),
    "channel-name": (lambda t: [_no_name(t)],
                     "channel #1: ChannelName is required; unknown field ChanelName (did you mean ChannelName?)"),
    "channel-field": (lambda t: [_train(t, Compression="Gzip")],
                      "channel 'train': unknown field Compression (did you mean CompressionType?)"),
    "s3-field": (lambda t: [_train(t, s3_S3DataTyp="S3Prefix")],
                 "unknown field DataSource.S3DataSource.S3DataTyp (did you mean S3DataType?)"),
    "shuffle-field": (lambda t: [_train(t, ShuffleConfig={"seed": 1})],
                      "unknown field ShuffleConfig.seed (did you mean Seed?)"),
    "enum-recordio": (lambda t: [_train(t, RecordWrapperType="Recordio")],
                      "RecordWrapperType must be one of None, RecordIO (got 'Recordio'; did you mean RecordIO?)"),
    "enum-mode": (lambda t: [_train(t, InputMode="pipe")], "(got 'pipe'; did you mean Pipe?)"),
    "enum-far": (lambda t: [_train(t, CompressionType="bz2")], "CompressionType must be one of None, Gzip (got 'bz2')"),
    "job-mode": (lambda t: {"TrainingInputMode": "fastfile", "InputDataConfig": [_train(t)]},
                 "(got 'fastfile'; did you mean FastFile?)"),
}


@pytest.mark.parametrize("case", sorted(TYPOS))
def test_typos_are_named_with_the_near_miss(case, tmp_path, sidecar) -> None:
    build, want = TYPOS[case]
    cfg = write_channel_file(tmp_path / "job.yaml", build(tmp_path))
    p = sidecar.run("validate", cfg, installed=True)
    assert p.poll() == 2, p.stderr
    line = error_line(p.stderr)
    assert want in line, line
    if case.endswith("-far"):
        assert "did you mean" not in line, line
    assert p.stdout == ""


def test_validate_checks_local_paths_without_listing_them(tmp_path, sidecar) -> None:
    missing = write_channel_file(tmp_path / "missing.yaml", [channel("train", tmp_path / "nowhere")])
    p = sidecar.run("validate", missing, installed=True)
    assert p.poll() == 2, p.stderr
    assert f"channel 'train': DataSource.S3DataSource.S3Uri {tmp_path / 'nowhere'}: no such file or folder " \
        "(paths as a container sees them? add --skip-path-check)" in error_line(p.stderr)
    p = sidecar.run("validate", missing, "--skip-path-check", installed=True)
    assert p.poll() == 0, p.stderr

    (tmp_path / "empty").mkdir()
    empty = write_channel_file(tmp_path / "empty.yaml", [channel("train", tmp_path / "empty")])
    p = sidecar.run("validate", empty, installed=True)
    assert p.poll() == 0, p.stderr  # exists; that it holds nothing is for --check-sources, which lists
    p = sidecar.run("validate", empty, "--check-sources", installed=True)
    assert p.poll() == 2 and "no objects to stream" in error_line(p.stderr), p.stderr
