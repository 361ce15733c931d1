"""Hostile channel files, generated (issue 6): every document either loads or is refused cleanly.

In-process (fast): ``sagemaker_pipe.config.parse_job`` / ``load_job`` over random structures,
mutated valid channel files (wrong types, unknown keys, weird strings: unicode, NUL, newlines,
huge numbers) and random text; each either returns a Job or raises ConfigError with a one-line
message -- never another exception. A handful of the same kinds of documents then go through the
real CLI: exit 2, exactly one ``sagemaker-pipe: error:`` line, no traceback, nothing written.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, assert_nothing_written, channel, error_line, write_channel_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sagemaker_pipe.config import Job, load_job, parse_job  # noqa: E402
from sagemaker_pipe.errors import ConfigError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
BASE = Path("/nonexistent-base")

weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\0", "a\0b", "\n", "line1\nline2", "\r\n", "../../etc", "/abs/path", "..", ".",
                     "é", "名前", "\u202e", "\ufeff", "\U0001f600", "s3://", "s3://b/\0", "file://host/x",
                     "file:///tmp/x", "~", "Pipe", "pipe", "None", "Gzip", "RecordIO", "x" * 5000]),
)
huge_numbers = st.one_of(st.integers(), st.sampled_from([10**100, -10**100, 2**63, -(2**63) - 1, 2**64]),
                         st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), huge_numbers, weird_text)
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(weird_text, st.integers(), st.booleans(), st.none()),
                                            inner, max_size=5)),
    max_leaves=25,
)

KEYS = ["ChannelName", "DataSource", "S3DataSource", "S3Uri", "S3DataType", "S3DataDistributionType",
        "AttributeNames", "InputMode", "CompressionType", "RecordWrapperType", "ContentType", "ShuffleConfig",
        "Seed", "InstanceGroupNames", "SageMakerPipe", "ThrottleMBps", "InputDataConfig", "ResourceConfig",
        "Hosts", "CurrentHost", "InstanceCount", "HyperParameters", "TrainingInputMode", "AlgorithmSpecification",
        "InstanceGroups", "InstanceGroupName", "InstanceType"]


def valid_doc() -> dict:
    return {
        "TrainingInputMode": "Pipe",
        "InputDataConfig": [
            channel("train", "s3://bucket/train/", CompressionType="Gzip", RecordWrapperType="RecordIO",
                    ShuffleConfig={"Seed": 7}, ContentType="application/x-recordio",
                    s3_S3DataDistributionType="ShardedByS3Key"),
            channel("aug", "data/aug.manifest", s3_S3DataType="AugmentedManifestFile",
                    s3_AttributeNames=["source-ref", "label"], SageMakerPipe={"ThrottleMBps": 5}),
            channel("val", "file:///tmp/val", InputMode="File"),
        ],
        "ResourceConfig": {"Hosts": ["algo-1", "algo-2"], "CurrentHost": "algo-2"},
        "HyperParameters": {"epochs": 3, "lr": "0.1"},
    }


def containers(doc: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every dict and list inside doc."""
    out = []
    if isinstance(doc, (dict, list)):
        out.append(path)
        items = doc.items() if isinstance(doc, dict) else enumerate(doc)
        for k, v in items:
            out.extend(containers(v, path + (k,)))
    return out


def at(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def valid_group_doc() -> dict:
    """A heterogeneous cluster: InstanceGroups, and InstanceGroupNames on every channel."""
    doc = valid_doc()
    doc["ResourceConfig"] = {"InstanceGroups": [
        {"InstanceGroupName": "data", "InstanceType": "ml.c5.xlarge", "InstanceCount": 2},
        {"InstanceGroupName": "dnn", "InstanceType": "ml.p3.2xlarge", "InstanceCount": 1}]}
    for i, c in enumerate(doc["InputDataConfig"]):
        c["DataSource"]["S3DataSource"]["InstanceGroupNames"] = [["data"], ["dnn"], ["data", "dnn"]][i]
    return doc


@st.composite
def mutated_docs(draw) -> Any:
    doc = draw(st.sampled_from([valid_doc, valid_group_doc]))()
    for _ in range(draw(st.integers(1, 4))):
        paths = containers(doc)
        if not paths:
            break
        target = at(doc, draw(st.sampled_from(paths)))
        op = draw(st.sampled_from(["set", "add", "delete", "retype"]))
        if isinstance(target, dict):
            keys = list(target)
            if op == "add" or not keys:
                target[draw(st.one_of(st.sampled_from(KEYS), weird_text))] = draw(structures)
            elif op == "delete":
                del target[draw(st.sampled_from(keys))]
            else:
                target[draw(st.sampled_from(keys))] = draw(structures if op == "set" else scalars)
        elif isinstance(target, list):
            if op == "add" or not target:
                target.insert(draw(st.integers(0, len(target))), draw(structures))
            elif op == "delete":
                del target[draw(st.integers(0, len(target) - 1))]
            else:
                target[draw(st.integers(0, len(target) - 1))] = draw(structures)
    if draw(st.booleans()) and isinstance(doc, dict) and "InputDataConfig" in doc:
        doc = doc["InputDataConfig"]  # the bare-list form
    return doc


def check_parse(doc: Any) -> None:
    try:
        job = parse_job(copy.deepcopy(doc), base_dir=BASE, source="fuzz.yaml")
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, f"multi-line ConfigError: {msg!r}"
        return
    assert isinstance(job, Job)
    assert 1 <= len(job.channels) <= 20


@FUZZ
@given(structures)
def test_random_structures_load_or_raise_one_line_config_error(doc):
    check_parse(doc)


@FUZZ
@given(mutated_docs())
def test_mutated_channel_files_load_or_raise_one_line_config_error(doc):
    check_parse(doc)


def _dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, allow_nan=True)
    return yaml.safe_dump(doc, allow_unicode=True)


def _representable(doc: Any) -> bool:
    if isinstance(doc, float):
        return not math.isnan(doc)
    if isinstance(doc, str):
        return "\0" not in doc  # YAML cannot carry a raw NUL; the JSON escape \u0000 is tested below
    if isinstance(doc, list):
        return all(_representable(x) for x in doc)
    if isinstance(doc, dict):
        return all(_representable(k) and _representable(v) for k, v in doc.items())
    return True


@FUZZ
@given(st.one_of(mutated_docs(), structures), st.sampled_from(["yaml", "json"]))
def test_channel_files_on_disk_load_or_raise_one_line_config_error(tmp_path_factory, doc, fmt):
    path = tmp_path_factory.mktemp("fuzz") / f"channels.{fmt}"
    path.write_text(_dump(doc, fmt), encoding="utf-8")
    try:
        load_job(path)
    except ConfigError as e:
        assert "\n" not in str(e), f"multi-line ConfigError: {str(e)!r}"


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_random_text_loads_or_raises_one_line_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "channels.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_job(path)
    except ConfigError as e:
        assert "\n" not in str(e), f"multi-line ConfigError: {str(e)!r}"


# ------------------------------------------------------------------------------------------
# the same through the real CLI
# ------------------------------------------------------------------------------------------

def _bad(name: str, **fields: Any) -> Any:
    def make(tmp: Path) -> Any:
        doc = valid_doc()
        ch = doc["InputDataConfig"][0]
        for k, v in fields.items():
            if k.startswith("s3_"):
                ch["DataSource"]["S3DataSource"][k[3:]] = v
            else:
                ch[k] = v
        return doc
    return pytest.param(make, "json", id=name)


def _raw(name: str, text: str, fmt: str = "yaml") -> Any:
    return pytest.param(lambda tmp: text, fmt, id=name)


CLI_CASES = [
    _bad("unknown-key-with-newline", **{"Bad\nKey": 1}),
    _bad("unknown-key-unicode-nul", **{"Ключ\0\u202e": "x"}),
    _bad("name-with-nul", ChannelName="tr\0ain"),
    _bad("name-dotdot", ChannelName=".."),
    _bad("name-traversal", ChannelName="../../etc/evil"),
    _bad("name-absolute", ChannelName="/tmp/evil"),
    _bad("seed-huge-float", ShuffleConfig={"Seed": 1e308}),
    _bad("seed-bool", ShuffleConfig={"Seed": True}),
    _bad("uri-nul", s3_S3Uri="s3://bucket/\0x"),
    _bad("uri-list", s3_S3Uri=["s3://a/", "s3://b/"]),
    _bad("throttle-nan", SageMakerPipe={"ThrottleMBps": float("nan")}),
    _bad("compression-int", CompressionType=10**40),
    _raw("deep-nesting", "[" * 5000 + "]" * 5000),
    _raw("yaml-alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
         "InputDataConfig: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"),
    _raw("python-tag", "!!python/object/apply:os.system ['echo pwned']\n"),
    _raw("json-nul-escape", '[{"ChannelName": "a\\u0000b", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/"}}}]',
         "json"),
]


@pytest.mark.parametrize("make,fmt", CLI_CASES)
def test_hostile_channel_file_through_the_cli(make, fmt, tmp_path, ml_root, sidecar):
    content = make(tmp_path)
    path = tmp_path / f"channels.{fmt}"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, allow_nan=True), encoding="utf-8")
    proc = sidecar.run("--config", path, "--ml-root", ml_root, "--epochs", "1", timeout=30)
    assert proc.poll() == 2, f"exit {proc.poll()}:\n{proc.stderr}"
    error_line(proc.stderr)  # one line, the prefix, no traceback
    assert proc.stdout == ""
    assert_nothing_written(ml_root)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil_0").exists()


def test_yaml_channel_file_with_nul_escape_is_refused(tmp_path, ml_root, sidecar):
    cfg = write_channel_file(tmp_path / "c.yaml", [channel("train\0x", tmp_path)])
    proc = sidecar.run("--config", cfg, "--ml-root", ml_root, timeout=30)
    assert proc.poll() == 2
    assert "ChannelName" in error_line(proc.stderr)
    assert_nothing_written(ml_root)
