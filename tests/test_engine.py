"""Which bytes an epoch carries (PIPE_MODE.md section 3), checked byte for byte.

Every test runs the sidecar as a subprocess, reads several channels at once for >= 3 epochs with
real consumer processes (tests/consumers.py and ``cat | sha256sum``), and compares the sha256 of
what was read with the bytes built by conftest.expected_stream from the source files.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import struct
from pathlib import Path

import pytest
import recordio
from conftest import (
    assert_epochs,
    assert_nothing_written,
    cat_hashes,
    channel,
    error_line,
    expected_stream,
    homogeneous_resources,
    list_objects,
    object_payloads,
    pattern,
    sha,
    write_channel_file,
    write_tree,
)

EPOCHS = 3


def rng_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def gz(data: bytes, name: str | None = None, level: int = 6) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buf, compresslevel=level, mtime=1234) as f:
        f.write(data)
    return buf.getvalue()


def finish(side, expect_running: bool = True) -> None:
    """After the reads: the sidecar (endless epochs) must still be running and quiet."""
    if expect_running:
        assert side.alive(), f"sidecar exited early rc={side.poll()}:\n{side.stderr}"
    assert "Traceback" not in side.stderr, side.stderr


# ------------------------------------------------------------------------------------------
# sources: relative path, absolute path, file:// URI; several channels at once
# ------------------------------------------------------------------------------------------

def test_three_channels_relative_absolute_and_file_uri(tmp_path, ml_root, sidecar, consumer, cat_reader):
    cfg_dir = tmp_path / "cfg"
    rel_src = write_tree(cfg_dir / "data" / "train", {
        "part-000.csv": b"1,2,3\n" * 50,
        "part-001.csv": b"4,5,6\n" * 70,
        "sub/part-002.csv": rng_bytes(1, 5000),
    })
    abs_src = write_tree(tmp_path / "elsewhere" / "valid", {
        "x.rec": rng_bytes(2, 333), "y.rec": b"", "z/zz.rec": rng_bytes(3, 10),
    })
    uri_src = write_tree(tmp_path / "uri src" / "test", {
        "t1.gz": gz(b"hello\n" * 100), "t2.gz": gz(rng_bytes(4, 20000)),
    })
    cfg = write_channel_file(cfg_dir / "channels.yaml", {
        "TrainingInputMode": "Pipe",
        "InputDataConfig": [
            channel("train", "data/train", ContentType="text/csv"),
            channel("valid", abs_src, RecordWrapperType="RecordIO",
                    s3_S3DataDistributionType="FullyReplicated"),
            channel("test", uri_src.as_uri(), CompressionType="Gzip",
                    s3_S3DataDistributionType="ShardedByS3Key"),  # one host: everything
        ],
    })
    # cwd is not the channel file's directory: "data/train" must resolve against the file, not
    # against the cwd, where a decoy with other bytes sits.
    write_tree(tmp_path / "elsewhere" / "data" / "train", {"decoy": b"wrong tree\n"})
    side = sidecar.serve(cfg, ml_root, cwd=tmp_path / "elsewhere")
    c_train = consumer(pattern(ml_root, "train"), EPOCHS)
    c_valid = consumer(pattern(ml_root, "valid"), EPOCHS, out=tmp_path / "valid_out")
    cat_test = cat_reader(ml_root / "input" / "data" / "test", EPOCHS)

    assert_epochs(c_train.results(), expected_stream(rel_src), range(EPOCHS))
    valid_expected = expected_stream(abs_src, record_io=True)
    res = c_valid.results()
    assert_epochs(res, valid_expected, range(EPOCHS))
    for r in res:
        assert recordio.decode(Path(r["out"]).read_bytes()) == object_payloads(abs_src)
    test_expected = expected_stream(uri_src, gunzip=True)
    assert cat_hashes(cat_test) == [sha(test_expected)] * EPOCHS
    finish(side)


# ------------------------------------------------------------------------------------------
# ordering
# ------------------------------------------------------------------------------------------

TRICKY = [
    "a/b", "a.b", "a0", "A", "_", "a-", "a", "b/c/d/e", "b/c.d", "b/c0", "B",
    "\u00e9t\u00e9.txt",          # été.txt (UTF-8 c3 a9 ...)
    "z", "\uff21",                # fullwidth A: ef bc a1
    "\U0001f600.bin",             # emoji: f0 9f 98 80
    "0", "~", " space", "dir/ inner", "dir/#hash", "dir/%pct",
]


def tricky_tree(root: Path) -> dict[str, bytes]:
    files = {}
    for i, name in enumerate(TRICKY):
        # "a" is also a directory ("a/b"): use "a_top" for the plain-file case
        if name == "a":
            continue
        files[name] = f"<{i}:{name}>".encode() + bytes([i]) * (i % 5)
    write_tree(root, files)
    return files


def test_listing_order_is_byte_order_of_relative_paths(tmp_path, ml_root, sidecar, consumer, cat_reader):
    src = tmp_path / "tricky"
    files = tricky_tree(src)
    # The order the test expects, written out by hand for the core names (S3 listing order):
    names = [rel.decode() for rel, _ in list_objects(src)]
    core = [n for n in names if n in ("a/b", "a.b", "a0", "A", "_", "a-", "B", "z", "0")]
    assert core == ["0", "A", "B", "_", "a-", "a.b", "a/b", "a0", "z"]
    assert names.index("\u00e9t\u00e9.txt") < names.index("\uff21") < names.index("\U0001f600.bin")
    assert len(names) == len(files)

    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("plain", src),
        channel("rec", src, RecordWrapperType="RecordIO"),
    ])
    side = sidecar.serve(cfg, ml_root)
    c_rec = consumer(pattern(ml_root, "rec"), EPOCHS, out=tmp_path / "rec_out")
    cat_plain = cat_reader(ml_root / "input" / "data" / "plain", EPOCHS)

    expected_payloads = [files[n] for n in names]
    res = c_rec.results()
    assert_epochs(res, expected_stream(src, record_io=True), range(EPOCHS))
    for r in res:
        got = recordio.decode(Path(r["out"]).read_bytes())
        got_names = [names[expected_payloads.index(p)] if p in expected_payloads else repr(p) for p in got]
        assert got_names == names, "objects streamed in the wrong order"
    assert cat_hashes(cat_plain) == [sha(expected_stream(src))] * EPOCHS
    finish(side)


def test_symlinks_hidden_files_and_deep_nesting(tmp_path, ml_root, sidecar, consumer, cat_reader):
    outside = write_tree(tmp_path / "outside", {"target.bin": rng_bytes(9, 777)})
    src = write_tree(tmp_path / "src", {
        ".hidden": b"dot file\n",
        ".dotdir/inner": b"inside a dot dir\n",
        "deep/a/b/c/d/e/f/leaf": b"leaf\n",
        "m": b"m\n",
        "empty": b"",
    })
    os.symlink(outside / "target.bin", src / "link-to-outside")
    os.symlink("m", src / "n-link-to-m")
    os.mkfifo(src / "zz-a-fifo")  # not a regular file: not an object (and must never be opened)
    assert [r.decode() for r, _ in list_objects(src)] == [
        ".dotdir/inner", ".hidden", "deep/a/b/c/d/e/f/leaf", "empty", "link-to-outside", "m", "n-link-to-m"]

    cfg = write_channel_file(tmp_path / "ch.yaml", {"InputDataConfig": [
        channel("one", src), channel("two", src, RecordWrapperType="RecordIO")]})
    side = sidecar.serve(cfg, ml_root)
    c_two = consumer(pattern(ml_root, "two"), EPOCHS, out=tmp_path / "two_out")
    cat_one = cat_reader(ml_root / "input" / "data" / "one", EPOCHS)
    res = c_two.results()
    assert_epochs(res, expected_stream(src, record_io=True), range(EPOCHS))
    for r in res:
        assert recordio.decode(Path(r["out"]).read_bytes()) == object_payloads(src)
    assert cat_hashes(cat_one) == [sha(expected_stream(src))] * EPOCHS
    finish(side)


def test_file_names_that_are_not_utf8(tmp_path, ml_root, sidecar, consumer, cat_reader):
    """Linux file names are bytes: a name that is not valid UTF-8 is still a regular file, sorted
    by its bytes (0xff after every UTF-8 lead byte); -d must be able to log it."""
    src = write_tree(tmp_path / "bytesnames", {"a.txt": b"a", "z.txt": b"z", "\u00e9.txt": b"e-acute"})
    for raw, data in ((b"\xff\xfe-raw.bin", b"raw ff"), (b"latin1-\xe9.bin", b"raw e9")):
        fd = os.open(os.fsencode(src) + b"/" + raw, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)
    keys = [rel for rel, _ in list_objects(src)]
    assert keys == [b"a.txt", b"latin1-\xe9.bin", b"z.txt", "\u00e9.txt".encode(), b"\xff\xfe-raw.bin"]
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("raw", src),
                                                    channel("rawrec", src, RecordWrapperType="RecordIO")])
    side = sidecar.serve(cfg, ml_root, "-d")
    c = consumer(pattern(ml_root, "raw"), EPOCHS)
    cat = cat_reader(ml_root / "input" / "data" / "rawrec", EPOCHS)
    assert_epochs(c.results(), expected_stream(src), range(EPOCHS))
    assert cat_hashes(cat) == [sha(expected_stream(src, record_io=True))] * EPOCHS
    finish(side)


# ------------------------------------------------------------------------------------------
# gzip
# ------------------------------------------------------------------------------------------

# The package may gunzip with ISA-L when installed; SAGEMAKER_PIPE_GZIP=zlib forces its zlib path.
# Both must behave the same (the variable is harmless to a package that does not know it).
INFLATERS = pytest.mark.parametrize("inflater", [{}, {"SAGEMAKER_PIPE_GZIP": "zlib"}], ids=["default", "zlib"])


@INFLATERS
def test_gzip_each_object_including_multi_member(inflater, tmp_path, ml_root, sidecar, consumer, cat_reader):
    big = (b"the quick brown fox " * 20000) + rng_bytes(5, 100_000)
    src = write_tree(tmp_path / "gz", {
        "a.gz": gz(b"alpha\n"),
        "b.gz": gz(b"first member\n") + gz(b"second member\n", name="second.txt") + gz(b"", level=1),
        "c/d.gz": gz(big, name="big.txt", level=9),
        "e.gz": gz(b""),
        "f.gz": gz(rng_bytes(6, 3), level=0),
    })
    assert gzip.decompress((src / "b.gz").read_bytes()) == b"first member\nsecond member\n"
    cfg = write_channel_file(tmp_path / "ch.yaml", {"InputDataConfig": [
        channel("gz", src, CompressionType="Gzip"),
        channel("gzrec", src, CompressionType="Gzip", RecordWrapperType="RecordIO"),
        channel("raw", src),  # the compressed bytes as they are
    ]})
    side = sidecar.serve(cfg, ml_root, env_extra=inflater)
    c_gz = consumer(pattern(ml_root, "gz"), EPOCHS)
    c_rec = consumer(pattern(ml_root, "gzrec"), EPOCHS, out=tmp_path / "rec_out")
    cat_raw = cat_reader(ml_root / "input" / "data" / "raw", EPOCHS)

    assert_epochs(c_gz.results(), expected_stream(src, gunzip=True), range(EPOCHS))
    res = c_rec.results()
    assert_epochs(res, expected_stream(src, gunzip=True, record_io=True), range(EPOCHS))
    for r in res:
        # one record per object, holding the whole (multi-member) decompressed content
        assert recordio.decode(Path(r["out"]).read_bytes()) == object_payloads(src, gunzip=True)
    assert cat_hashes(cat_raw) == [sha(expected_stream(src))] * EPOCHS
    finish(side)


# ------------------------------------------------------------------------------------------
# RecordIO framing
# ------------------------------------------------------------------------------------------

def test_recordio_padding_for_payload_sizes_0_to_5(tmp_path, ml_root, sidecar, consumer, cat_reader):
    payloads = {f"p{n:02d}": bytes(range(1, n + 1)) for n in (0, 1, 2, 3, 4, 5, 7, 8)}
    payloads["p99-large"] = rng_bytes(7, 70_001)  # larger than a default pipe buffer, odd size
    src = write_tree(tmp_path / "rio", payloads)
    cfg = write_channel_file(tmp_path / "ch.yaml", {"InputDataConfig": [
        channel("rio", src, RecordWrapperType="RecordIO", ContentType="application/x-recordio"),
        channel("rio2", src, RecordWrapperType="RecordIO"),
        channel("plain", src),
    ]})
    side = sidecar.serve(cfg, ml_root)
    c_rio = consumer(pattern(ml_root, "rio"), EPOCHS, out=tmp_path / "rio_out")
    cat_rio2 = cat_reader(ml_root / "input" / "data" / "rio2", EPOCHS)
    c_plain = consumer(pattern(ml_root, "plain"), EPOCHS)

    # The stream written out by hand for the small records (independent of recordio.encode):
    magic = b"\x0a\x23\xd7\xce"
    by_hand = (
        magic + b"\0\0\0\0"                                        # size 0: header only
        + magic + b"\x01\0\0\0" + b"\x01" + b"\0\0\0"               # size 1: 3 bytes padding
        + magic + b"\x02\0\0\0" + b"\x01\x02" + b"\0\0"
        + magic + b"\x03\0\0\0" + b"\x01\x02\x03" + b"\0"
        + magic + b"\x04\0\0\0" + b"\x01\x02\x03\x04"              # size 4: no padding
        + magic + b"\x05\0\0\0" + b"\x01\x02\x03\x04\x05" + b"\0\0\0"
        + magic + b"\x07\0\0\0" + bytes(range(1, 8)) + b"\0"
        + magic + b"\x08\0\0\0" + bytes(range(1, 9))
    )
    large = payloads["p99-large"]
    by_hand += magic + struct.pack("<I", len(large)) + large + b"\0" * 3
    assert by_hand == expected_stream(src, record_io=True)

    res = c_rio.results()
    assert_epochs(res, by_hand, range(EPOCHS))
    for r in res:
        data = Path(r["out"]).read_bytes()
        assert len(data) % 4 == 0
        assert recordio.decode(data) == [payloads[k] for k in sorted(payloads)]
    assert cat_hashes(cat_rio2) == [sha(by_hand)] * EPOCHS
    assert_epochs(c_plain.results(), b"".join(payloads[k] for k in sorted(payloads)), range(EPOCHS))
    finish(side)


# ------------------------------------------------------------------------------------------
# volume and back-pressure
# ------------------------------------------------------------------------------------------

def test_multi_megabyte_channels_with_slow_and_fast_readers(tmp_path, ml_root, sidecar, consumer, cat_reader):
    src_a = write_tree(tmp_path / "a", {f"f{i}": rng_bytes(100 + i, 700_000 + i) for i in range(4)})
    src_b = write_tree(tmp_path / "b", {f"g{i}.gz": gz(rng_bytes(200 + i, 400_000)) for i in range(3)})
    cfg = write_channel_file(tmp_path / "ch.yaml", {"InputDataConfig": [
        channel("big", src_a), channel("bigz", src_b, CompressionType="Gzip", RecordWrapperType="RecordIO")]})
    side = sidecar.serve(cfg, ml_root)
    slow = consumer(pattern(ml_root, "big"), EPOCHS, modes="slow:65536:0.002")
    cat_z = cat_reader(ml_root / "input" / "data" / "bigz", EPOCHS)
    assert_epochs(slow.results(timeout=45), expected_stream(src_a), range(EPOCHS))
    assert cat_hashes(cat_z) == [sha(expected_stream(src_b, gunzip=True, record_io=True))] * EPOCHS
    finish(side)


def test_thousands_of_objects_under_a_low_open_files_limit(tmp_path, ml_root, sidecar, consumer, cat_reader):
    """1500 objects per channel and epoch with at most 128 open descriptors: every object's file
    must be closed once streamed (a leak fails within the first epoch)."""
    plain = write_tree(tmp_path / "many", {f"d{i % 7}/f{i:05d}": f"{i}\n".encode() for i in range(1500)})
    zipped = write_tree(tmp_path / "manyz", {f"z{i:05d}.gz": gz(f"z{i}".encode()) for i in range(1500)})
    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("many", plain), channel("manyz", zipped, CompressionType="Gzip", RecordWrapperType="RecordIO")])
    side = sidecar.serve(cfg, ml_root, nofile=128)
    c = consumer(pattern(ml_root, "many"), EPOCHS)
    cat = cat_reader(ml_root / "input" / "data" / "manyz", EPOCHS)
    assert_epochs(c.results(), expected_stream(plain), range(EPOCHS))
    assert cat_hashes(cat) == [sha(expected_stream(zipped, gunzip=True, record_io=True))] * EPOCHS
    finish(side)


# ------------------------------------------------------------------------------------------
# input document forms
# ------------------------------------------------------------------------------------------

def test_bare_channel_list_json_relative_config_path(tmp_path, ml_root, sidecar, consumer, cat_reader):
    s1 = write_tree(tmp_path / "conf" / "s1", {"x": b"x" * 10, "y": b"y" * 20})
    s2 = write_tree(tmp_path / "s2", {"q": b"q" * 3})
    write_tree(tmp_path / "s1", {"decoy": b"decoy: relative to the cwd, not to the file"})
    write_channel_file(tmp_path / "conf" / "channels.json", [channel("c1", "s1"), channel("c2", s2)], fmt="json")
    # --config given relative to the cwd; the channel's S3Uri relative to the file's folder
    side = sidecar("--config", "conf/channels.json", "--ml-root", str(ml_root), cwd=tmp_path)
    c1 = consumer(pattern(ml_root, "c1"), EPOCHS)
    cat2 = cat_reader(ml_root / "input" / "data" / "c2", EPOCHS)
    assert_epochs(c1.results(), expected_stream(s1), range(EPOCHS))
    assert cat_hashes(cat2) == [sha(expected_stream(s2))] * EPOCHS
    finish(side)


def test_yaml_anchors_and_merge_keys(tmp_path, ml_root, sidecar, consumer, cat_reader):
    s1 = write_tree(tmp_path / "s1", {"a.gz": gz(b"one\n" * 10)})
    s2 = write_tree(tmp_path / "s2", {"b.gz": gz(b"two\n" * 20), "c.gz": gz(b"three")})
    text = f"""
x-defaults: &defaults
  CompressionType: Gzip
  RecordWrapperType: RecordIO
  InputMode: Pipe
InputDataConfig:
  - <<: *defaults
    ChannelName: first
    DataSource: {{S3DataSource: {{S3Uri: "{s1}", S3DataType: S3Prefix}}}}
  - <<: *defaults
    ChannelName: second
    DataSource:
      S3DataSource:
        S3Uri: "{s2.as_uri()}"
"""
    # top-level keys starting with x- are the document's own (as in compose files): a place for anchors
    cfg = tmp_path / "anchors.yaml"
    cfg.write_text(text)
    side = sidecar.serve(cfg, ml_root)
    c1 = consumer(pattern(ml_root, "first"), EPOCHS)
    cat2 = cat_reader(ml_root / "input" / "data" / "second", EPOCHS)
    assert_epochs(c1.results(), expected_stream(s1, gunzip=True, record_io=True), range(EPOCHS))
    assert cat_hashes(cat2) == [sha(expected_stream(s2, gunzip=True, record_io=True))] * EPOCHS
    finish(side)


def describe_training_job(channels: list[dict]) -> dict:
    """What ``aws sagemaker describe-training-job`` prints (trimmed, but with its real key set)."""
    return {
        "TrainingJobName": "my-job-2024-01-01",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/my-job-2024-01-01",
        "ModelArtifacts": {"S3ModelArtifacts": "s3://bucket/out/model.tar.gz"},
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "HyperParameters": {"epochs": "3", "lr": "0.1"},
        "AlgorithmSpecification": {
            "TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/algo:latest",
            "TrainingInputMode": "Pipe",
            "EnableSageMakerMetricsTimeSeries": False,
        },
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "InputDataConfig": channels,
        "OutputDataConfig": {"KmsKeyId": "", "S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
        "CreationTime": "2024-01-01T00:00:00.000000+00:00",
        "TrainingStartTime": "2024-01-01T00:01:00.000000+00:00",
        "LastModifiedTime": "2024-01-01T00:10:00.000000+00:00",
        "SecondaryStatusTransitions": [{"Status": "Starting", "StartTime": "2024-01-01T00:00:00+00:00",
                                        "StatusMessage": "Starting the training job"}],
        "EnableNetworkIsolation": False,
        "EnableInterContainerTrafficEncryption": False,
        "EnableManagedSpotTraining": False,
        "TrainingTimeInSeconds": 540,
        "BillableTimeInSeconds": 540,
        "ProfilingStatus": "Disabled",
    }


def test_describe_training_job_json(tmp_path, ml_root, sidecar, consumer, cat_reader):
    s1 = write_tree(tmp_path / "train", {"a.gz": gz(b"A" * 1000), "b.gz": gz(b"B" * 10)})
    s2 = write_tree(tmp_path / "validation", {"v1": b"v1", "v2": b"v22"})
    doc = describe_training_job([
        {"ChannelName": "train",
         "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(s1),
                                         "S3DataDistributionType": "FullyReplicated"}},
         "ContentType": "text/csv", "CompressionType": "Gzip", "RecordWrapperType": "None"},
        {"ChannelName": "validation",
         "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": s2.as_uri(),
                                         "S3DataDistributionType": "FullyReplicated"}},
         "CompressionType": "None", "RecordWrapperType": "RecordIO", "InputMode": "Pipe"},
    ])
    cfg = write_channel_file(tmp_path / "describe.json", doc, fmt="json")
    side = sidecar.serve(cfg, ml_root)
    c1 = consumer(pattern(ml_root, "train"), EPOCHS)
    cat2 = cat_reader(ml_root / "input" / "data" / "validation", EPOCHS)
    assert_epochs(c1.results(), expected_stream(s1, gunzip=True), range(EPOCHS))
    assert cat_hashes(cat2) == [sha(expected_stream(s2, record_io=True))] * EPOCHS
    conf = ml_root / "input" / "config"
    assert json.loads((conf / "inputdataconfig.json").read_text()) == {
        "train": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                  "RecordWrapperType": "None", "ContentType": "text/csv"},
        "validation": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                       "RecordWrapperType": "RecordIO"},
    }
    assert json.loads((conf / "hyperparameters.json").read_text()) == {"epochs": "3", "lr": "0.1"}
    # describe-training-job's ResourceConfig: InstanceCount hosts, InstanceType the current instance type
    assert json.loads((conf / "resourceconfig.json").read_text()) == homogeneous_resources(
        "algo-1", ["algo-1"], "ml.m5.xlarge")
    finish(side)


# ------------------------------------------------------------------------------------------
# ShuffleConfig and ShardedByS3Key (PIPE_MODE.md section 3)
# ------------------------------------------------------------------------------------------

def _record_orders(results: list[dict], names_by_payload: dict[bytes, str]) -> list[list[str]]:
    orders = []
    for r in results:
        recs = recordio.decode(Path(r["out"]).read_bytes())
        orders.append([names_by_payload[p] for p in recs])
    return orders


def test_shuffle_is_per_epoch_and_deterministic_from_seed(tmp_path, sidecar, consumer, cat_reader):
    files = {f"obj{i:02d}": f"payload {i}\n".encode() for i in range(10)}
    src = write_tree(tmp_path / "shuf", files)
    plain = write_tree(tmp_path / "plain", {"p": b"plain"})
    by_payload = {v: k for k, v in files.items()}

    def run(seed: int, tag: str) -> list[list[str]]:
        ml = tmp_path / f"ml-{tag}"
        cfg = write_channel_file(tmp_path / f"ch-{tag}.yaml", {"InputDataConfig": [
            channel("shuf", src, RecordWrapperType="RecordIO", ShuffleConfig={"Seed": seed}),
            channel("plain", plain)]})
        side = sidecar.serve(cfg, ml, epochs=EPOCHS)
        c = consumer(pattern(ml, "shuf"), EPOCHS, out=tmp_path / f"out-{tag}")
        cat = cat_reader(ml / "input" / "data" / "plain", EPOCHS)
        res = c.results()
        assert cat_hashes(cat) == [sha(b"plain")] * EPOCHS
        assert side.wait(10) == 0, side.stderr
        return _record_orders(res, by_payload)

    first = run(42, "a")
    again = run(42, "b")
    other = run(7, "c")
    for order in first + other:
        assert sorted(order) == sorted(files), "an epoch is not a permutation of the objects"
    assert len({tuple(o) for o in first}) == EPOCHS, f"epochs share an order: {first}"
    assert first == again, "the same seed gave a different sequence of orders"
    assert first != other, "different seeds gave the same sequence of orders"


def test_sharded_by_s3_key_splits_objects_between_hosts(tmp_path, sidecar, consumer, cat_reader):
    files = {f"k{i:02d}": f"object {i}\n".encode() for i in range(12)}
    src = write_tree(tmp_path / "shard", files)
    rep = write_tree(tmp_path / "rep", {"r1": b"replicated-1", "r2": b"replicated-2"})
    by_payload = {v: k for k, v in files.items()}
    per_host = {}
    for host in ("algo-1", "algo-2"):
        ml = tmp_path / f"ml-{host}"
        cfg = write_channel_file(tmp_path / f"{host}.yaml", {
            "ResourceConfig": {"CurrentHost": host, "Hosts": ["algo-2", "algo-1"]},
            "InputDataConfig": [
                channel("shard", src, RecordWrapperType="RecordIO",
                        s3_S3DataDistributionType="ShardedByS3Key"),
                channel("rep", rep)]})
        side = sidecar.serve(cfg, ml, epochs=EPOCHS)
        c = consumer(pattern(ml, "shard"), EPOCHS, out=tmp_path / f"out-{host}")
        cat = cat_reader(ml / "input" / "data" / "rep", EPOCHS)
        orders = _record_orders(c.results(), by_payload)
        assert cat_hashes(cat) == [sha(expected_stream(rep))] * EPOCHS  # FullyReplicated: everything
        assert side.wait(10) == 0, side.stderr
        assert json.loads((ml / "input" / "config" / "resourceconfig.json").read_text()) == homogeneous_resources(
            host, ["algo-1", "algo-2"])
        assert all(sorted(o) == sorted(orders[0]) for o in orders), "shard changed between epochs without shuffle"
        per_host[host] = set(orders[0])
    a, b = per_host["algo-1"], per_host["algo-2"]
    assert a and b, f"one host got no objects: {per_host}"
    assert not (a & b), f"hosts share objects: {sorted(a & b)}"
    assert a | b == set(files), f"objects streamed by no host: {sorted(set(files) - (a | b))}"


def test_sharding_with_shuffle_still_partitions_every_epoch(tmp_path, sidecar, consumer, cat_reader):
    """Both hosts shuffle from the same seed, so each epoch's shards are disjoint and complete."""
    files = {f"s{i:02d}": f"sharded object {i}\n".encode() for i in range(16)}
    src = write_tree(tmp_path / "shard", files)
    rep = write_tree(tmp_path / "rep", {"r": b"r"})
    by_payload = {v: k for k, v in files.items()}
    orders = {}
    for host in ("algo-1", "algo-2"):
        ml = tmp_path / f"ml-{host}"
        cfg = write_channel_file(tmp_path / f"{host}.yaml", {
            "ResourceConfig": {"CurrentHost": host, "Hosts": ["algo-1", "algo-2"]},
            "InputDataConfig": [
                channel("shard", src, RecordWrapperType="RecordIO", ShuffleConfig={"Seed": 11},
                        s3_S3DataDistributionType="ShardedByS3Key"),
                channel("rep", rep)]})
        side = sidecar.serve(cfg, ml, epochs=EPOCHS)
        c = consumer(pattern(ml, "shard"), EPOCHS, out=tmp_path / f"out-{host}")
        cat = cat_reader(ml / "input" / "data" / "rep", EPOCHS)
        orders[host] = _record_orders(c.results(), by_payload)
        assert cat_hashes(cat) == [sha(b"r")] * EPOCHS
        assert side.wait(10) == 0, side.stderr
    for n in range(EPOCHS):
        a, b = orders["algo-1"][n], orders["algo-2"][n]
        assert a and b, f"epoch {n}: a host got nothing"
        assert len(set(a)) == len(a) and len(set(b)) == len(b), f"epoch {n}: an object repeated"
        assert not set(a) & set(b), f"epoch {n}: both hosts streamed {sorted(set(a) & set(b))}"
        assert set(a) | set(b) == set(files), f"epoch {n}: nobody streamed {sorted(set(files) - set(a) - set(b))}"


# ------------------------------------------------------------------------------------------
# the log
# ------------------------------------------------------------------------------------------

def test_log_line_per_channel_and_epoch(tmp_path, ml_root, sidecar, consumer, cat_reader):
    s1 = write_tree(tmp_path / "s1", {"a": b"x" * 100, "b": b"", "c/d": b"y" * 23})
    s2 = write_tree(tmp_path / "s2", {"only": b"z" * 5})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", s1), channel("aux", s2)])
    side = sidecar.serve(cfg, ml_root, epochs=EPOCHS)
    c1 = consumer(pattern(ml_root, "train"), EPOCHS)
    cat2 = cat_reader(ml_root / "input" / "data" / "aux", EPOCHS)
    assert_epochs(c1.results(), expected_stream(s1), range(EPOCHS))
    assert cat_hashes(cat2) == [sha(b"z" * 5)] * EPOCHS
    assert side.wait(10) == 0, side.stderr
    log = side.stderr
    assert "Traceback" not in log
    for n in range(EPOCHS):
        for name, k, b in (("train", 3, 123), ("aux", 1, 5)):
            lines = [line for line in log.splitlines()
                     if re.search(rf"(^|\s)channel={name}\s+epoch={n}\s+objects={k}\s+bytes={b}(\s|$)", line)]
            assert len(lines) == 1, f"no single log line for channel={name} epoch={n}:\n{log}"
            assert "MB/s" in lines[0], lines[0]
    assert not re.search(rf"epoch={EPOCHS}\b", log), "a log line for an epoch that never ran"


def test_debug_flag_logs_each_object(tmp_path, ml_root, sidecar, consumer, cat_reader):
    names = ["alpha.bin", "beta/gamma.bin", "delta.bin"]
    s1 = write_tree(tmp_path / "s1", {n: n.encode() for n in names})
    s2 = write_tree(tmp_path / "s2", {"epsilon.bin": b"e"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", s1), channel("aux", s2)])
    side = sidecar.serve(cfg, ml_root, "-d", epochs=EPOCHS)
    c1 = consumer(pattern(ml_root, "train"), EPOCHS)
    cat2 = cat_reader(ml_root / "input" / "data" / "aux", EPOCHS)
    assert_epochs(c1.results(), expected_stream(s1), range(EPOCHS))
    assert cat_hashes(cat2) == [sha(b"e")] * EPOCHS
    assert side.wait(10) == 0, side.stderr
    log = side.stderr
    for name in names + ["epsilon.bin"]:
        base = name.rsplit("/", 1)[-1]
        assert sum(base in line for line in log.splitlines()) >= EPOCHS, f"{name} not logged per epoch:\n{log}"


# ------------------------------------------------------------------------------------------
# data errors found mid-epoch
# ------------------------------------------------------------------------------------------

@INFLATERS
@pytest.mark.parametrize("kind", ["not_gzip", "truncated", "bad_crc", "trailing_garbage"])
def test_bad_gzip_object_mid_epoch_stops_with_error(kind, inflater, tmp_path, ml_root, sidecar, consumer):
    a = rng_bytes(11, 50_000)
    b_plain = rng_bytes(12, 200_000)
    c = b"c" * 1000
    if kind == "not_gzip":
        b = b"this is plain text, not gzip\n" * 100
    elif kind == "truncated":
        whole = gz(b_plain)
        b = whole[: len(whole) // 2]
    elif kind == "bad_crc":
        whole = bytearray(gz(b_plain))
        whole[-8] ^= 0xFF  # CRC32 of the trailer
        b = bytes(whole)
    else:  # a whole member, then bytes that are not a gzip member (gzip -d: "trailing garbage")
        b = gz(b_plain) + b"this is not gzip" * 10
    src = write_tree(tmp_path / "gz", {"a.gz": gz(a), "b.gz": b, "c.gz": gz(c)})
    other = write_tree(tmp_path / "other", {"o": b"o"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("train", src, CompressionType="Gzip"), channel("other", other)])
    side = sidecar.serve(cfg, ml_root, env_extra=inflater)
    reader = consumer(pattern(ml_root, "train"), 1, out=tmp_path / "out")
    rc = side.wait(20)
    got = reader.results()[0]
    assert rc == 1, f"expected exit status 1 after a bad gzip object, got {rc}:\n{side.stderr}"
    full = a + b_plain + c
    assert got["sha256"] != sha(full), "the reader saw a complete epoch despite the bad object"
    # Nothing of c may follow the bad object; of b, only what was really there.
    limit = {"not_gzip": len(a), "truncated": len(a) + len(b_plain) - 1}.get(kind, len(a) + len(b_plain))
    assert got["bytes"] <= limit, f"read {got['bytes']} bytes, more than the {limit} before the error"
    assert (a + b_plain).startswith(Path(got["out"]).read_bytes()), "the reader got bytes that are not the data"
    assert "Traceback" not in side.stderr, side.stderr
    err = [line for line in side.stderr.splitlines() if "b.gz" in line]
    assert err, f"no line names the bad object b.gz:\n{side.stderr}"


@pytest.mark.parametrize("kind", ["removed", "replaced_by_directory", "permission_denied",
                                  "truncated_while_streaming"])
def test_object_unreadable_mid_epoch_stops_with_error(kind, tmp_path, ml_root, sidecar, consumer):
    if kind == "permission_denied" and os.geteuid() == 0:
        pytest.skip("root reads any file: chmod 000 does not make a file unreadable")
    big = rng_bytes(21, 4 << 20)  # far more than any pipe buffer: the writer blocks inside it
    src = write_tree(tmp_path / "src", {"a-big": big, "m-mid": b"m" * 10, "z-last": b"z" * 100})
    other = write_tree(tmp_path / "other", {"o": b"o"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [channel("train", src), channel("other", other)])
    side = sidecar.serve(cfg, ml_root)
    gate = tmp_path / "gate"
    reader = consumer(pattern(ml_root, "train"), 1, modes="gate:100000", gate=gate)
    ev = reader.next_line()
    assert ev.get("event") == "gated", ev
    # The epoch has started (listing done, writer blocked in a-big): now break z-last.
    target = src / "z-last"
    if kind == "truncated_while_streaming":
        target = src / "a-big"
        os.truncate(target, 1 << 20)
    elif kind == "removed":
        target.unlink()
    elif kind == "replaced_by_directory":
        target.unlink()
        target.mkdir()
    else:
        target.chmod(0)
    gate.touch()
    rc = side.wait(20)
    got = reader.results()[0]
    assert rc == 1, f"expected exit status 1, got {rc}:\n{side.stderr}"
    assert got["bytes"] < len(big) + 10 + 100, "the reader saw a complete-looking epoch"
    assert "Traceback" not in side.stderr, side.stderr
    assert any(target.name in line for line in side.stderr.splitlines()), (
        f"no line names the unreadable object {target.name}:\n{side.stderr}")


# ------------------------------------------------------------------------------------------
# large payloads
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_gunzip_recordio_payload_larger_than_64_mib(tmp_path, ml_root, sidecar, consumer):
    """A decompressed payload of 65 MiB + 3 bytes: the length must be known before the header."""
    payload_len = (65 << 20) + 3
    unit = b"0123456789abcdef" * 4096  # 64 KiB
    payload = unit * (payload_len // len(unit)) + unit[: payload_len % len(unit)]
    assert len(payload) == payload_len
    src = write_tree(tmp_path / "big", {"a.gz": gz(b"small"), "b.gz": gz(payload, level=1), "c.gz": gz(b"")})
    small = write_tree(tmp_path / "small", {"s": b"s"})
    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("big", src, CompressionType="Gzip", RecordWrapperType="RecordIO"), channel("small", small)])
    side = sidecar.serve(cfg, ml_root)
    c = consumer(pattern(ml_root, "big"), EPOCHS)
    c_small = consumer(pattern(ml_root, "small"), EPOCHS)
    expected = recordio.encode(b"small") + recordio.encode(payload) + recordio.encode(b"")
    assert_epochs(c.results(timeout=45), expected, range(EPOCHS))
    assert_epochs(c_small.results(), b"s", range(EPOCHS))
    finish(side)


@pytest.mark.slow
@pytest.mark.parametrize("gunzip", [False, True], ids=["plain", "gzip"])
def test_recordio_payload_of_2_pow_29_bytes_is_an_error_naming_it(gunzip, tmp_path, ml_root, sidecar, consumer):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small").write_bytes(gz(b"a") if gunzip else b"a")
    if gunzip:
        member = gzip.compress(b"\0" * (1 << 20))
        (src / "b-huge").write_bytes(member * 512)  # 512 members of 1 MiB: 2^29 bytes inflated
    else:
        with open(src / "b-huge", "wb") as f:
            f.truncate(1 << 29)  # sparse: no disk space used
    (src / "c-small").write_bytes(gz(b"c") if gunzip else b"c")
    fields = {"CompressionType": "Gzip"} if gunzip else {}
    cfg = write_channel_file(tmp_path / "ch.yaml", [
        channel("train", src, RecordWrapperType="RecordIO", **fields), channel("other", tmp_path / "o")])
    write_tree(tmp_path / "o", {"o": b"o"})
    side = sidecar.serve(cfg, ml_root, epochs=1)
    reader = consumer(pattern(ml_root, "train"), 1, wait=20)
    rc = side.wait(40)
    assert rc in (1, 2), f"a 2^29-byte RecordIO payload was not refused (exit {rc}):\n{side.stderr[-2000:]}"
    assert "Traceback" not in side.stderr
    assert any("b-huge" in line for line in side.stderr.splitlines()), side.stderr
    if rc == 2:  # refused up front: the config-error contract applies
        error_line(side.stderr)
        assert_nothing_written(ml_root)
    else:
        got = reader.results()[0]
        assert got["bytes"] <= len(recordio.encode(b"a")), "bytes of the oversized record reached the reader"
