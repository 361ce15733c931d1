"""`sagemaker-pipe validate` and `sagemaker-pipe from-job` (issue 7), run as real processes."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import yaml
from conftest import base_env, channel, error_line, fifo, pattern, wait_for_path, write_channel_file, write_tree
from s3_helpers import s3_env

pytestmark = pytest.mark.timeout(60)


def job_file(tmp_path, **extra_channels):
    train = write_tree(tmp_path / "train", {"a.csv": b"1,2\n", "b/c.csv": b"3,4,5\n"})
    val = write_tree(tmp_path / "val", {"v.csv.gz": b"\x1f\x8b not really"})
    return write_channel_file(tmp_path / "job.yaml", {
        "InputDataConfig": [
            channel("train", train, RecordWrapperType="RecordIO", ShuffleConfig={"Seed": 42},
                    ContentType="text/csv", s3_S3DataDistributionType="ShardedByS3Key"),
            channel("validation", val, InputMode="File", CompressionType="Gzip"),
        ],
        "HyperParameters": {"epochs": 3},
        "ResourceConfig": {"InstanceCount": 2},
    })


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------

def test_validate_prints_the_plan_without_touching_sources(tmp_path, sidecar):
    cfg = job_file(tmp_path)
    p = sidecar.run("validate", cfg, "--ml-root", "/opt/ml")
    assert p.poll() == 0, p.stderr
    out = p.stdout
    assert "2 channels, host algo-1 of 2 (algo-1, algo-2), 1 hyperparameter" in out
    assert "channel train: Pipe mode" in out and "channel validation: File mode" in out
    assert "data type:      S3Prefix" in out
    assert "record wrapper: RecordIO (each object becomes one record)" in out
    assert "shuffle:        seed 42, a new order every epoch" in out
    assert "distribution:   ShardedByS3Key over 2 hosts" in out
    assert "algorithm sees: /opt/ml/input/data/train_0, train_1, train_2, ... (one FIFO per epoch)" in out
    assert "algorithm sees: /opt/ml/input/data/validation/ (a folder" in out
    assert "compression:    Gzip (not applied in File mode)" in out
    assert "objects:" not in out  # not listed without --check-sources
    assert out.count("note:") == 1 and "note:           CompressionType Gzip applies only in Pipe mode" in out
    assert out.rstrip().endswith("valid (sources not checked: add --check-sources to list them and read manifests)")
    assert p.stderr == ""


def test_validate_check_sources_counts_objects_and_bytes(tmp_path, sidecar):
    cfg = job_file(tmp_path)
    p = sidecar.run("validate", cfg, "--check-sources")
    assert p.poll() == 0, p.stderr
    assert "objects:        2 objects, 10 bytes (this host, epoch 0: 1 object, " in p.stdout
    assert "objects:        1 object, 13 bytes" in p.stdout
    assert "(a folder, filled before the algorithm starts: 1 file)" in p.stdout
    assert p.stdout.rstrip().endswith("valid: sources checked")

    j = sidecar.run("validate", cfg, "--check-sources", "--json", "--hosts", "algo-1")
    assert j.poll() == 0, j.stderr
    doc = json.loads(j.stdout)
    train, val = doc["channels"]
    assert (train["mode"], train["objects"], train["bytes"], train["record_wrapper"]) == ("Pipe", 2, 10, "RecordIO")
    assert train["fifos"][0].endswith("/input/data/train_0") and train["shuffle_seed"] == 42
    assert (val["mode"], val["objects"], val["bytes"], val["compression"]) == ("File", 1, 13, "Gzip")
    assert val["folder"].endswith("/input/data/validation/")
    assert doc["hosts"] == ["algo-1"] and doc["sources_checked"] is True


@pytest.mark.parametrize("case", ["bad-field", "missing-source", "no-file", "unknown-option"])
def test_validate_errors_are_one_line_exit_2(tmp_path, sidecar, case):
    if case == "bad-field":
        cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", tmp_path, CompressionType="Zip")])
        args, want = [cfg], "channel 'train': CompressionType must be one of None, Gzip (got 'Zip'; did you mean Gzip?)"
    elif case == "missing-source":
        cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", tmp_path / "nowhere")])
        args, want = [cfg, "--check-sources"], "channel 'train':"
    elif case == "no-file":
        args, want = [tmp_path / "absent.yaml"], "cannot read channel file"
    else:
        args, want = [tmp_path / "x.yaml", "--frobnicate"], "unrecognized arguments: --frobnicate"
    p = sidecar.run("validate", *args)
    assert p.poll() == 2, p.stderr
    assert want in error_line(p.stderr)
    assert p.stdout == ""


def test_validate_without_check_sources_does_not_list(tmp_path, sidecar):
    (tmp_path / "empty").mkdir()  # exists (validate checks that), holds nothing (only listing finds that)
    cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", tmp_path / "empty")])
    p = sidecar.run("validate", cfg)
    assert p.poll() == 0, p.stderr


def test_validate_check_sources_on_s3_counts_and_refuses_escaping_file_keys(moto_s3, seeded_bucket, tmp_path,
                                                                            sidecar):
    bucket = seeded_bucket(moto_s3, {"d/a.bin": b"x" * 100, "d/sub/b.bin": b"y" * 23, "e/../up": b"z"})
    cfg = write_channel_file(tmp_path / "j.yaml", [channel("train", f"s3://{bucket}/d/")])
    p = sidecar.run("validate", cfg, "--check-sources", env=s3_env(moto_s3))
    assert p.poll() == 0, p.stderr
    assert "objects:        2 objects, 123 bytes" in p.stdout

    bad = write_channel_file(tmp_path / "bad.yaml", [channel("up", f"s3://{bucket}/e/", InputMode="File")])
    b = sidecar.run("validate", bad, env=s3_env(moto_s3))
    assert b.poll() == 0, b.stderr  # keys are only known once listed
    b = sidecar.run("validate", bad, "--check-sources", env=s3_env(moto_s3))
    assert b.poll() == 2, b.stderr
    assert "channel 'up': object key '../up' contains '..'" in error_line(b.stderr)


# --------------------------------------------------------------------------------------------
# from-job
# --------------------------------------------------------------------------------------------

def describe_doc(bucket: str = "my-bucket") -> dict:
    """The shape `aws sagemaker describe-training-job` prints (trimmed values, real field names)."""
    return {
        "TrainingJobName": "xgb-2024-01-01",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/xgb-2024-01-01",
        "AlgorithmSpecification": {"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/algo:1",
                                   "TrainingInputMode": "Pipe", "EnableSageMakerMetricsTimeSeries": False},
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "InputDataConfig": [
            {"ChannelName": "train",
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/data/train/",
                                             "S3DataDistributionType": "FullyReplicated"}},
             "ContentType": "text/csv", "CompressionType": "None", "RecordWrapperType": "RecordIO",
             "ShuffleConfig": {"Seed": 7}},
            {"ChannelName": "validation",
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/data/validation",
                                             "S3DataDistributionType": "FullyReplicated",
                                             "ModelAccessConfig": {"AcceptEula": True}}},
             "InputMode": "File", "CompressionType": "None", "RecordWrapperType": "None"},
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "HyperParameters": {"num_round": "100", "objective": "binary:logistic"},
        "TrainingJobStatus": "Completed",
        "CreationTime": "2024-01-01T00:00:00.000000+00:00",
    }


def test_from_job_maps_prefixes_and_the_output_runs(tmp_path, ml_root, sidecar, consumer):
    train = write_tree(tmp_path / "data" / "train", {"a.csv": b"1\n", "b.csv": b"2\n"})
    write_tree(tmp_path / "valdata", {"v.csv": b"v\n"})
    describe = tmp_path / "describe.json"
    describe.write_text(json.dumps(describe_doc(), indent=2))
    p = sidecar.run("from-job", describe, "--map", "s3://my-bucket/data=./data",
                    "--map", "s3://my-bucket/data/validation=./valdata", cwd=tmp_path)
    assert p.poll() == 0, p.stderr
    doc = yaml.safe_load(p.stdout)
    assert doc["TrainingInputMode"] == "Pipe"
    assert doc["HyperParameters"] == {"num_round": "100", "objective": "binary:logistic"}
    assert doc["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}
    # kept, so that `compose` and `run --image` default to the job's image
    assert doc["AlgorithmSpecification"] == {"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/algo:1"}
    tr, va = doc["InputDataConfig"]
    assert tr["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix", "S3Uri": "./data/train/",
                                                "S3DataDistributionType": "FullyReplicated"}
    assert (tr["RecordWrapperType"], tr["ShuffleConfig"], tr["ContentType"]) == ("RecordIO", {"Seed": 7}, "text/csv")
    assert va["DataSource"]["S3DataSource"]["S3Uri"] == "./valdata"  # the longer prefix won
    assert va["InputMode"] == "File"
    assert "ModelAccessConfig" in p.stderr and "dropped" in p.stderr
    for k in ("TrainingJobArn", "RoleArn", "OutputDataConfig", "StoppingCondition"):
        assert k not in doc

    out = tmp_path / "job.yaml"
    out.write_text(p.stdout)
    v = sidecar.run("validate", out, "--check-sources")
    assert v.poll() == 0, v.stderr
    side = sidecar.serve(out, ml_root, epochs=1)
    wait_for_path(fifo(ml_root, "train", 0))
    assert (ml_root / "input/data/validation/v.csv").read_bytes() == b"v\n"
    import recordio
    got = consumer(pattern(ml_root, "train"), epochs=1).results()
    assert got[0]["bytes"] == len(b"".join(recordio.encode(x) for x in (b"1\n", b"2\n")))
    assert side.wait(20) == 0, side.stderr
    assert json.loads((ml_root / "input/config/hyperparameters.json").read_text()) == doc["HyperParameters"]
    assert train.exists()


def test_from_job_without_map_keeps_s3_and_loads(tmp_path, sidecar, moto_s3, seeded_bucket, ml_root, consumer):
    bucket = seeded_bucket(moto_s3, {"data/train/a.csv": b"a\n", "data/validation/v.csv": b"v\n"})
    describe = tmp_path / "describe.json"
    doc = describe_doc(bucket)
    groups = [{"InstanceGroupName": "group-a", "InstanceType": "ml.m5.xlarge", "InstanceCount": 2},
              {"InstanceGroupName": "group-b", "InstanceType": "ml.c5.xlarge", "InstanceCount": 1}]
    doc["ResourceConfig"] = {"InstanceGroups": groups, "VolumeSizeInGB": 30}
    for c in doc["InputDataConfig"]:  # SageMaker: on every channel or on none
        c["DataSource"]["S3DataSource"]["InstanceGroupNames"] = ["group-a"]
    describe.write_text(json.dumps(doc))
    p = sidecar.run("from-job", describe)
    assert p.poll() == 0, p.stderr
    assert "still reads s3://" in p.stderr
    out = tmp_path / "job.yaml"
    out.write_text(p.stdout)
    converted = yaml.safe_load(p.stdout)
    assert converted["ResourceConfig"] == {"InstanceGroups": groups}
    assert [c["DataSource"]["S3DataSource"]["InstanceGroupNames"] for c in converted["InputDataConfig"]] == \
        [["group-a"], ["group-a"]]
    side = sidecar.serve(out, ml_root, "--progress-interval", "0", epochs=1, env=s3_env(moto_s3))
    wait_for_path(fifo(ml_root, "train", 0))
    # S3Uri .../data/validation (no trailing slash): keys are relative to the prefix's folder, data/
    assert (ml_root / "input/data/validation/validation/v.csv").read_bytes() == b"v\n"
    consumer(pattern(ml_root, "train"), epochs=1).results()
    assert side.wait(20) == 0, side.stderr


def test_from_job_reads_stdin(tmp_path, procs):
    (tmp_path / "describe.json").write_text(json.dumps(describe_doc()))
    p = procs.start(["sh", "-c", f'"{sys.executable}" -m sagemaker_pipe from-job - < describe.json'],
                    "from-job", cwd=tmp_path, env=base_env())
    assert p.wait(20) == 0, p.stderr
    assert yaml.safe_load(p.stdout)["InputDataConfig"][0]["ChannelName"] == "train"


@pytest.mark.parametrize("content, args, want", [
    ("{}", [], "expected the JSON of `aws sagemaker describe-training-job`"),
    ("{not json", [], "is not valid JSON"),
    (json.dumps({"InputDataConfig": [{"ChannelName": "x", "DataSource": {"FileSystemDataSource": {}}}]}), [],
     "channel 'x': only DataSource.S3DataSource can be served locally"),
    (json.dumps({"InputDataConfig": [{"ChannelName": "x", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/k"}},
                                      "CompressionType": "Zip"}]}), [],
     "channel 'x': CompressionType must be one of None, Gzip (got 'Zip'; did you mean Gzip?)"),
    ("{}", ["--map", "./data"], "--map './data': expected s3://bucket/prefix=LOCAL_FOLDER"),
])
def test_from_job_errors_are_one_line_exit_2(tmp_path, sidecar, content, args, want):
    describe = tmp_path / "d.json"
    describe.write_text(content)
    p = sidecar.run("from-job", describe, *args)
    assert p.poll() == 2, p.stderr
    assert want in error_line(p.stderr)
    assert p.stdout == ""


def test_from_job_output_is_what_load_job_reads(tmp_path, sidecar):
    """The same job through from-job and straight from the describe JSON: the same config files."""
    write_tree(tmp_path / "data" / "train", {"a.csv": b"1\n"})
    write_tree(tmp_path / "data" / "validation", {"v.csv": b"v\n"})
    describe = tmp_path / "describe.json"
    describe.write_text(json.dumps(describe_doc()))
    p = sidecar.run("from-job", describe, "--map", "s3://my-bucket/data/=data", cwd=tmp_path)
    assert p.poll() == 0, p.stderr
    (tmp_path / "job.yaml").write_text(p.stdout)
    direct = describe_doc()
    for c in direct["InputDataConfig"]:
        s3 = c["DataSource"]["S3DataSource"]
        s3.pop("ModelAccessConfig", None)
        s3["S3Uri"] = s3["S3Uri"].replace("s3://my-bucket/data/", str(tmp_path / "data") + "/")
    (tmp_path / "direct.json").write_text(json.dumps(direct))
    roots = {}
    for name, cfg in (("converted", "job.yaml"), ("direct", "direct.json")):
        roots[name] = tmp_path / name
        side = sidecar.serve(tmp_path / cfg, roots[name])
        wait_for_path(fifo(roots[name], "train", 0))
        side.send(signal.SIGTERM)
        assert side.wait(10) == 0, side.stderr
    for f in ("inputdataconfig.json", "hyperparameters.json", "resourceconfig.json"):
        a = json.loads((roots["converted"] / "input/config" / f).read_text())
        b = json.loads((roots["direct"] / "input/config" / f).read_text())
        assert a == b, f
    assert os.listdir(roots["converted"] / "input/data/validation") == ["v.csv"]
