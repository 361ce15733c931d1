"""Data errors name the channel and the setting that explains them (issue 14), through the installed command.

Mid-epoch errors (gzip, RecordIO size) exit 1 while a real consumer reads the FIFO; manifest errors
are found while planning, before any FIFO exists, and exit 2.
"""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import ERROR_PREFIX, assert_nothing_written, channel, error_line, pattern, write_channel_file, write_tree

pytestmark = pytest.mark.timeout(60)


def _not_gzip(src):
    write_tree(src, {"x.csv": b"1,2,3\n" * 100})
    return src / "x.csv", {"CompressionType": "Gzip"}, "is not gzip data (CompressionType: Gzip)"


def _truncated_gzip(src):
    whole = gzip.compress(bytes(range(256)) * 4000)
    write_tree(src, {"y.csv.gz": whole[: len(whole) // 2]})
    return src / "y.csv.gz", {"CompressionType": "Gzip"}, "is not valid gzip data: truncated (CompressionType: Gzip)"


def _huge_record(src):
    src.mkdir(parents=True)
    with open(src / "huge.bin", "wb") as f:
        f.truncate(1 << 29)  # sparse: refused by its size before a byte is read
    return (src / "huge.bin", {"RecordWrapperType": "RecordIO"},
            f"is {1 << 29} bytes, too large for one RecordIO record of at most {(1 << 29) - 1} "
            "(RecordWrapperType: RecordIO)")


MID_EPOCH = {"not-gzip": _not_gzip, "truncated-gzip": _truncated_gzip, "recordio-too-large": _huge_record}


@pytest.mark.parametrize("case", sorted(MID_EPOCH))
def test_mid_epoch_errors_name_channel_object_and_setting(case, tmp_path, ml_root, sidecar, consumer):
    bad, fields, says = MID_EPOCH[case](tmp_path / "src")
    cfg = write_channel_file(tmp_path / "job.yaml", [channel("train", tmp_path / "src", **fields)])
    side = sidecar.serve(cfg, ml_root, installed=True)
    reader = consumer(pattern(ml_root, "train"), 1)
    assert side.wait(20) == 1, side.stderr
    reader.wait(10)
    errors = [line for line in side.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert errors == [f"{ERROR_PREFIX} channel 'train': {bad} {says}"], side.stderr
    assert "Traceback" not in side.stderr


def _manifest_not_json(tmp_path):
    m = tmp_path / "train.manifest"
    m.write_text('[{"prefix": "data/"}, "a",')
    return channel("train", m, s3_S3DataType="ManifestFile"), f"manifest {m} is not valid JSON " \
        "(S3DataType: ManifestFile)"


def _manifest_escaping_key(tmp_path):
    m = tmp_path / "train.manifest"
    m.write_text(json.dumps([{"prefix": str(tmp_path / "data") + "/"}, "../../etc/passwd"]))
    return channel("train", m, s3_S3DataType="ManifestFile"), f"manifest {m}: entry 1: key '../../etc/passwd' " \
        "escapes the prefix (S3DataType: ManifestFile)"


def _augmented(tmp_path, second_line: str):
    write_tree(tmp_path / "data", {"a.jpg": b"jpg"})
    m = tmp_path / "train.jsonl"
    m.write_text(json.dumps({"source-ref": "data/a.jpg", "label": 1}) + "\n" + second_line + "\n")
    return m, channel("train", m, s3_S3DataType="AugmentedManifestFile", s3_AttributeNames=["source-ref", "label"])


def _augmented_missing_attribute(tmp_path):
    m, ch = _augmented(tmp_path, json.dumps({"source-ref": "data/a.jpg", "lable": 2}))
    return ch, f"augmented manifest {m}: line 2 lacks attribute 'label' (AttributeNames: source-ref, label)"


def _augmented_bad_line(tmp_path):
    m, ch = _augmented(tmp_path, '{"source-ref": "data/a.jpg", ')
    return ch, f"augmented manifest {m}: line 2 is not valid JSON (S3DataType: AugmentedManifestFile)"


PLANNING = {"manifest-not-json": _manifest_not_json, "manifest-escaping-key": _manifest_escaping_key,
            "augmented-missing-attribute": _augmented_missing_attribute, "augmented-bad-line": _augmented_bad_line}


@pytest.mark.parametrize("case", sorted(PLANNING))
def test_manifest_errors_name_channel_file_and_setting(case, tmp_path, ml_root, sidecar):
    ch, says = PLANNING[case](tmp_path)
    cfg = write_channel_file(tmp_path / "job.yaml", [ch])
    side = sidecar.run(*["--config", cfg, "--ml-root", ml_root], installed=True)
    assert side.poll() == 2, side.stderr
    assert error_line(side.stderr) == f"sagemaker-pipe: error: channel 'train': {says}"
    assert_nothing_written(ml_root)
    check = sidecar.run("validate", cfg, "--check-sources", installed=True)  # the same line before a run
    assert check.poll() == 2 and error_line(check.stderr) == error_line(side.stderr), check.stderr
