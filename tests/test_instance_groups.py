"""resourceconfig.json as SageMaker writes it, and heterogeneous clusters (issue 18).

A job on N hosts is N sidecar processes (each its own ml-root, `--current-host algo-i`, the
cluster taken from the channel file's ResourceConfig) and N example algorithms reading the FIFOs
with SHOW_RECORDS=1 (the sha256 of every object they were given; tests/test_multihost.py's
helpers check the shares). Each host's config files are then read back by the real SageMaker
training toolkit: `sagemaker_training.environment.Environment()` in a fresh process with
SAGEMAKER_BASE_DIR at that host's ml-root (the toolkit evaluates its paths at import).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import base_env, channel, error_line, wait_for_path, write_channel_file
from test_multihost import SHARDED, TRAIN_PY, VALIDATION, assert_sharded, generate, generated, objects_of, shares

pytestmark = pytest.mark.timeout(120)

EPOCHS = 2
# What the toolkit makes of a host's files: every Environment property this issue is about.
PROBE = """
import json
from sagemaker_training import environment
env = environment.Environment()
keys = ("current_host", "hosts", "current_instance_type", "current_instance_group", "current_instance_group_hosts",
        "instance_groups", "is_hetero", "channel_input_dirs", "distribution_hosts", "distribution_instance_groups",
        "master_hostname", "network_interface_name")
print(json.dumps({k: getattr(env, k) for k in keys}))
"""
TWO_GROUPS = {"InstanceGroups": [
    {"InstanceGroupName": "data", "InstanceType": "ml.c5.xlarge", "InstanceCount": 2},
    {"InstanceGroupName": "dnn", "InstanceType": "ml.p3.2xlarge", "InstanceCount": 1},
]}


def toolkit_view(root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                          env=base_env(SAGEMAKER_BASE_DIR=str(root)))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def start_hosts(procs, tmp_path: Path, doc: dict, hosts: list[str]) -> dict:
    """One sidecar per host, told only which host it is: the cluster comes from ResourceConfig."""
    config = write_channel_file(tmp_path / "channels.yaml", doc)
    return {host: procs.start([sys.executable, "-m", "sagemaker_pipe", "--config", str(config), "--ml-root",
                               str(tmp_path / host), "--current-host", host, "--epochs", str(EPOCHS)],
                              kind=f"sidecar-{host}", env=base_env(), cwd=tmp_path)
            for host in hosts}


def read_all(procs, tmp_path: Path, sidecars: dict) -> dict[str, str]:
    """The example algorithm on every host (it reads the Pipe channels of its inputdataconfig.json)."""
    readers = {host: procs.start([sys.executable, str(TRAIN_PY)], kind=f"algorithm-{host}", cwd=tmp_path,
                                 env=base_env(ML_ROOT=str(tmp_path / host), EPOCHS=str(EPOCHS), WAIT_S="20",
                                              SHOW_RECORDS="1"))
               for host in sidecars}
    for host, reader in readers.items():
        assert reader.wait(60) == 0, f"{host}'s algorithm failed: {reader.stderr}"
    for host, side in sidecars.items():
        assert side.wait(20) == 0, f"{host}'s sidecar failed: {side.stderr}"
    return {host: reader.stdout for host, reader in readers.items()}


def test_homogeneous_job_with_an_instance_type_through_the_toolkit(procs, tmp_path):
    hosts = ["algo-1", "algo-2"]
    doc = {"InputDataConfig": [channel("train", SHARDED, RecordWrapperType="RecordIO",
                                       s3_S3DataDistributionType="ShardedByS3Key")],
           "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30}}
    outputs = read_all(procs, tmp_path, start_hosts(procs, tmp_path, doc, hosts))
    assert_sharded(shares(outputs, "train", EPOCHS), objects_of(SHARDED))
    for host in hosts:
        written = json.loads((tmp_path / host / "input/config/resourceconfig.json").read_text())
        assert written == {
            "current_host": host, "current_instance_type": "ml.g5.2xlarge", "current_group_name": "homogeneousCluster",
            "hosts": hosts, "network_interface_name": "eth0",
            "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.g5.2xlarge",
                                 "hosts": hosts}]}
        seen = toolkit_view(tmp_path / host)
        assert (seen["current_host"], seen["hosts"]) == (host, hosts)
        assert seen["current_instance_type"] == "ml.g5.2xlarge"
        assert seen["current_instance_group"] == "homogeneousCluster"
        assert seen["current_instance_group_hosts"] == hosts
        assert seen["instance_groups"] == ["homogeneousCluster"] and seen["is_hetero"] is False
        assert seen["channel_input_dirs"] == {"train": str(tmp_path / host / "input/data/train")}
        assert seen["network_interface_name"] == "eth0" and seen["master_hostname"] == "algo-1"


def test_two_groups_one_channel_for_one_group_through_the_toolkit(procs, tmp_path):
    hosts = ["algo-1", "algo-2", "algo-3"]
    doc = {
        "InputDataConfig": [
            channel("train", SHARDED, RecordWrapperType="RecordIO", s3_S3DataDistributionType="ShardedByS3Key",
                    s3_InstanceGroupNames=["data"]),
            channel("common", VALIDATION, RecordWrapperType="RecordIO", CompressionType="Gzip",
                    s3_InstanceGroupNames=["dnn", "data"]),
        ],
        "ResourceConfig": TWO_GROUPS,
        # the SageMaker SDK's `distribution={"instance_groups": [...]}` reaches the toolkit this way
        "HyperParameters": {"sagemaker_distribution_instance_groups": ["data"]},
    }
    sidecars = start_hosts(procs, tmp_path, doc, hosts)
    for host in hosts:  # every first FIFO of a host exists once its last channel's does
        wait_for_path(tmp_path / host / "input/data/common_0", timeout=20)
    entries = {host: sorted((tmp_path / host / "input/data").iterdir()) for host in hosts}
    for host in ("algo-1", "algo-2"):
        assert [p.name for p in entries[host]] == ["common_0", "train_0"], entries[host]
    assert [p.name for p in entries["algo-3"]] == ["common_0"]  # no FIFO, no folder for train

    outputs = read_all(procs, tmp_path, sidecars)
    # train: sharded over the two hosts that receive it, byte-exact, disjoint, every object each epoch
    assert_sharded(shares({h: outputs[h] for h in ("algo-1", "algo-2")}, "train", EPOCHS, cluster=hosts),
                   objects_of(SHARDED))
    assert "channel=train" not in outputs["algo-3"] and "channel=train" not in sidecars["algo-3"].stderr
    for by_host in shares(outputs, "common", EPOCHS, cluster=hosts):  # FullyReplicated over both groups
        assert all(got == objects_of(VALIDATION, gunzip=True) for got in by_host.values())

    group = {"algo-1": "data", "algo-2": "data", "algo-3": "dnn"}
    kind = {"data": "ml.c5.xlarge", "dnn": "ml.p3.2xlarge"}
    members = {"data": ["algo-1", "algo-2"], "dnn": ["algo-3"]}
    for host in hosts:
        root = tmp_path / host
        written = json.loads((root / "input/config/resourceconfig.json").read_text())
        assert written["instance_groups"] == [
            {"instance_group_name": "data", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1", "algo-2"]},
            {"instance_group_name": "dnn", "instance_type": "ml.p3.2xlarge", "hosts": ["algo-3"]}]
        channels = ["common", "train"] if group[host] == "data" else ["common"]
        assert sorted(json.loads((root / "input/config/inputdataconfig.json").read_text())) == channels
        seen = toolkit_view(root)
        assert (seen["current_host"], seen["hosts"]) == (host, hosts)
        assert seen["current_instance_type"] == kind[group[host]]
        assert seen["current_instance_group"] == group[host]
        assert seen["current_instance_group_hosts"] == members[group[host]]
        assert seen["instance_groups"] == ["data", "dnn"] and seen["is_hetero"] is True
        assert seen["channel_input_dirs"] == {c: str(root / "input/data" / c) for c in channels}
        assert seen["distribution_instance_groups"] == ["data"]
        assert seen["distribution_hosts"] == ["algo-1", "algo-2"] and seen["master_hostname"] == "algo-1"


# --------------------------------------------------------------------------------------------
# validate, compose, errors
# --------------------------------------------------------------------------------------------

def two_group_file(tmp_path: Path, **resource: object) -> Path:
    return write_channel_file(tmp_path / "job.yaml", {
        "InputDataConfig": [
            channel("train", "/data/train", s3_S3DataDistributionType="ShardedByS3Key", s3_InstanceGroupNames=["data"]),
            channel("common", "/data/validation", InputMode="File", s3_InstanceGroupNames=["data", "dnn"]),
        ],
        "ResourceConfig": dict(TWO_GROUPS, **resource),
    })


def test_validate_prints_each_hosts_group_and_channels(tmp_path, sidecar):
    cfg = two_group_file(tmp_path)
    p = sidecar.run("validate", cfg, "--current-host", "algo-3", "--skip-path-check")  # the containers' /data
    assert p.poll() == 0, p.stderr
    out = p.stdout
    assert "host algo-3 of 3 (algo-1, algo-2, algo-3)" in out
    assert "  algo-1  data, ml.c5.xlarge: train, common\n" in out
    assert "  algo-2  data, ml.c5.xlarge: train, common\n" in out
    assert "  algo-3  dnn, ml.p3.2xlarge: common  <- this host\n" in out
    assert "distribution:   ShardedByS3Key over 2 hosts" in out
    assert "groups:         data (algo-1, algo-2)" in out
    assert "algorithm sees: nothing on this host (not in the channel's instance groups)" in out
    j = sidecar.run("validate", cfg, "--json", "--skip-path-check")
    doc = json.loads(j.stdout)
    assert doc["cluster"][2] == {"host": "algo-3", "group": "dnn", "instance_type": "ml.p3.2xlarge",
                                 "channels": ["common"]}
    assert [(c["name"], c["receivers"], c["delivered"]) for c in doc["channels"]] == [
        ("train", ["algo-1", "algo-2"], True), ("common", ["algo-1", "algo-2", "algo-3"], True)]


def test_compose_builds_the_cluster_from_resource_config(tmp_path):
    data = tmp_path / "d"
    for sub in ("train", "validation"):
        (data / sub).mkdir(parents=True)
    cfg = two_group_file(tmp_path)
    doc, _ = generated("--algorithm-image", "algo", "--channels", str(cfg), "--data", str(data), cwd=tmp_path)
    hosts = ["algo-1", "algo-2", "algo-3"]
    assert sorted(doc["services"]) == sorted(hosts + [f"{h}-sidecar" for h in hosts])
    for host in hosts:  # each sidecar derives the cluster from the file; only its own name is passed
        assert doc["services"][f"{host}-sidecar"]["environment"] == {
            "SAGEMAKER_PIPE_CONFIG": "/config/channels.yaml", "SAGEMAKER_PIPE_CURRENT_HOST": host}
    same, _ = generated("--hosts", "3", "--algorithm-image", "algo", "--channels", str(cfg), "--data", str(data),
                        cwd=tmp_path)
    assert sorted(same["services"]) == sorted(doc["services"])

    wrong = generate("--hosts", "2", "--algorithm-image", "algo", "--channels", str(cfg), "--data", str(data))
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert "--hosts algo-1,algo-2 does not match the hosts of ResourceConfig.InstanceGroups" in error_line(wrong.stderr)
    bare = write_channel_file(tmp_path / "bare.yaml", [channel("train", "/data/train")])
    none = generate("--algorithm-image", "algo", "--channels", str(bare), "--data", str(data))
    assert none.returncode == 2 and "give --hosts N, or a ResourceConfig" in error_line(none.stderr)


def test_from_job_output_keeps_the_groups_and_the_sidecar_serves_them(tmp_path, sidecar):
    train = tmp_path / "train"
    train.mkdir()
    (train / "a.bin").write_bytes(b"a")
    describe = {"TrainingJobName": "hetero", "AlgorithmSpecification": {"TrainingInputMode": "Pipe"},
                "InputDataConfig": [channel("train", "s3://b/train/", s3_InstanceGroupNames=["dnn"])],
                "ResourceConfig": dict(TWO_GROUPS, VolumeSizeInGB=30)}
    (tmp_path / "d.json").write_text(json.dumps(describe))
    p = sidecar.run("from-job", tmp_path / "d.json", "--map", "s3://b/train=./train", cwd=tmp_path)
    assert p.poll() == 0, p.stderr
    converted = yaml.safe_load(p.stdout)
    assert converted["ResourceConfig"] == TWO_GROUPS
    (tmp_path / "job.yaml").write_text(p.stdout)
    v = sidecar.run("validate", tmp_path / "job.yaml", "--current-host", "algo-3", cwd=tmp_path)
    assert v.poll() == 0, v.stderr
    assert "  algo-1  data, ml.c5.xlarge: (no channels)\n" in v.stdout
    assert "  algo-3  dnn, ml.p3.2xlarge: train  <- this host\n" in v.stdout


@pytest.mark.parametrize("resource, channel_fields, want", [
    ({"InstanceGroups": TWO_GROUPS["InstanceGroups"], "InstanceType": "ml.m5.xlarge"}, {},
     "ResourceConfig.InstanceType cannot be given with ResourceConfig.InstanceGroups"),
    ({"InstanceGroups": TWO_GROUPS["InstanceGroups"] * 3}, {},
     "ResourceConfig.InstanceGroups must be a list of 1 to 5 instance groups"),
    ({"InstanceGroups": [{"InstanceGroupName": "a", "InstanceType": "ml.m5.xlarge", "InstanceCount": 1}] * 2}, {},
     "ResourceConfig.InstanceGroups[1].InstanceGroupName 'a' names two instance groups"),
    ({"InstanceGroups": [{"InstanceGroupName": "a", "InstanceType": "ml.m5.xlarge", "InstanceCount": -1}]}, {},
     "ResourceConfig.InstanceGroups[0].InstanceCount must be a whole number, 0 or more (got -1)"),
    ({"InstanceGroups": [{"InstanceGroupName": "a", "InstanceType": "ml.m5.xlarge", "InstanceCount": 0}]}, {},
     "ResourceConfig.InstanceGroups has no instances"),
    ({"InstanceGroups": [{"InstanceGroupName": "a", "InstanceCount": 1}]}, {},
     "ResourceConfig.InstanceGroups[0].InstanceType must be an instance type name (got None)"),
    ({"InstanceGroups": [{"InstanceGroupName": "a", "InstanceType": "t", "InstanceCount": 1, "Count": 2}]}, {},
     "ResourceConfig.InstanceGroups[0]: unknown field Count"),
    ({"InstanceCount": 2}, {"s3_InstanceGroupNames": ["data"]},
     "channel 'train': DataSource.S3DataSource.InstanceGroupNames needs ResourceConfig.InstanceGroups"),
    (TWO_GROUPS, {"s3_InstanceGroupNames": ["gpu"]},
     "channel 'train': DataSource.S3DataSource.InstanceGroupNames: 'gpu' is not an instance group of "
     "ResourceConfig.InstanceGroups ('data', 'dnn')"),
    (TWO_GROUPS, {"s3_InstanceGroupNames": ["data", "data"]},
     "channel 'train': DataSource.S3DataSource.InstanceGroupNames must be a list of 1 to 5 distinct"),
    (TWO_GROUPS, {"InstanceGroupNames": ["data"]},
     "channel 'train': InstanceGroupNames belongs in DataSource.S3DataSource"),
    (TWO_GROUPS, {"s3_InstanceGroupNames": ["data"], "other": True},
     "DataSource.S3DataSource.InstanceGroupNames is set on train but not on other; SageMaker needs it on every "
     "channel or on none"),
    ({"InstanceType": ""}, {}, "ResourceConfig.InstanceType must be an instance type name (got '')"),
])
def test_cluster_errors_are_one_line_exit_2(tmp_path, sidecar, resource, channel_fields, want):
    fields = dict(channel_fields)
    channels = [channel("train", tmp_path, **{k: v for k, v in fields.items() if k != "other"})]
    if fields.get("other"):
        channels.append(channel("other", tmp_path))
    cfg = write_channel_file(tmp_path / "job.yaml", {"InputDataConfig": channels, "ResourceConfig": resource})
    root = tmp_path / "ml"
    p = sidecar.run("--config", cfg, "--ml-root", root)
    assert p.poll() == 2, p.stderr
    assert want in error_line(p.stderr)
    assert not root.exists()  # nothing written
