"""Local manifests: a relative prefix is resolved against the manifest's folder, like a relative S3Uri."""

from __future__ import annotations

import json

from conftest import assert_epochs, channel, pattern, write_channel_file, write_tree


def test_relative_prefix_is_relative_to_the_manifest(tmp_path, ml_root, sidecar, consumer):
    data = tmp_path / "data"
    write_tree(data / "images", {"cat.jpg": b"JPEG-1", "dog.jpg": b"JPEG-2"})
    (data / "manifest.json").write_text(json.dumps([{"prefix": "images/"}, "dog.jpg", "cat.jpg"]))
    # a decoy with the same relative path under the sidecar's working folder must not be used
    write_tree(sidecar.cwd / "images", {"cat.jpg": b"WRONG", "dog.jpg": b"WRONG"})
    cfg = write_channel_file(tmp_path / "c.yaml", [
        channel("m", data / "manifest.json", s3_S3DataType="ManifestFile"),
    ])
    side = sidecar.serve(cfg, ml_root, epochs=2)
    reader = consumer(pattern(ml_root, "m"), epochs=2)
    assert_epochs(reader.results(timeout=30), b"JPEG-2JPEG-1", range(2))
    assert side.wait(20) == 0, side.stderr
