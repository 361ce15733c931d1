"""Multi-host jobs (issue #8) without Docker, and the `sagemaker-pipe compose` generator.

A job on N hosts is simulated with N sidecar processes, each with its own ml-root
(`<tmp>/algo-i`) and `--hosts algo-1,...,algo-N --current-host algo-i`, and N readers: the
example algorithm (examples/algorithm/train.py) with SHOW_RECORDS=1, which prints the sha256 of
every RecordIO record, i.e. of every object it was given. The objects are identified here from
the example files themselves (tests/conftest.py's listing and gunzip, independent of the
package). The shares are checked per epoch: disjoint, together every object, about 1/N each;
fixed without ShuffleConfig, reassigned with it; FullyReplicated gives every host everything.
The same outputs are fed to tests/container/shares.py, the checker the container test uses.

The generator is run as `python -m sagemaker_pipe compose ...` and its YAML parsed; when the
container test's tool venv (or PATH) has check-jsonschema and the compose binary, the output is
also validated against the compose spec and by `compose config -q`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    base_env,
    channel,
    error_line,
    homogeneous_resources,
    object_payloads,
    write_channel_file,
)

DATA = REPO / "examples" / "data"
SHARDED = DATA / "sharded" / "train"
VALIDATION = DATA / "validation"
TRAIN_PY = REPO / "examples" / "algorithm" / "train.py"
SHARES_PY = REPO / "tests" / "container" / "shares.py"
TOOLS = Path(os.environ.get("SAGEMAKER_PIPE_CTEST_CACHE")
             or Path.home() / ".cache" / "sagemaker-pipe-container-test") / "tools"
EPOCHS = 3


def hosts(n: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, n + 1)]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def objects_of(src: Path, gunzip: bool = False) -> list[str]:
    """The sha256 of every object's payload, in listing order (all distinct in the example data)."""
    hashes = [digest(p) for p in object_payloads(src, gunzip)]
    assert len(set(hashes)) == len(hashes), f"two objects below {src} have the same content"
    return hashes


# --------------------------------------------------------------------------------------------
# N hosts as processes
# --------------------------------------------------------------------------------------------

def run_job(procs, tmp_path: Path, channels: list[dict], n: int, epochs: int = EPOCHS) -> dict[str, str]:
    """N sidecars and N example algorithms; returns each host's algorithm output."""
    config = write_channel_file(tmp_path / "channels.yaml", {"InputDataConfig": channels})
    names = hosts(n)
    sidecars, readers = {}, {}
    for host in names:
        root = tmp_path / host
        sidecars[host] = procs.start(
            [sys.executable, "-m", "sagemaker_pipe", "--config", str(config), "--ml-root", str(root),
             "--hosts", ",".join(names), "--current-host", host, "--epochs", str(epochs)],
            kind=f"sidecar-{host}", env=base_env(), cwd=tmp_path)
        readers[host] = procs.start(
            [sys.executable, str(TRAIN_PY)], kind=f"algorithm-{host}", cwd=tmp_path,
            env=base_env(ML_ROOT=str(root), EPOCHS=str(epochs), WAIT_S="20", SHOW_RECORDS="1"))
    for host in names:
        assert readers[host].wait(40) == 0, f"{host}'s algorithm failed: {readers[host].stderr}"
    for host in names:
        assert sidecars[host].wait(20) == 0, f"{host}'s sidecar failed: {sidecars[host].stderr}"
    for host in names:  # every host's resourceconfig.json lists all hosts and names its own
        resource = json.loads((tmp_path / host / "input" / "config" / "resourceconfig.json").read_text())
        assert resource == homogeneous_resources(host, names)
    return {host: readers[host].stdout for host in names}


def shares(outputs: dict[str, str], name: str, epochs: int = EPOCHS,
           cluster: list[str] | None = None) -> list[dict[str, list[str]]]:
    """Per epoch: host -> the sha256 of each record it read, in order; checks each epoch line's count.

    `cluster`: every host of the job, when `outputs` are only those that receive the channel."""
    per_epoch: list[dict[str, list[str]]] = [{} for _ in range(epochs)]
    for host, out in outputs.items():
        first = out.splitlines()[0]
        assert first == f"host={host} hosts={','.join(cluster or outputs)}", first
        for epoch in range(epochs):
            records = re.findall(
                rf"^record host={host} channel={name} epoch={epoch} index=\d+ bytes=\d+ sha256=([0-9a-f]{{64}})$",
                out, re.M)
            line = re.search(rf"^channel={name} epoch={epoch} bytes=\d+ records=(\d+) sha256=[0-9a-f]{{64}}$",
                             out, re.M)
            assert line is not None, f"{host}: no epoch line for {name} epoch {epoch}:\n{out}"
            assert int(line.group(1)) == len(records)
            per_epoch[epoch][host] = records
    return per_epoch


def assert_sharded(per_epoch: list[dict[str, list[str]]], objects: list[str]) -> None:
    n = len(per_epoch[0])
    for epoch, by_host in enumerate(per_epoch):
        everything = Counter(h for got in by_host.values() for h in got)
        assert all(c == 1 for c in everything.values()), f"epoch {epoch}: shares overlap"
        assert set(everything) == set(objects), f"epoch {epoch}: the shares are not all the objects"
        for host, got in by_host.items():
            assert len(objects) // n <= len(got) <= -(-len(objects) // n), f"epoch {epoch}: {host} got {len(got)}"


def assignment(by_host: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    return {host: frozenset(got) for host, got in by_host.items()}


def shares_checker(outputs: dict[str, str], tmp_path: Path, channels: list[dict], n: int,
                   *extra: str) -> subprocess.CompletedProcess:
    """tests/container/shares.py on these outputs (the container test's checker)."""
    config = write_channel_file(tmp_path / "checker-channels.yaml", {"InputDataConfig": channels})
    logs = []
    for host, out in outputs.items():
        log = tmp_path / f"checker-{host}.log"
        log.write_text(out)
        logs.append(str(log))
    return subprocess.run(
        [sys.executable, str(SHARES_PY), "--channel-file", str(config), "--hosts", str(n),
         "--epochs", str(EPOCHS), *extra, *logs], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("shuffled", [False, True], ids=["unshuffled", "shuffled"])
def test_sharded_shares_are_disjoint_and_complete_every_epoch(n, shuffled, procs, tmp_path):
    shuffle = {"ShuffleConfig": {"Seed": 11}} if shuffled else {}
    channels = [
        channel("train", SHARDED, RecordWrapperType="RecordIO", s3_S3DataDistributionType="ShardedByS3Key",
                **shuffle),
        channel("validation", VALIDATION, RecordWrapperType="RecordIO", CompressionType="Gzip",
                s3_S3DataDistributionType="FullyReplicated", **shuffle),
    ]
    outputs = run_job(procs, tmp_path, channels, n)
    train, validation = objects_of(SHARDED), objects_of(VALIDATION, gunzip=True)

    per_epoch = shares(outputs, "train")
    assert_sharded(per_epoch, train)
    if shuffled:
        # SageMaker reassigns a shuffled sharded channel every epoch; so does the seeded shuffle here.
        assert len({tuple(sorted(assignment(e).items())) for e in per_epoch}) > 1
    else:
        # Fixed assignment, each host's objects in listing order, every epoch the same.
        for by_host in per_epoch:
            assert by_host == per_epoch[0]
            for got in by_host.values():
                assert got == [h for h in train if h in got]

    for by_host in shares(outputs, "validation"):  # FullyReplicated: everything, everywhere
        for host, got in by_host.items():
            if shuffled:
                assert sorted(got) == sorted(validation), host
            else:
                assert got == validation, host

    checked = shares_checker(outputs, tmp_path, channels, n, *(["--expect-reshuffle", "train"] if shuffled else []))
    assert checked.returncode == 0, checked.stderr
    assert f"on {n} hosts: all shares right" in checked.stderr


def test_a_host_without_a_share_gets_empty_epochs(procs, tmp_path):
    # 2 objects on 3 hosts, unshuffled: algo-3 gets nothing, every epoch, and still EOF per epoch.
    channels = [channel("train", VALIDATION, RecordWrapperType="RecordIO", CompressionType="Gzip",
                        s3_S3DataDistributionType="ShardedByS3Key")]
    outputs = run_job(procs, tmp_path, channels, 3)
    per_epoch = shares(outputs, "train")
    assert_sharded(per_epoch, objects_of(VALIDATION, gunzip=True))
    for epoch, by_host in enumerate(per_epoch):
        assert [len(by_host[h]) for h in hosts(3)] == [1, 1, 0]
        assert f"channel=train epoch={epoch} bytes=0 records=0 sha256={digest(b'')}" in outputs["algo-3"]


def test_the_checker_fails_on_overlapping_or_missing_shares(procs, tmp_path):
    channels = [channel("train", SHARDED, RecordWrapperType="RecordIO", s3_S3DataDistributionType="ShardedByS3Key")]
    outputs = run_job(procs, tmp_path, channels, 3)
    assert shares_checker(outputs, tmp_path, channels, 3).returncode == 0
    # algo-2 reporting algo-1's share: overlap plus missing objects.
    forged = dict(outputs, **{"algo-2": outputs["algo-1"].replace("algo-1", "algo-2")})
    checked = shares_checker(forged, tmp_path, channels, 3)
    assert checked.returncode == 1
    assert "shares overlap" in checked.stderr and "no host got" in checked.stderr
    # Unshuffled but asked to see a reshuffle: refused too.
    assert shares_checker(outputs, tmp_path, channels, 3, "--expect-reshuffle", "train").returncode == 1


def test_without_show_records_the_output_is_unchanged(procs, tmp_path):
    config = write_channel_file(tmp_path / "channels.yaml", [channel("train", SHARDED, RecordWrapperType="RecordIO")])
    root = tmp_path / "ml"
    sc = procs.start([sys.executable, "-m", "sagemaker_pipe", "--config", str(config), "--ml-root", str(root),
                      "--epochs", "1"], kind="sidecar", env=base_env(), cwd=tmp_path)
    env = base_env(ML_ROOT=str(root), EPOCHS="1", WAIT_S="20")
    env.pop("SHOW_RECORDS", None)
    reader = procs.start([sys.executable, str(TRAIN_PY)], kind="algorithm", cwd=tmp_path, env=env)
    assert reader.wait(30) == 0 and sc.wait(20) == 0
    assert re.fullmatch(r"channel=train epoch=0 bytes=\d+ records=10 sha256=[0-9a-f]{64}\n", reader.stdout)


# --------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------

def generate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sagemaker_pipe", "compose", *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd, env=base_env())


def generated(*args: str, cwd: Path = REPO) -> tuple[dict, str]:
    done = generate(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return yaml.safe_load(done.stdout), done.stdout


@pytest.mark.parametrize("n", [1, 3, 5])
def test_generator_gives_each_host_an_algorithm_and_a_sidecar(n):
    doc, text = generated("--hosts", str(n), "--algorithm-image", "my/algo:1")
    assert text.startswith("# Generated by: sagemaker-pipe compose --hosts")
    names = hosts(n)
    services = doc["services"]
    assert sorted(services) == sorted(names + [f"{h}-sidecar" for h in names])
    assert doc["networks"] == {"sagemaker": {}}
    assert doc["volumes"] == {f"{h}-{kind}": {} for h in names for kind in ("input", "model", "output")}
    for host in names:
        algo, side = services[host], services[f"{host}-sidecar"]
        assert algo["image"] == "my/algo:1"
        assert algo["hostname"] == host
        assert algo["networks"] == ["sagemaker"]
        assert algo["depends_on"] == {f"{host}-sidecar": {"condition": "service_healthy"}}
        assert algo["command"] == ["train"]  # as SageMaker starts a training image
        assert algo["volumes"] == [{"type": "volume", "source": f"{host}-input", "target": "/opt/ml/input",
                                    "read_only": True},
                                   {"type": "volume", "source": f"{host}-model", "target": "/opt/ml/model"},
                                   {"type": "volume", "source": f"{host}-output", "target": "/opt/ml/output"}]
        assert "environment" not in algo
        assert side["image"] == "sagemaker-pipe:local"
        assert side["environment"] == {
            "SAGEMAKER_PIPE_CONFIG": "/config/channels.yaml",
            "SAGEMAKER_PIPE_HOSTS": ",".join(names),
            "SAGEMAKER_PIPE_CURRENT_HOST": host,
        }
        assert side["volumes"] == [
            {"type": "bind", "source": str(REPO / "config" / "sharded.yaml"), "target": "/config/channels.yaml",
             "read_only": True},
            {"type": "bind", "source": str(DATA), "target": "/data", "read_only": True},
            {"type": "volume", "source": f"{host}-input", "target": "/opt/ml/input"},
        ]
        assert side["network_mode"] == "none"  # local channels only
        assert side["healthcheck"]["test"] == ["CMD", "python", "-m", "sagemaker_pipe", "status"]
        assert side["attach"] is False
        assert side["read_only"] is True


def test_the_image_defaults_to_the_channel_file_s_training_image_and_the_command_may_be_changed(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "a.csv").write_text("1\n")
    config = write_channel_file(tmp_path / "c.yaml", {
        "AlgorithmSpecification": {"TrainingImage": "123.dkr.ecr.us-east-1.amazonaws.com/algo:7"},
        "InputDataConfig": [channel("train", "/data/train")]})
    doc, _ = generated("--hosts", "2", "--channels", str(config), "--data", str(tmp_path / "d"),
                       "--algorithm-command", '["python", "fit.py"]', cwd=tmp_path)
    for host in hosts(2):
        assert doc["services"][host]["image"] == "123.dkr.ecr.us-east-1.amazonaws.com/algo:7"
        assert doc["services"][host]["command"] == ["python", "fit.py"]
    doc, _ = generated("--hosts", "1", "--channels", str(config), "--data", str(tmp_path / "d"),
                       "--algorithm-image", "mine", "--algorithm-command", "serve", cwd=tmp_path)
    assert (doc["services"]["algo-1"]["image"], doc["services"]["algo-1"]["command"]) == ("mine", ["serve"])
    no_image = write_channel_file(tmp_path / "n.yaml", [channel("train", "/data/train")])
    for args, words in ((["--channels", str(no_image)], "--algorithm-image"),
                        (["--channels", str(config), "--algorithm-command", "two words"], "--algorithm-command")):
        done = generate("--hosts", "1", "--data", str(tmp_path / "d"), *args, cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr


def test_generator_options(tmp_path):
    data = tmp_path / "d"
    (data / "train").mkdir(parents=True)
    (data / "train" / "a.csv").write_text("1\n")
    config = write_channel_file(tmp_path / "c.yaml", [
        channel("train", "/data/train", s3_S3DataDistributionType="ShardedByS3Key"),
        channel("remote", "s3://bucket/prefix/"),
    ])
    doc, _ = generated("--hosts", "2", "--algorithm-image", "algo", "--channels", str(config), "--data", str(data),
                       "--sidecar-image", "registry.example/pipe:2", "-e", "EPOCHS=5", "--env", "X=a=b",
                       "--project-name", "myjob", cwd=tmp_path)
    assert doc["name"] == "myjob"
    side = doc["services"]["algo-2-sidecar"]
    assert side["image"] == "registry.example/pipe:2"
    assert side["volumes"][0]["source"] == str(config)
    assert side["volumes"][1]["source"] == str(data)
    # An s3:// channel: the sidecars keep the default network and take AWS_* from the shell.
    assert "network_mode" not in side
    assert "AWS_ENDPOINT_URL_S3" in side["environment"] and side["environment"]["AWS_ENDPOINT_URL_S3"] is None
    assert doc["services"]["algo-1"]["environment"] == {"EPOCHS": "5", "X": "a=b"}
    assert "environment" not in side or "EPOCHS" not in side["environment"]


def test_generator_s3_only_mounts_no_data(tmp_path):
    config = write_channel_file(tmp_path / "c.yaml", [channel("train", "s3://bucket/train/")])
    doc, _ = generated("--hosts", "2", "--algorithm-image", "algo", "--channels", str(config), cwd=tmp_path)
    targets = [v["target"] for v in doc["services"]["algo-1-sidecar"]["volumes"]]
    assert targets == ["/config/channels.yaml", "/opt/ml/input"]


@pytest.mark.parametrize("args, message", [
    (["--hosts", "0", "--algorithm-image", "a"], "--hosts must be 1 to 100"),
    (["--hosts", "three", "--algorithm-image", "a"], "--hosts must be a whole number"),
    (["--hosts", "3"], "--algorithm-image"),
    (["--hosts", "3", "--algorithm-image", "a b"], "--algorithm-image must be an image name"),
    (["--hosts", "3", "--algorithm-image", "a", "-e", "NOEQUALS"], "--env must be KEY=VALUE"),
    (["--hosts", "3", "--algorithm-image", "a", "--channels", "missing.yaml"], "cannot read channel file"),
    (["--hosts", "3", "--algorithm-image", "a", "--data", "nowhere"], "data folder nowhere is not a folder"),
    (["--hosts", "3", "--algorithm-image", "a", "--channels", "config/local.yaml"],
     "channel 'train': local S3Uri is /examples/data/train in the sidecar containers"),
])
def test_generator_errors_are_one_line_and_print_nothing(args, message):
    done = generate(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in error_line(done.stderr)


def test_generator_refuses_a_channel_missing_under_data(tmp_path):
    config = write_channel_file(tmp_path / "c.yaml", [channel("train", "/data/nothing-here")])
    done = generate("--hosts", "2", "--algorithm-image", "a", "--channels", str(config), "--data", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert "channel 'train': /data/nothing-here would be" in error_line(done.stderr)


def test_generator_refuses_an_invalid_channel_file(tmp_path):
    config = write_channel_file(tmp_path / "c.yaml", [channel("train", "/data/x", CompressionType="Zip")])
    done = generate("--hosts", "2", "--algorithm-image", "a", "--channels", str(config), "--data", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert ("channel 'train': CompressionType must be one of None, Gzip (got 'Zip'; did you mean Gzip?)"
            in error_line(done.stderr))


def _tool(name: str) -> str | None:
    for candidate in (TOOLS / "bin" / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _compose_binary() -> str | None:
    found = sorted(TOOLS.glob("lib/python3*/site-packages/compose/docker-compose"))
    return str(found[0]) if found and os.access(found[0], os.X_OK) else None


@pytest.mark.parametrize("n", [1, 3])
def test_generated_file_is_valid_compose(n, tmp_path):
    checker, compose = _tool("check-jsonschema"), _compose_binary()
    if checker is None and compose is None:
        pytest.skip("neither check-jsonschema nor the compose binary is installed "
                    "(tests/container/run.sh installs both in its tool venv)")
    _, text = generated("--hosts", str(n), "--algorithm-image", "sagemaker-pipe-example-algorithm:local",
                        "-e", "SHOW_RECORDS=1")
    out = tmp_path / "docker-compose.hosts.yml"
    out.write_text(text)
    if checker is not None:
        done = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    if compose is not None:
        done = subprocess.run([compose, "-f", str(out), "config", "-q"], capture_output=True, text=True,
                              timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")})
        assert done.returncode == 0, done.stdout + done.stderr
