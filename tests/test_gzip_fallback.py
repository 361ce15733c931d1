"""Gzip without the optional ISA-L accelerator: zlib gives the same bytes and the same errors."""

from __future__ import annotations

import gzip
import os

from conftest import assert_epochs, base_env, channel, pattern, write_channel_file, write_tree


def test_zlib_fallback_streams_the_same_bytes(tmp_path, ml_root, sidecar, consumer):
    payloads = [os.urandom(300_000) + b"x" * 2_000_000, b"small"]
    src = write_tree(tmp_path / "src", {
        "a.gz": gzip.compress(payloads[0][:1000]) + gzip.compress(payloads[0][1000:]),  # two members
        "b.gz": gzip.compress(payloads[1]),
    })
    cfg = write_channel_file(tmp_path / "c.yaml", [channel("train", src, CompressionType="Gzip")])
    side = sidecar.serve(cfg, ml_root, "-d", epochs=2, env=base_env(SAGEMAKER_PIPE_GZIP="zlib"))
    reader = consumer(pattern(ml_root, "train"), epochs=2)
    assert_epochs(reader.results(timeout=40), b"".join(payloads), range(2))
    assert side.wait(20) == 0, side.stderr


def test_zlib_fallback_names_a_bad_object(tmp_path, ml_root, sidecar, consumer):
    bad = bytearray(gzip.compress(b"a gzip member whose checksum is wrong"))
    bad[-8] ^= 0xFF  # CRC32 of the trailer: the inflater itself must find it
    src = write_tree(tmp_path / "src", {"a.gz": gzip.compress(b"fine"), "b.gz": bytes(bad)})
    cfg = write_channel_file(tmp_path / "c.yaml", [channel("train", src, CompressionType="Gzip")])
    side = sidecar.serve(cfg, ml_root, env=base_env(SAGEMAKER_PIPE_GZIP="zlib"))
    consumer(pattern(ml_root, "train"), epochs=1)
    assert side.wait(20) == 1, side.stderr
    assert f"channel 'train': {src / 'b.gz'} is not valid gzip data: " in side.stderr, side.stderr
    assert "(CompressionType: Gzip)" in side.stderr, side.stderr
