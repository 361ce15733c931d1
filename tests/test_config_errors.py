"""Bad input is refused before anything is created: exit status 2, exactly one stderr line
``sagemaker-pipe: error: ...`` naming the channel and the field (or the file), no traceback, and
nothing under <ml-root>/input/config or <ml-root>/input/data."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    assert_nothing_written,
    channel,
    error_line,
    fifo,
    wait_for_path,
    write_channel_file,
    write_tree,
)

Tokens = list  # each item: a str that must appear, or a tuple of which one must appear


class Case:
    def __init__(self, build: Callable[[Path], tuple[list[str], Tokens]], env: dict | None = None):
        self.build = build
        self.env = env or {}


def good(tmp: Path, name: str = "good") -> Path:
    return write_tree(tmp / name, {"f": b"data", "sub/g": b"more"})


def cfg_args(path: Path) -> list[str]:
    return ["--config", str(path)]


def job(tmp: Path, *chans: dict, fname: str = "channels.yaml", **top) -> Path:
    doc = {"InputDataConfig": list(chans)}
    doc.update(top)
    return write_channel_file(tmp / fname, doc)


def one(tmp: Path, **fields) -> tuple[list[str], Tokens]:
    """A single channel 'train' on a good source, with extra/overridden fields."""
    return cfg_args(job(tmp, channel("train", good(tmp), **fields))), []


def case_fields(tokens: Tokens, **fields) -> Case:
    def build(tmp):
        args, _ = one(tmp, **fields)
        return args, tokens
    return Case(build)


def case_channels(tokens: Tokens, make: Callable[[Path], list]) -> Case:
    def build(tmp):
        return cfg_args(job(tmp, *make(tmp))), tokens
    return Case(build)


def case_file(tokens_of: Callable[[Path], Tokens], text: str | None, fname: str = "channels.yaml") -> Case:
    def build(tmp):
        p = tmp / "cfgdir" / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            p.write_text(text)
        return cfg_args(p), tokens_of(p)
    return Case(build)


def missing_s3uri(tmp):
    ch = channel("train", good(tmp))
    del ch["DataSource"]["S3DataSource"]["S3Uri"]
    return [ch]


def missing_name(tmp):
    ch = channel("x", good(tmp))
    del ch["ChannelName"]
    return [ch]


def missing_datasource(tmp):
    ch = channel("train", good(tmp))
    ch["DataSource"] = {}
    return [ch]


def empty_source(tmp):
    d = tmp / "empty"
    (d / "only" / "subdirs").mkdir(parents=True)
    return [channel("train", d)]


CASES: dict[str, Case] = {
    "unknown-channel-field": case_fields(["train", "Foo"], Foo=1),
    "unknown-s3datasource-field": case_fields(["train", "Bogus"], s3_Bogus="x"),
    "unknown-shuffleconfig-field": case_fields(["train", ("Foo", "ShuffleConfig")],
                                               ShuffleConfig={"Seed": 1, "Foo": 2}),
    "compression-zip": case_fields(["train", "CompressionType"], CompressionType="Zip"),
    "record-wrapper-protobuf": case_fields(["train", "RecordWrapperType"], RecordWrapperType="Protobuf"),
    "input-mode-stream": case_fields(["train", "InputMode"], InputMode="Stream"),
    "distribution-sharded": case_fields(["train", "S3DataDistributionType"], s3_S3DataDistributionType="Sharded"),
    "data-type-folder": case_fields(["train", "S3DataType"], s3_S3DataType="S3Folder"),
    "data-type-converse": case_fields(["train", "Converse"], s3_S3DataType="Converse"),
    "seed-not-integer": case_fields(["train", "Seed"], ShuffleConfig={"Seed": "abc"}),
    "seed-float": case_fields(["train", "Seed"], ShuffleConfig={"Seed": 1.5}),
    "name-space": case_channels([("tr ain", "ChannelName")], lambda t: [channel("tr ain", good(t))]),
    "name-slash": case_channels([("a/b", "ChannelName")], lambda t: [channel("a/b", good(t))]),
    "name-65-chars": case_channels([("x" * 65, "ChannelName")], lambda t: [channel("x" * 65, good(t))]),
    "name-empty": case_channels(["ChannelName"], lambda t: [channel("", good(t))]),
    "name-missing": case_channels(["ChannelName"], missing_name),
    "name-duplicate": case_channels(["train"], lambda t: [channel("train", good(t)),
                                                          channel("other", good(t, "g2")),
                                                          channel("train", good(t, "g3"))]),
    "s3uri-missing": case_channels(["train", "S3Uri"], missing_s3uri),
    "datasource-empty": case_channels(["train", ("DataSource", "S3DataSource")], missing_datasource),
    "source-missing": case_channels(["train", ("does-not-exist", "S3Uri")],
                                    lambda t: [channel("train", t / "does-not-exist")]),
    "source-missing-file-uri": case_channels(["train", ("nowhere", "S3Uri")],
                                             lambda t: [channel("train", (t / "nowhere").as_uri())]),
    "source-empty": case_channels(["train"], empty_source),
    "second-channel-bad": case_channels(["valid", ("missing-valid", "S3Uri")],
                                        lambda t: [channel("train", good(t)),
                                                   channel("valid", t / "missing-valid")]),
    "second-channel-bad-enum": case_channels(["valid", "CompressionType"],
                                             lambda t: [channel("train", good(t)),
                                                        channel("valid", good(t, "g2"), CompressionType="bz2")]),
    "not-yaml": case_file(lambda p: [p.name], "InputDataConfig: [unclosed\n  - : : {\n"),
    "yaml-scalar": case_file(lambda p: [p.name], "just a string\n"),
    "input-data-config-not-list": case_file(
        lambda p: [(p.name, "InputDataConfig")], "InputDataConfig:\n  ChannelName: train\n"),
    "empty-channel-list": case_file(lambda p: [(p.name, "channel", "InputDataConfig")], "InputDataConfig: []\n"),
    "channel-file-missing": case_file(lambda p: [p.name], None, fname="no-such-channels.yaml"),
    "channel-file-not-utf8": Case(lambda t: _binary_file(t)),
    "channel-file-is-a-folder": Case(lambda t: (cfg_args(_mkdir(t / "cfg-folder.yaml")), ["cfg-folder.yaml"])),
    "channel-not-a-mapping": case_file(lambda p: [("channel", p.name)], "- just-a-string\n"),
    "job-training-input-mode-bad": Case(lambda t: (cfg_args(job(t, channel("train", good(t)),
                                                                TrainingInputMode="Streaming")),
                                                   ["TrainingInputMode"])),
    "hyperparameters-not-mapping": Case(lambda t: (cfg_args(job(t, channel("train", good(t)),
                                                                HyperParameters=["lr", 0.1])),
                                                   ["HyperParameters"])),
    # SageMaker's own limits (CreateTrainingJob; botocore's sagemaker service model), refused up front
    "channels-21": case_channels(["InputDataConfig", "20"],
                                 lambda t: [channel(f"c{i}", good(t)) for i in range(21)]),
    "hyperparameters-101": Case(lambda t: (cfg_args(job(t, channel("train", good(t)),
                                                        HyperParameters={f"k{i}": i for i in range(101)})),
                                           ["HyperParameters", "100"])),
    "hyperparameter-key-257": Case(lambda t: (cfg_args(job(t, channel("train", good(t)),
                                                           HyperParameters={"k" * 257: 1})),
                                              ["HyperParameters", "256"])),
    "hyperparameter-value-2501": Case(lambda t: (cfg_args(job(t, channel("train", good(t)),
                                                              HyperParameters={"lr": "1" * 2501})),
                                                 ["HyperParameters.lr", "2500"])),
    "hyperparameter-list-value-too-long": Case(lambda t: (cfg_args(job(t, channel("train", good(t)),
                                                                       HyperParameters={"ids": list(range(1000))})),
                                                          ["HyperParameters.ids", "2500"])),
    "hyperparameter-yaml-date": case_file(lambda p: ["HyperParameters.start", "date"], (
        "InputDataConfig: [{ChannelName: t, DataSource: {S3DataSource: {S3Uri: /nonexistent}}}]\n"
        "HyperParameters: {start: 2020-01-01}\n")),
    "s3uri-1025": case_channels(["train", "S3Uri", "1024"],
                                lambda t: [channel("train", "s3://bucket/" + "k" * 1013)]),
    "content-type-257": case_fields(["train", "ContentType", "256"], ContentType="x" * 257),
    "seed-beyond-long": case_fields(["train", "ShuffleConfig.Seed"], ShuffleConfig={"Seed": 1 << 63}),
    "seed-huge": case_fields(["train", "ShuffleConfig.Seed"], ShuffleConfig={"Seed": 10 ** 4000}),
    "instance-count-huge": Case(lambda t: (cfg_args(job(t, channel("train", good(t)),
                                                        ResourceConfig={"InstanceCount": 10 ** 12})),
                                           ["ResourceConfig.InstanceCount"])),
    "attribute-name-257": case_fields(["train", "AttributeNames"], s3_S3DataType="AugmentedManifestFile",
                                      s3_AttributeNames=["a" * 257]),
    "attribute-names-17": case_fields(["train", "AttributeNames"], s3_S3DataType="AugmentedManifestFile",
                                      s3_AttributeNames=[f"a{i}" for i in range(17)]),
    "instance-group-names-6": case_fields(["train", "InstanceGroupNames"],
                                          s3_InstanceGroupNames=[f"g{i}" for i in range(6)]),
    "throttle-infinite": case_fields(["train", "ThrottleMBps"], SageMakerPipe={"ThrottleMBps": float("inf")}),
    "throttle-nan": case_fields(["train", "ThrottleMBps"], SageMakerPipe={"ThrottleMBps": float("nan")}),
    "throttle-huge-integer": case_fields(["train", "ThrottleMBps"], SageMakerPipe={"ThrottleMBps": 10 ** 400}),
    "current-host-not-in-hosts": Case(lambda t: (cfg_args(job(t, channel("train", good(t)), ResourceConfig={
        "CurrentHost": "algo-9", "Hosts": ["algo-1", "algo-2"]})), ["algo-9"])),
}


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def _binary_file(t: Path):
    p = t / "binary.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01InputDataConfig\x80\x81: [\xc3\x28]\n")
    return cfg_args(p), ["binary.yaml"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_before_anything_is_created(name, tmp_path, ml_root, sidecar):
    case = CASES[name]
    args, tokens = case.build(tmp_path)
    proc = sidecar.run(*args, "--ml-root", str(ml_root), timeout=15, env_extra=case.env)
    assert proc.popen.returncode == 2, f"exit status {proc.popen.returncode}, stderr:\n{proc.stderr}"
    line = error_line(proc.stderr)
    for tok in tokens:
        options = tok if isinstance(tok, tuple) else (tok,)
        assert any(o in line for o in options), f"error line does not name {' or '.join(options)!r}: {line!r}"
    assert_nothing_written(ml_root)


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_bad_epochs_option(value, tmp_path, ml_root, sidecar):
    cfg = job(tmp_path, channel("train", good(tmp_path)))
    proc = sidecar.run("--config", str(cfg), "--ml-root", str(ml_root), f"--epochs={value}", timeout=15)
    assert proc.popen.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "epochs" in line, line
    assert_nothing_written(ml_root)


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_epochs_environment_variable(value, tmp_path, ml_root, sidecar):
    cfg = job(tmp_path, channel("train", good(tmp_path)))
    proc = sidecar.run(timeout=15, env_extra={"SAGEMAKER_PIPE_CONFIG": str(cfg),
                                              "SAGEMAKER_PIPE_ML_ROOT": str(ml_root),
                                              "SAGEMAKER_PIPE_EPOCHS": value})
    assert proc.popen.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert ("SAGEMAKER_PIPE_EPOCHS" in line) or ("epochs" in line), line
    assert_nothing_written(ml_root)


def test_missing_config_env_var_names_the_file(tmp_path, ml_root, sidecar):
    missing = tmp_path / "nope" / "channels.yaml"
    proc = sidecar.run(timeout=15, env_extra={"SAGEMAKER_PIPE_CONFIG": str(missing),
                                              "SAGEMAKER_PIPE_ML_ROOT": str(ml_root)})
    assert proc.popen.returncode == 2, proc.stderr
    assert "channels.yaml" in error_line(proc.stderr)
    assert_nothing_written(ml_root)


def test_s3_uri_is_refused_cleanly_or_supported(tmp_path, ml_root, sidecar):
    """s3:// is not implemented yet: a clean one-line "not supported" error (exit 2). Once it is
    implemented this test skips (S3 has its own tests); AWS is pointed at a closed local port."""
    cfg = job(tmp_path, channel("train", "s3://some-bucket/train/"))
    proc = sidecar(*cfg_args(cfg), "--ml-root", str(ml_root),
                   env_extra={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1",
                              "AWS_RETRY_MODE": "standard"})
    try:
        rc = proc.popen.wait(timeout=20)
    except Exception:
        pytest.skip("s3:// channels appear to be supported (the run kept going)")
    if rc != 2 or "not supported" not in proc.stderr:
        pytest.skip(f"s3:// channels appear to be supported (exit {rc})")
    line = error_line(proc.stderr)
    assert "train" in line or "s3://" in line, line
    assert_nothing_written(ml_root)


# ------------------------------------------------------------------------------------------
# the edges of what is valid
# ------------------------------------------------------------------------------------------

def test_channel_name_limits_and_ignored_fields_are_accepted(tmp_path, ml_root, sidecar):
    long_name = ("A.b-c_9" * 10)[:64]
    assert len(long_name) == 64
    cfg = job(tmp_path,
              channel(long_name, good(tmp_path)),
              channel("x", good(tmp_path, "g2"),
                      ContentType="text/plain", CompressionType="None", RecordWrapperType="None",
                      ShuffleConfig={"Seed": 0}, InputMode="Pipe",
                      s3_S3DataDistributionType="FullyReplicated"),
              TrainingInputMode="Pipe")
    proc = sidecar(*cfg_args(cfg), "--ml-root", str(ml_root))
    wait_for_path(fifo(ml_root, long_name, 0))
    wait_for_path(fifo(ml_root, "x", 0))
    assert proc.alive(), proc.stderr


def test_unusable_data_dir_is_a_clean_error(tmp_path, ml_root, sidecar):
    """<ml-root>/input/data is a regular file: a one-line error, exit 2, and (like every error
    before the first FIFO) no config files left behind."""
    (ml_root / "input").mkdir(parents=True)
    (ml_root / "input" / "data").write_bytes(b"not a folder")
    cfg = job(tmp_path, channel("train", good(tmp_path)))
    proc = sidecar.run(*cfg_args(cfg), "--ml-root", str(ml_root), timeout=15)
    assert proc.popen.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "data" in line, line
    conf = ml_root / "input" / "config"
    assert not conf.exists() or os.listdir(conf) == [], f"config files written before the error: {os.listdir(conf)}"


def test_sagemakers_limits_themselves_are_accepted(tmp_path, ml_root, sidecar):
    """At each of SageMaker's limits (not past it) the job runs, and the hyperparameters reach the
    algorithm whole."""
    hyper = {f"k{i:03d}" + "k" * 252: "v" * 2500 for i in range(100)}
    chans = [channel(f"c{i}", good(tmp_path, f"g{i}"), ContentType="t" * 256,
                     ShuffleConfig={"Seed": (1 << 63) - 1 if i % 2 else -(1 << 63)}) for i in range(20)]
    cfg = job(tmp_path, *chans, HyperParameters=hyper, ResourceConfig={"InstanceCount": 3})
    proc = sidecar(*cfg_args(cfg), "--ml-root", str(ml_root))
    wait_for_path(fifo(ml_root, "c19", 0))
    assert proc.alive(), proc.stderr
    written = json.loads((ml_root / "input" / "config" / "hyperparameters.json").read_text())
    assert written == hyper
