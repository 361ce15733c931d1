"""Pipe mode in the SageMaker SDKs' own local mode, driven by the real SDKs, without Docker.

Each test runs `Estimator.fit()` (SDK v2) or `ModelTrainer.train()` (SDK v3) in the SDK's own venv
(tests/sdk_envs.py) through tests/sdk_jobs.py. Only the `docker` command is a stand-in
(tests/sdk_docker.py): it plays each host's algorithm service as a host process
(tests/sdk_algorithm.py) reading the FIFOs through the compose file's bind mounts, and writes what
it read into the model folder. The tests compare that, byte for byte, with the source data, and
check that nothing (process, FIFO, folder of ours) outlives the call.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import recordio
from conftest import REPO, TESTS, base_env, list_objects, write_tree
from sdk_envs import SdkInstallError, required, sdk_python

# The first run installs an SDK (about 4 minutes each here): the jobs themselves are bounded by JOB_TIMEOUT_S.
pytestmark = [pytest.mark.sdk, pytest.mark.timeout(1500)]
SIDECAR_IMAGE = "sagemaker-pipe:sdk-test"
JOB_TIMEOUT_S = 180


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def sdk_job(tmp_path: Path):
    """run(sdk, channels, **job) -> (result, output, model): one job through the SDK, then the leftover checks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\nexec {sys.executable} {TESTS / 'sdk_docker.py'} \"$@\"\n")
    docker.chmod(0o755)
    tmp = tmp_path / "tmp"
    tmp.mkdir()

    def run(sdk: str, channels: list[dict[str, Any]], *, env: dict[str, str] | None = None,
            **job: Any) -> tuple[dict[str, Any], str, dict[str, dict]]:
        root = tmp_path / f"root-{sdk}"
        root.mkdir(exist_ok=True)
        spec = {"sdk": sdk, "image": "example/algorithm:1", "instances": 2, "job_mode": "Pipe",
                "hyperparameters": {"epochs": 2}, "container_root": str(root), "channels": channels, **job}
        child_env = base_env(**(env or {}))
        child_env.pop("AWS_ENDPOINT_URL", None)
        child_env.update(PATH=f"{bin_dir}{os.pathsep}{child_env['PATH']}", TMPDIR=str(tmp),
                         FAKE_DOCKER_SIDECAR_IMAGE=SIDECAR_IMAGE, SAGEMAKER_SUPPRESS_V2_WARNING="1",
                         PYTHONPATH=str(REPO))
        proc = subprocess.run([str(python(sdk)), str(TESTS / "sdk_jobs.py"), json.dumps(spec)], cwd=tmp_path,
                              env=child_env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        output = proc.stdout + proc.stderr
        results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert results, output
        result = json.loads(results[-1][len("RESULT "):])
        assert_nothing_left(tmp_path, root, tmp)
        return result, output, models(root)

    return run


def python(sdk: str) -> Path:
    """The SDK's venv; no network to PyPI skips (fails in CI), any other install failure fails."""
    try:
        return sdk_python(sdk)
    except SdkInstallError as e:
        if e.network and not required():
            pytest.skip(f"{e} (no network to PyPI)")
        pytest.fail(str(e), pytrace=False)


def assert_nothing_left(tmp_path: Path, root: Path, tmp: Path) -> None:
    """No FIFO anywhere below the test's folder, no folder of ours in TMPDIR, no process started for the job."""
    fifos = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files
             if os.path.exists(os.path.join(d, f)) and Path(d, f).is_fifo()]
    assert fifos == [], f"FIFOs left: {fifos}"
    ours = [p.name for p in tmp.iterdir() if p.name.startswith("sagemaker-pipe-sdk-")]
    assert ours == [], f"sagemaker-pipe folders left in TMPDIR: {ours}"
    alive = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(tmp_path) in cmdline and "pytest" not in cmdline:
                alive.append(cmdline)
    assert alive == [], f"processes left: {alive}"


def models(root: Path) -> dict[str, dict]:
    """What each host's algorithm wrote (`<host>.json`), from the SDK's model.tar.gz."""
    found: dict[str, dict] = {}
    for tar_path in root.rglob("model.tar.gz"):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    doc = json.load(tar.extractfile(member))  # type: ignore[arg-type]
                    found[doc["host"]] = doc
    return found


def payloads(folder: Path, gunzip: bool = False) -> dict[str, bytes]:
    """sha256 of each object's payload -> the payload."""
    out = {}
    for _rel, p in list_objects(folder):
        data = gzip.decompress(p.read_bytes()) if gunzip else p.read_bytes()
        out[sha(data)] = data
    return out


def assert_stream(entry: dict, parts: list[bytes], record_io: bool) -> None:
    stream = b"".join(recordio.encode(p) if record_io else p for p in parts)
    assert (entry["bytes"], entry["sha256"]) == (len(stream), sha(stream))


def assert_sharded(hosts: dict[str, dict], channel: str, objects: dict[str, bytes], epochs: int) -> None:
    """Each epoch: the hosts' records are disjoint, together every object once, each stream byte-exact."""
    for epoch in range(epochs):
        seen: list[str] = []
        for doc in hosts.values():
            entry = doc["pipe"][channel][epoch]
            assert_stream(entry, [objects[h] for h in entry["records"]], record_io=True)
            assert entry["records"], f"host {doc['host']} got no share of {channel} in epoch {epoch}"
            seen += entry["records"]
        assert sorted(seen) == sorted(objects), f"{channel} epoch {epoch}: shares are not a partition"


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p.read_bytes()) for _rel, p in list_objects(folder)}


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """Source folders: plain objects, gzip objects, an augmented manifest with its images, a File channel."""
    d = tmp_path / "data"
    plain = write_tree(d / "plain", {f"part-{i:02d}.bin": os.urandom(700 + 131 * i) for i in range(10)})
    zipped = write_tree(d / "zipped", {f"z{i}.gz": gzip.compress(os.urandom(900 + 17 * i)) for i in range(3)})
    images = write_tree(d / "aug" / "img", {f"{i}.jpg": os.urandom(300 + i) for i in range(4)})
    lines = [json.dumps({"source-ref": f"img/{i}.jpg", "label": i % 2, "other": "x"}) for i in range(4)]
    (d / "aug" / "train.manifest").write_text("\n".join(lines) + "\n")
    files = write_tree(d / "files", {"a.csv": b"1,2\n", "sub/b.csv": os.urandom(64)})
    return {"plain": plain, "zipped": zipped, "aug": d / "aug" / "train.manifest", "images": images, "files": files}


def job_channels(data: dict[str, Path]) -> list[dict[str, Any]]:
    return [
        {"name": "train", "uri": data["plain"].as_uri(), "distribution": "ShardedByS3Key", "shuffle_seed": 7,
         "record_wrapping": "RecordIO", "content_type": "application/x-recordio"},
        {"name": "zipped", "uri": data["zipped"].as_uri(), "compression": "Gzip", "record_wrapping": "RecordIO"},
        {"name": "aug", "uri": data["aug"].as_uri(), "s3_data_type": "AugmentedManifestFile",
         "attribute_names": ["source-ref", "label"], "record_wrapping": "RecordIO"},
        {"name": "files", "uri": data["files"].as_uri(), "input_mode": "File"},
        {"name": "shards", "uri": data["plain"].as_uri(), "input_mode": "File", "distribution": "ShardedByS3Key"},
    ]


def check_job(hosts: dict[str, dict], data: dict[str, Path]) -> None:
    assert len(hosts) == 2, hosts.keys()
    plain = payloads(data["plain"])
    assert_sharded(hosts, "train", plain, epochs=2)
    zipped = [gzip.decompress(p.read_bytes()) for _rel, p in list_objects(data["zipped"])]
    images = [(data["images"] / f"{i}.jpg").read_bytes() for i in range(4)]
    augmented = [part for i in range(4) for part in (images[i], str(i % 2).encode())]
    shard_files: dict[str, str] = {}
    for doc in hosts.values():
        config = doc["inputdataconfig"]
        assert config["train"] == {"TrainingInputMode": "Pipe", "S3DistributionType": "ShardedByS3Key",
                                   "RecordWrapperType": "RecordIO", "ContentType": "application/x-recordio"}
        assert config["files"] == {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                                   "RecordWrapperType": "None"}
        assert config["shards"]["S3DistributionType"] == "ShardedByS3Key"
        for epoch in range(2):
            assert_stream(doc["pipe"]["zipped"][epoch], zipped, record_io=True)
            assert_stream(doc["pipe"]["aug"][epoch], augmented, record_io=True)
        assert doc["files"]["files"] == file_hashes(data["files"])  # the SDK's own File channel
        share = doc["files"]["shards"]
        assert share and not set(share) & set(shard_files), "sharded File channel: shares overlap"
        shard_files.update(share)
    assert shard_files == file_hashes(data["plain"]), "sharded File channel: shares are not every object"


@pytest.mark.parametrize("sdk", ["v2", "v3"])
def test_two_hosts_every_channel_setting_byte_exact(sdk_job, data, sdk):
    result, output, hosts = sdk_job(sdk, job_channels(data))
    assert result["ok"], output
    check_job(hosts, data)


def test_sidecar_image_mode_byte_exact(sdk_job, data):
    result, output, hosts = sdk_job("v2", job_channels(data), sidecar_image=SIDECAR_IMAGE)
    assert result["ok"], output
    check_job(hosts, data)
    assert "-sagemaker-pipe  |" in output  # the engines ran as the compose project's own services


def test_s3_channel_with_the_sessions_credentials(sdk_job, moto_s3, seeded_bucket):
    objects = {f"train/{i}.bin": os.urandom(2000 + i) for i in range(5)}
    bucket = seeded_bucket(moto_s3, objects)
    env = moto_s3.child_env()
    endpoint = env.pop("AWS_ENDPOINT_URL_S3")  # the session's own endpoint, not the environment's
    channels = [{"name": "train", "uri": f"s3://{bucket}/train/", "record_wrapping": "RecordIO",
                 "distribution": "ShardedByS3Key"}]
    result, output, hosts = sdk_job("v2", channels, env=env, s3_endpoint=endpoint)
    assert result["ok"], output
    assert_sharded(hosts, "train", {sha(v): v for v in objects.values()}, epochs=2)


def test_algorithm_failure_stops_everything(sdk_job, data):
    result, output, _hosts = sdk_job("v2", job_channels(data)[:1], hyperparameters={"epochs": 1, "fail": 1})
    assert not result["ok"] and result["type"] == "RuntimeError", output
    assert "failing on purpose" in output


def test_image_pull_failure_stops_everything(sdk_job, data):
    result, output, _hosts = sdk_job("v2", job_channels(data)[:1], image="missing/algorithm:1")
    assert not result["ok"] and result["type"] == "RuntimeError", output
    assert "pull access denied" in output


@pytest.mark.parametrize("sdk,sidecar_image", [("v2", None), ("v3", None), ("v2", SIDECAR_IMAGE)])
def test_failed_stream_fails_the_job_never_a_clean_eof(sdk_job, tmp_path, sdk, sidecar_image):
    bad = write_tree(tmp_path / "bad", {"a.gz": gzip.compress(b"A" * 5000), "b.gz": b"this is not gzip"})
    channels = [{"name": "bad", "uri": bad.as_uri(), "compression": "Gzip"}]
    result, output, hosts = sdk_job(sdk, channels, instances=1, sidecar_image=sidecar_image)
    assert not result["ok"], output
    assert result["type"] == "DataStreamFailed", output
    assert "b.gz" in result["message"] and "\n" not in result["message"]
    assert "read channel=bad epoch=0" not in output  # the algorithm never saw the epoch end
    assert hosts == {}


def test_wait_false_with_pipe_channels_is_refused(sdk_job, data):
    result, output, _hosts = sdk_job("v3", job_channels(data)[:1], wait=False)
    assert not result["ok"] and result["type"] == "ConfigError", output
    assert "wait=False" in result["message"]


def test_bad_channel_is_one_line_before_anything_starts(sdk_job, data):
    channels = [{"name": "train", "uri": data["plain"].as_uri(), "compression": "Bzip2"}]
    result, output, _hosts = sdk_job("v2", channels)
    assert not result["ok"] and result["type"] == "ConfigError", output
    assert result["message"] == "channel 'train': CompressionType must be one of None, Gzip (got 'Bzip2')"
    assert "docker command" not in output


@pytest.mark.parametrize("sdk", ["v2", "v3"])
def test_sdk_with_other_internals_fails_naming_its_version(sdk_job, data, sdk):
    result, output, _hosts = sdk_job(sdk, job_channels(data)[:1], break_internals=True)
    assert not result["ok"] and result["type"] == "SdkMismatch", output
    version = "sagemaker 2.257.7" if sdk == "v2" else "sagemaker-train 1.27.0"
    assert result["message"].startswith(version + ": ") and "does not fall back to File mode" in result["message"]
