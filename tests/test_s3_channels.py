"""S3 channels (issue 3): which bytes an epoch carries when the source is S3 (PIPE_MODE.md section 3).

The sidecar runs as a subprocess against a real S3 server on 127.0.0.1 (moto for the whole matrix,
SeaweedFS -- which checks signatures and lists keys in its own order -- for a representative
subset), with the endpoint and keys given only through the standard AWS_* variables. Consumer
processes read >= 3 epochs and the bytes they read are compared, byte for byte (sha256), with the
stream built here from the objects the test itself put into the bucket.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import uuid
from typing import Any

import pytest
from conftest import assert_nothing_written, error_line, homogeneous_resources, pattern, write_tree
from s3_helpers import (
    MIB,
    ModuleBuckets,
    blob,
    data_error_line,
    decode_records,
    gz,
    gz_members,
    jsonl,
    literal,
    prefix_keys,
    put_objects,
    s3_channel,
    s3_env,
    stream_of,
    tagged_unit,
    unit_order,
)
from s3_servers import empty_and_delete_bucket

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------------------------
# the module's data set: one bucket per server, seeded once
# --------------------------------------------------------------------------------------------

TRAIN = {
    # keys chosen so that byte order differs from SeaweedFS's directory-wise listing order
    # ("b-c.csv" < "b/c.csv" by bytes) and from case-insensitive or locale order ("B" < "a" < "é")
    "train/B.csv": b"B,1\nB,2\n",
    "train/a b.txt": b"a key with a space\n",
    "train/a.csv": b"a,1\na,2\na,3\n",
    "train/b-c.csv": blob(1, 1001),
    "train/b/c.csv": blob(2, 4099),
    "train/large.bin": blob(3, 5 * MIB + 3),  # more than one SeaweedFS chunk (4 MiB)
    "train/dir/": b"",  # a folder marker: skipped
    "train/dir/f.bin": blob(4, 17),
    "train/empty.bin": b"",  # an empty object is still an object (an empty record with RecordIO)
    "train/z": blob(5, 3),
    "train/é.txt": "é ünïcödé ✓\n".encode(),
    # keys that need care in URLs and signatures
    "train/k/plus+sign": b"plus",
    "train/k/pct%20x": b"percent",
    "train/k/q?x#y": b"query and fragment characters",
    "train/k/amp&=;": b"ampersand",
    "train/k/ü/Ω": b"unicode folders",
    "training.csv": b"t,r,a,i,n,i,n,g\n",  # s3://b/train matches it: a plain string prefix
}
DECOYS = {"trai": b"not me", "Train/x": b"not me", "other/train/x": b"not me"}
GZ = {
    "gz/1.gz": gz(b"hello gzip\n" * 100),
    "gz/2.gz": gz_members(b"first member|", blob(6, 3000), b"|third member"),
    "gz/3.gz": gz(b""),
    "gz/4.gz": gz(blob(7, 600_000), level=1),
    "gz/5.gz": gz_members(b"", b"after an empty member"),
}
AUG_ATTRS = ["source-ref", "label", "caption", "meta", "mask-ref"]


def aug_lines(bucket: str) -> list[dict[str, Any]]:
    s3 = f"s3://{bucket}/"
    return [
        {"source-ref": s3 + "train/b/c.csv", "label": 1, "caption": "héllo ✓",
         "meta": {"a": 1, "b": [1, 2.5]}, "mask-ref": s3 + "train/z", "unused": 7},
        # attributes in another order on the line: the stream follows AttributeNames
        {"mask-ref": s3 + "train/empty.bin", "meta": None, "caption": "", "label": 0,
         "source-ref": s3 + "training.csv"},
        {"source-ref": s3 + "train/a.csv", "label": "cat", "caption": "x y",
         "meta": [True, False, None], "mask-ref": s3 + "train/k/pct%20x"},
        {"source-ref": s3 + "train/large.bin", "label": -3, "caption": "big",
         "meta": {"nested": {"k": "v"}}, "mask-ref": s3 + "train/B.csv"},
    ]


def aug_gz_lines(bucket: str) -> list[dict[str, Any]]:
    s3 = f"s3://{bucket}/"
    return [
        {"source-ref": s3 + "gz/2.gz", "label": 1, "caption": "two", "meta": {"m": 2}, "mask-ref": s3 + "gz/3.gz"},
        {"source-ref": s3 + "gz/4.gz", "label": 0, "caption": "four", "meta": [4], "mask-ref": s3 + "gz/1.gz"},
        {"source-ref": s3 + "gz/5.gz", "label": 2, "caption": "five", "meta": 5, "mask-ref": s3 + "gz/2.gz"},
    ]


_GOOD = gz(blob(8, 50_000), level=1)
BAD_GZIP = {
    "not-gzip": b"this is not gzip data at all",
    "bad-crc": _GOOD[:-8] + bytes([_GOOD[-8] ^ 0xFF]) + _GOOD[-7:],  # CRC32 of the member is wrong
    "truncated": _GOOD[: len(_GOOD) // 2],
    "trailing-garbage": _GOOD + b"garbage after the member",
}
MANIFEST_KEYS = ["z", "é.txt", "a.csv", "large.bin", "empty.bin", "b/c.csv", "k/q?x#y", "dir/f.bin", "B.csv",
                 "k/plus+sign"]
MANIFEST_GZ_KEYS = ["4.gz", "2.gz", "5.gz", "3.gz", "1.gz"]
SHUFFLE_UNITS = 12


def module_objects(bucket: str) -> dict[str, bytes]:
    objects: dict[str, bytes] = {**TRAIN, **DECOYS, **GZ}
    objects["manifests/train.json"] = json.dumps(
        [{"prefix": f"s3://{bucket}/train/"}, *MANIFEST_KEYS]).encode()
    objects["manifests/gz.json"] = json.dumps([{"prefix": f"s3://{bucket}/gz/"}, *MANIFEST_GZ_KEYS]).encode()
    objects["manifests/aug.jsonl"] = jsonl(aug_lines(bucket))
    objects["manifests/aug-gz.jsonl"] = jsonl(aug_gz_lines(bucket))
    # shuffle: self-identifying units, plain and gzipped
    for i in range(SHUFFLE_UNITS):
        objects[f"shuf/plain/{i:03d}"] = tagged_unit(i, 50 + 37 * i)
        objects[f"shuf/gz/{i:03d}.gz"] = gz(tagged_unit(i, 50 + 37 * i))
    objects["shuf/manifest.json"] = json.dumps(
        [{"prefix": f"s3://{bucket}/shuf/gz/"}, *(f"{i:03d}.gz" for i in reversed(range(SHUFFLE_UNITS)))]).encode()
    objects["shuf/aug.jsonl"] = jsonl(
        {"data-ref": f"s3://{bucket}/shuf/plain/{i:03d}", "n": i} for i in range(SHUFFLE_UNITS))
    for kind, broken in BAD_GZIP.items():
        objects[f"bad/{kind}/1-good.gz"] = gz(b"fine")
        objects[f"bad/{kind}/2-bad.gz"] = broken
        objects[f"bad/{kind}/3-after.gz"] = gz(b"after" * 1000)
    return objects


@pytest.fixture(scope="module")
def buckets():
    made = ModuleBuckets("s3-channels", module_objects)
    yield made
    made.cleanup()


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def any_server(request: pytest.FixtureRequest):
    return request.getfixturevalue({"moto": "moto_s3", "seaweedfs": "seaweed_s3"}[request.param])


# --------------------------------------------------------------------------------------------
# expected streams, built from the objects
# --------------------------------------------------------------------------------------------

def unzip(data: bytes, gzip_on: bool) -> bytes:
    return gzip_module.decompress(data) if gzip_on else data


def expected_payloads(data_type: str, gzip_on: bool, bucket: str, objects: dict[str, bytes]) -> list[bytes]:
    if data_type == "S3Prefix":
        keys = prefix_keys(objects, "gz/" if gzip_on else "train")
        return [unzip(objects[k], gzip_on) for k in keys]
    if data_type == "ManifestFile":
        keys = [f"gz/{k}" for k in MANIFEST_GZ_KEYS] if gzip_on else [f"train/{k}" for k in MANIFEST_KEYS]
        return [unzip(objects[k], gzip_on) for k in keys]
    payloads = []
    for line in (aug_gz_lines if gzip_on else aug_lines)(bucket):
        for attr in AUG_ATTRS:
            value = line[attr]
            if attr.endswith("-ref"):
                payloads.append(unzip(objects[value[len(f"s3://{bucket}/"):]], gzip_on))
            else:
                payloads.append(literal(value))  # literal values are the data itself, never gunzipped
    return payloads


def channel_for(data_type: str, gzip_on: bool, record_io: bool, bucket: str, name: str = "train") -> dict:
    if data_type == "S3Prefix":
        uri = f"s3://{bucket}/" + ("gz/" if gzip_on else "train")
        return s3_channel(name, uri, gzip=gzip_on, record_io=record_io)
    if data_type == "ManifestFile":
        uri = f"s3://{bucket}/manifests/" + ("gz.json" if gzip_on else "train.json")
        return s3_channel(name, uri, "ManifestFile", gzip=gzip_on, record_io=record_io)
    uri = f"s3://{bucket}/manifests/" + ("aug-gz.jsonl" if gzip_on else "aug.jsonl")
    return s3_channel(name, uri, "AugmentedManifestFile", gzip=gzip_on, record_io=record_io,
                      s3_AttributeNames=AUG_ATTRS)


# --------------------------------------------------------------------------------------------
# every data type x {plain, gzip} x {None, RecordIO}
# --------------------------------------------------------------------------------------------

def _matrix() -> list[Any]:
    seaweed = {("S3Prefix", False, False), ("S3Prefix", True, True), ("ManifestFile", True, False),
               ("AugmentedManifestFile", False, True)}
    params = []
    for server in ("moto", "seaweedfs"):
        for data_type in ("S3Prefix", "ManifestFile", "AugmentedManifestFile"):
            for gzip_on in (False, True):
                for record_io in (False, True):
                    if server == "seaweedfs" and (data_type, gzip_on, record_io) not in seaweed:
                        continue
                    ident = "-".join([server, data_type, "gzip" if gzip_on else "plain",
                                      "recordio" if record_io else "none"])
                    params.append(pytest.param(server, data_type, gzip_on, record_io, id=ident))
    return params


@pytest.mark.parametrize(("server_name", "data_type", "gzip_on", "record_io"), _matrix())
def test_epoch_bytes(request, buckets, s3_jobs, server_name, data_type, gzip_on, record_io):
    server = request.getfixturevalue({"moto": "moto_s3", "seaweedfs": "seaweed_s3"}[server_name])
    bucket, objects = buckets.get(server)
    want = stream_of(expected_payloads(data_type, gzip_on, bucket, objects), record_io)
    reads = s3_jobs.run(server, [channel_for(data_type, gzip_on, record_io, bucket)])
    reads["train"].check(want, "train")
    if record_io:  # and the framing itself parses as whole records
        assert len(decode_records(reads["train"].data[0])) == len(
            expected_payloads(data_type, gzip_on, bucket, objects))


def test_many_channels_at_once_and_config_files(moto_s3, buckets, s3_jobs):
    """Every combination in one job (12 channels), plus prefix variants, read concurrently."""
    bucket, objects = buckets.get(moto_s3)
    channels, wants = [], {}
    for data_type in ("S3Prefix", "ManifestFile", "AugmentedManifestFile"):
        for gzip_on in (False, True):
            for record_io in (False, True):
                name = f"{data_type[:3].lower()}-{int(gzip_on)}{int(record_io)}"
                channels.append(channel_for(data_type, gzip_on, record_io, bucket, name))
                wants[name] = stream_of(expected_payloads(data_type, gzip_on, bucket, objects), record_io)
    # the same prefix with and without the trailing slash, and a prefix ending mid-name
    for name, prefix in (("slash", "train/"), ("mid", "train/b"), ("all-t", "t")):
        channels.append(s3_channel(name, f"s3://{bucket}/{prefix}", ContentType="application/octet-stream"))
        wants[name] = stream_of([objects[k] for k in prefix_keys(objects, prefix)], False)
    assert prefix_keys(objects, "train/b") == ["train/b-c.csv", "train/b/c.csv"]
    job = s3_jobs.start(moto_s3, channels)
    reads = job.finish(timeout=60)
    for name, want in wants.items():
        reads[name].check(want, name)
    idc = job.config_json("inputdataconfig.json")
    assert set(idc) == set(wants)
    assert idc["slash"] == {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                            "RecordWrapperType": "None", "ContentType": "application/octet-stream"}
    assert idc["aug-01"]["RecordWrapperType"] == "RecordIO"
    assert job.config_json("resourceconfig.json") == homogeneous_resources("algo-1", ["algo-1"])


def test_listing_is_sorted_by_the_package_on_seaweedfs(seaweed_s3, buckets, s3_jobs):
    """SeaweedFS lists "b/c.csv" before "b-c.csv"; S3 (and so the stream) has byte order."""
    bucket, objects = buckets.get(seaweed_s3)
    keys = [o["Key"] for o in seaweed_s3.client().list_objects_v2(Bucket=bucket, Prefix="train/b")["Contents"]]
    reads = s3_jobs.run(seaweed_s3, [s3_channel("b", f"s3://{bucket}/train/b", record_io=True)])
    reads["b"].check(stream_of([objects["train/b-c.csv"], objects["train/b/c.csv"]], True), "b")
    assert sorted(keys) == ["train/b-c.csv", "train/b/c.csv"]  # (whatever order the server used)


def test_more_than_one_listing_page(moto_s3, s3_jobs):
    """1005 objects: the listing goes on past the first page of 1000 keys."""
    bucket = f"pages-{uuid.uuid4().hex[:12]}"
    objects = {f"many/{i:05d}": f"{i},".encode() for i in range(1005)}
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    try:
        put_objects(client, bucket, objects, threads=16)
        # one epoch: the listing is what matters here, and 1005 GETs per epoch take a while on moto
        reads = s3_jobs.run(moto_s3, [s3_channel("many", f"s3://{bucket}/many/", record_io=True)], epochs=1)
        reads["many"].check(stream_of([objects[k] for k in sorted(objects)], True), "many")
    finally:
        empty_and_delete_bucket(client, bucket)


def test_objects_larger_than_a_fetch_part(moto_s3, s3_jobs):
    """17 MiB plain and ~9 MiB gzip objects (a downloader may fetch big objects in ranged parts):
    still one whole record each, byte for byte."""
    bucket = f"large-{uuid.uuid4().hex[:12]}"
    plain = blob(30, 17 * MIB + 5)
    inflated = blob(31, 9 * MIB + 1)
    objects = {"big/0-plain.bin": plain, "big/1-small": b"small", "big/2-zipped.gz": gz(inflated, level=1),
               "big/3-small.gz": gz(b"x")}
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    try:
        put_objects(client, bucket, objects)
        reads = s3_jobs.run(moto_s3, [
            s3_channel("plain", f"s3://{bucket}/big/0", record_io=True),
            s3_channel("both", f"s3://{bucket}/big/", record_io=True),
            s3_channel("gz", f"s3://{bucket}/big/2", gzip=True, record_io=True),
            s3_channel("gz-raw", f"s3://{bucket}/big/2", gzip=True),
        ])
        reads["plain"].check(stream_of([plain], True), "plain")
        reads["both"].check(stream_of([objects[k] for k in sorted(objects)], True), "both")
        reads["gz"].check(stream_of([inflated], True), "gz")
        reads["gz-raw"].check(inflated, "gz-raw")
    finally:
        empty_and_delete_bucket(client, bucket)


@pytest.mark.parametrize("suffix", ["", "/"], ids=["bucket", "bucket-slash"])
def test_whole_bucket_uri(moto_s3, s3_jobs, suffix):
    bucket = f"whole-{uuid.uuid4().hex[:12]}"
    objects = {"x/1": b"one", "2": b"two", "a/": b"", "a/3": b"three"}
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    try:
        for k, v in objects.items():
            client.put_object(Bucket=bucket, Key=k, Body=v)
        reads = s3_jobs.run(moto_s3, [s3_channel("all", f"s3://{bucket}{suffix}", record_io=True)])
        reads["all"].check(stream_of([b"two", b"three", b"one"], True), "all")
    finally:
        empty_and_delete_bucket(client, bucket)


def test_each_object_is_one_signed_get_on_seaweedfs(seaweed_s3, buckets, s3_jobs, fault_proxy):
    """Object bodies go out as plain SigV4-signed GETs (sources/s3_get.py), not through get_object.
    SeaweedFS checks every signature, and a refused request would be repeated quietly through
    botocore, so: every object, the awkward keys (space, +, %, ?, #, &, unicode) and a multi-part
    object included, is fetched by GETs the fast path sent (its User-Agent), each answered 200 or
    206, one per part and epoch."""
    bucket, objects = buckets.get(seaweed_s3)
    proxy = fault_proxy(seaweed_s3)
    keys = prefix_keys(objects, "train/")
    reads = s3_jobs.run(seaweed_s3, [s3_channel("train", f"s3://{bucket}/train/")], epochs=2,
                        endpoint_url=proxy.endpoint_url,
                        env_extra={"SAGEMAKER_PIPE_S3_PART_MB": "2", "SAGEMAKER_PIPE_S3_RANGES": "always"})
    reads["train"].check(stream_of([objects[k] for k in keys], False), "train")
    gets = [r for r in proxy.requests("GET") if "list-type" not in r.query]
    assert gets and all(r.headers.get("user-agent", "").startswith("sagemaker-pipe/") for r in gets), \
        {r.headers.get("user-agent") for r in gets}
    assert {r.status for r in gets} <= {200, 206}, [(r.path, r.status) for r in gets if r.status not in (200, 206)]
    for key in keys:
        parts = -(-len(objects[key]) // (2 * MIB))  # an empty object needs no GET at all
        assert len([r for r in gets if r.path == f"/{bucket}/{key}"]) == 2 * parts, key


def test_generic_endpoint_variable_and_path_style(moto_s3, buckets, s3_jobs, fault_proxy):
    """AWS_ENDPOINT_URL (for every service) works as well as AWS_ENDPOINT_URL_S3; with a host
    name (not an IP) as the custom endpoint, requests are still path-style (/bucket/key)."""
    bucket, objects = buckets.get(moto_s3)
    proxy = fault_proxy(moto_s3)
    env = s3_env(moto_s3)
    del env["AWS_ENDPOINT_URL_S3"]
    env["AWS_ENDPOINT_URL"] = f"http://localhost:{proxy.port}"
    reads = s3_jobs.run(moto_s3, [s3_channel("t", f"s3://{bucket}/train/b")], env=env)
    reads["t"].check(objects["train/b-c.csv"] + objects["train/b/c.csv"], "t")
    assert proxy.records, "the sidecar did not use AWS_ENDPOINT_URL"
    for r in proxy.records:
        assert r.path.startswith(f"/{bucket}"), r.path
        assert r.headers.get("host") == f"localhost:{proxy.port}", r.headers.get("host")


@pytest.mark.parametrize("source", ["profile", "default"])
def test_credentials_from_the_shared_credentials_file(seaweed_s3, buckets, s3_jobs, tmp_path, source):
    """The standard chain: keys from AWS_SHARED_CREDENTIALS_FILE (a named AWS_PROFILE, or the
    default profile), none in the environment. SeaweedFS checks the signature, so the right
    secret must really have been used."""
    bucket, objects = buckets.get(seaweed_s3)
    creds = tmp_path / "credentials"
    section = "pipe-test" if source == "profile" else "default"
    creds.write_text(f"[{section}]\naws_access_key_id = {seaweed_s3.access_key}\n"
                     f"aws_secret_access_key = {seaweed_s3.secret_key}\n")
    env = s3_env(seaweed_s3)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    if source == "profile":
        env["AWS_PROFILE"] = "pipe-test"
    job = s3_jobs.start(seaweed_s3, [s3_channel("t", f"s3://{bucket}/train/a")], env=env, args=["-d"])
    job.finish()["t"].check(objects["train/a b.txt"] + objects["train/a.csv"], "t")
    assert seaweed_s3.secret_key not in job.proc.stderr


def test_reader_closing_early_then_exact_epochs(moto_s3, buckets, s3_jobs, consumer, tmp_path):
    """A reader that stops mid-object (or opens and closes at once) ends that epoch quietly; the
    next epochs, fetched afresh, are exact (PIPE_MODE.md 2.5)."""
    bucket, objects = buckets.get(moto_s3)
    job = s3_jobs.start(moto_s3, [s3_channel("t", f"s3://{bucket}/train", record_io=True),
                                  s3_channel("g", f"s3://{bucket}/gz/", gzip=True)], epochs=5, read=[])
    want_t = stream_of([objects[k] for k in prefix_keys(objects, "train")], True)
    want_g = stream_of([unzip(objects[k], True) for k in prefix_keys(objects, "gz/")], False)
    outs = {"t": tmp_path / "t-read", "g": tmp_path / "g-read"}
    ct = consumer(pattern(job.ml_root, "t"), 5, modes="partial:100000,openclose,full,partial:7,full", out=outs["t"])
    cg = consumer(pattern(job.ml_root, "g"), 5, modes="openclose,partial:5000,full", out=outs["g"])
    rt, rg = ct.results(60), cg.results(60)
    assert job.proc.wait(30) == 0, job.proc.stderr
    assert "Traceback" not in job.proc.stderr
    for results, out, want, full in ((rt, outs["t"], want_t, (2, 4)), (rg, outs["g"], want_g, (2, 3, 4))):
        for r in results:
            got = (out / f"epoch_{r['epoch']}.bin").read_bytes()
            if r["epoch"] in full:
                assert got == want, f"epoch {r['epoch']}: {len(got)} bytes, expected {len(want)}"
            else:
                assert want.startswith(got), f"epoch {r['epoch']}: the first bytes are wrong"


# --------------------------------------------------------------------------------------------
# manifests on local disk, and mixed local / S3
# --------------------------------------------------------------------------------------------

def test_local_manifest_file_of_s3_objects(moto_s3, buckets, s3_jobs, tmp_path):
    bucket, objects = buckets.get(moto_s3)
    manifest = tmp_path / "m" / "train.manifest"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps([{"prefix": f"s3://{bucket}/train/"}, "b/c.csv", "a.csv", "B.csv"]))
    # the prefix is a plain string too: "s3://b/train/b" + "-c.csv"
    partial = tmp_path / "m" / "partial.manifest"
    partial.write_text(json.dumps([{"prefix": f"s3://{bucket}/train/b"}, "/c.csv", "-c.csv"]))
    reads = s3_jobs.run(moto_s3, [
        s3_channel("m", str(manifest), "ManifestFile", record_io=True),
        s3_channel("m-uri", manifest.as_uri(), "ManifestFile"),
        s3_channel("m-partial", str(partial), "ManifestFile", record_io=True),
    ])
    payloads = [objects["train/b/c.csv"], objects["train/a.csv"], objects["train/B.csv"]]
    reads["m"].check(stream_of(payloads, True), "m")
    reads["m-uri"].check(stream_of(payloads, False), "m-uri")
    reads["m-partial"].check(stream_of([objects["train/b/c.csv"], objects["train/b-c.csv"]], True), "m-partial")


@pytest.mark.parametrize("server_name", ["moto", "seaweedfs"])
def test_local_augmented_manifest_with_s3_refs(request, buckets, s3_jobs, tmp_path, server_name):
    """The augmented manifest on local disk, its -ref attributes in S3 (contract: mixed local/S3)."""
    server = request.getfixturevalue({"moto": "moto_s3", "seaweedfs": "seaweed_s3"}[server_name])
    bucket, objects = buckets.get(server)
    lines = aug_lines(bucket)
    manifest = tmp_path / "aug" / "local.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(jsonl(lines))
    reads = s3_jobs.run(server, [
        s3_channel("rio", str(manifest), "AugmentedManifestFile", record_io=True, s3_AttributeNames=AUG_ATTRS),
        s3_channel("raw", str(manifest), "AugmentedManifestFile", s3_AttributeNames=["label", "source-ref"]),
    ])
    reads["rio"].check(stream_of(expected_payloads("AugmentedManifestFile", False, bucket, objects), True), "rio")
    raw = [p for line in lines for p in (literal(line["label"]),
                                         objects[line["source-ref"][len(f"s3://{bucket}/"):]])]
    reads["raw"].check(stream_of(raw, False), "raw")


def test_augmented_manifest_mixing_local_and_s3_refs(moto_s3, buckets, s3_jobs, tmp_path):
    """Extension for local testing: a local manifest may also point at local files (relative to it)."""
    bucket, objects = buckets.get(moto_s3)
    root = write_tree(tmp_path / "mixed", {"imgs/one.bin": blob(20, 70_000), "imgs/two.bin": b"two"})
    lines = [
        {"a-ref": f"s3://{bucket}/train/a.csv", "b-ref": "imgs/one.bin", "y": 1},
        {"a-ref": "imgs/two.bin", "b-ref": f"s3://{bucket}/train/large.bin", "y": 2},
        {"a-ref": (root / "imgs" / "one.bin").as_uri(), "b-ref": f"s3://{bucket}/train/z", "y": 3},
    ]
    (root / "m.jsonl").write_bytes(jsonl(lines))
    reads = s3_jobs.run(moto_s3, [s3_channel("mix", str(root / "m.jsonl"), "AugmentedManifestFile",
                                             record_io=True, s3_AttributeNames=["a-ref", "b-ref", "y"])])
    one, two = (root / "imgs/one.bin").read_bytes(), b"two"
    want = [objects["train/a.csv"], one, b"1", two, objects["train/large.bin"], b"2", one, objects["train/z"], b"3"]
    reads["mix"].check(stream_of(want, True), "mix")


def test_duplicate_entries_stream_twice(moto_s3, buckets, s3_jobs, tmp_path):
    """A manifest may name the same object twice, and augmented lines may share a -ref: each
    occurrence is streamed in its place (oversampling)."""
    bucket, objects = buckets.get(moto_s3)
    manifest = tmp_path / "dup.json"
    manifest.write_text(json.dumps([{"prefix": f"s3://{bucket}/train/"}, "a.csv", "z", "a.csv", "b/c.csv", "a.csv"]))
    aug = tmp_path / "dup.jsonl"
    ref = f"s3://{bucket}/train/b/c.csv"
    aug.write_bytes(jsonl([{"x-ref": ref, "n": 1}, {"x-ref": f"s3://{bucket}/train/z", "n": 2},
                           {"x-ref": ref, "n": 3}]))
    reads = s3_jobs.run(moto_s3, [
        s3_channel("dup", str(manifest), "ManifestFile", record_io=True),
        s3_channel("dup-aug", str(aug), "AugmentedManifestFile", record_io=True, s3_AttributeNames=["x-ref", "n"]),
    ])
    t = {k: objects[f"train/{k}"] for k in ("a.csv", "z", "b/c.csv")}
    reads["dup"].check(stream_of([t["a.csv"], t["z"], t["a.csv"], t["b/c.csv"], t["a.csv"]], True), "dup")
    reads["dup-aug"].check(stream_of([t["b/c.csv"], b"1", t["z"], b"2", t["b/c.csv"], b"3"], True), "dup-aug")


# --------------------------------------------------------------------------------------------
# ShuffleConfig
# --------------------------------------------------------------------------------------------

SHUFFLE_EPOCHS = 4
UNITS = {i: tagged_unit(i, 50 + 37 * i) for i in range(SHUFFLE_UNITS)}


def _orders_recordio(read, per_unit: int = 1) -> list[list[int]]:
    """Unit order of each epoch of a RecordIO read; checks every record belongs to its unit."""
    orders = []
    for data in read.data:
        records = decode_records(data)
        assert len(records) == SHUFFLE_UNITS * per_unit
        order = []
        for j in range(0, len(records), per_unit):
            group = records[j:j + per_unit]
            (i,) = unit_order(group[0])
            order.append(i)
            assert group[0] == UNITS[i]
            if per_unit == 2:  # augmented: the line's own label follows its object
                assert group[1] == str(i).encode()
        orders.append(order)
    return orders


def _orders_plain(read) -> list[list[int]]:
    orders = []
    for data in read.data:
        order = unit_order(data)
        assert data == b"".join(UNITS[i] for i in order)  # exactly the units, in that order
        orders.append(order)
    return orders


def _check_shuffled(orders: list[list[int]], again: list[list[int]]) -> None:
    for n, order in enumerate(orders):
        assert sorted(order) == list(range(SHUFFLE_UNITS)), f"epoch {n} is not a permutation: {order}"
    assert orders == again, "two runs with the same seed disagree"
    assert len({tuple(o) for o in orders}) > 1, f"every epoch has the same order: {orders[0]}"
    assert any(o != sorted(o) for o in orders), "never shuffled"


SHUFFLE_CASES = {
    "prefix-recordio": ("S3Prefix", "shuf/plain/", False, True),
    "prefix-gzip-none": ("S3Prefix", "shuf/gz/", True, False),
    "manifest-gzip-recordio": ("ManifestFile", "shuf/manifest.json", True, True),
    "augmented-none": ("AugmentedManifestFile", "shuf/aug.jsonl", False, False),
    "augmented-recordio": ("AugmentedManifestFile", "shuf/aug.jsonl", False, True),
}


def _shuffle_channel(case: str, bucket: str, seed: int) -> dict:
    data_type, key, gzip_on, record_io = SHUFFLE_CASES[case]
    extra = {"s3_AttributeNames": ["data-ref", "n"]} if data_type == "AugmentedManifestFile" else {}
    return s3_channel(case, f"s3://{bucket}/{key}", data_type, gzip=gzip_on, record_io=record_io,
                      ShuffleConfig={"Seed": seed}, **extra)


def _orders(case: str, read) -> list[list[int]]:
    data_type, _, _, record_io = SHUFFLE_CASES[case]
    if data_type == "AugmentedManifestFile":
        if record_io:
            return _orders_recordio(read, per_unit=2)
        # no framing: each line is its object then its label, e.g. "<u003>...3"
        orders = []
        for data in read.data:
            order = unit_order(data)
            assert data == b"".join(UNITS[i] + str(i).encode() for i in order)
            orders.append(order)
        return orders
    return _orders_recordio(read) if record_io else _orders_plain(read)


def test_shuffle_is_a_fresh_permutation_per_epoch_and_reproducible(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    channels = [_shuffle_channel(case, bucket, 42) for case in SHUFFLE_CASES]
    first = s3_jobs.start(moto_s3, channels, epochs=SHUFFLE_EPOCHS)
    second = s3_jobs.start(moto_s3, channels, epochs=SHUFFLE_EPOCHS)
    a, b = first.finish(timeout=60), second.finish(timeout=60)
    for case in SHUFFLE_CASES:
        assert [r["sha256"] for r in a[case].results] == [r["sha256"] for r in b[case].results], case
        _check_shuffled(_orders(case, a[case]), _orders(case, b[case]))


def test_shuffle_on_seaweedfs(seaweed_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(seaweed_s3)
    channels = [_shuffle_channel(case, bucket, 7) for case in ("prefix-recordio", "augmented-recordio")]
    first = s3_jobs.start(seaweed_s3, channels, epochs=SHUFFLE_EPOCHS)
    second = s3_jobs.start(seaweed_s3, channels, epochs=SHUFFLE_EPOCHS)
    a, b = first.finish(timeout=60), second.finish(timeout=60)
    for case in ("prefix-recordio", "augmented-recordio"):
        _check_shuffled(_orders(case, a[case]), _orders(case, b[case]))


# --------------------------------------------------------------------------------------------
# data errors found while streaming
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("record_io", [False, True], ids=["none", "recordio"])
@pytest.mark.parametrize("kind", sorted(BAD_GZIP))
def test_invalid_gzip_object_stops_the_job_naming_it(moto_s3, buckets, s3_jobs, kind, record_io):
    bucket, objects = buckets.get(moto_s3)
    job = s3_jobs.start(moto_s3, [s3_channel("bad", f"s3://{bucket}/bad/{kind}/", gzip=True, record_io=record_io)],
                        epochs=1)
    job.proc.wait(30)
    line = data_error_line(job.proc)
    assert f"s3://{bucket}/bad/{kind}/2-bad.gz" in line, line
    # the epoch ends early: at most the objects before the bad one, never the whole stream
    job.consumers["bad"].wait(20)
    epoch0 = job.out_dirs["bad"] / "epoch_0.bin"
    got = epoch0.read_bytes() if epoch0.exists() else b""
    after = unzip(objects[f"bad/{kind}/3-after.gz"], True)
    assert after[:100] not in got, "the object after the bad one was streamed"
    good = stream_of([b"fine"], record_io)  # the object before it may have been streamed, whole or not
    assert got[:len(good)] == good[:len(got)], got[:40]


# --------------------------------------------------------------------------------------------
# planning errors that depend on what is in the bucket
# --------------------------------------------------------------------------------------------

def test_augmented_line_missing_an_attribute(moto_s3, buckets, s3_jobs, tmp_path):
    bucket, _ = buckets.get(moto_s3)
    client = moto_s3.client()
    key = f"errs/aug-missing-{tmp_path.name[-20:]}.jsonl"
    client.put_object(Bucket=bucket, Key=key, Body=jsonl([
        {"source-ref": f"s3://{bucket}/train/a.csv", "label": 1},
        {"source-ref": f"s3://{bucket}/train/z", "label": 0},
        {"source-ref": f"s3://{bucket}/train/B.csv"},  # line 3 lacks "label"
    ]))
    proc, ml_root = s3_jobs.fail(moto_s3, [s3_channel("aug", f"s3://{bucket}/{key}", "AugmentedManifestFile",
                                                      s3_AttributeNames=["source-ref", "label"])])
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "aug" in line, line
    assert "line 3" in line and "label" in line, line
    assert_nothing_written(ml_root)


@pytest.mark.parametrize("where", ["s3", "local"])
def test_manifest_entry_missing(moto_s3, buckets, s3_jobs, tmp_path, where):
    bucket, _ = buckets.get(moto_s3)
    doc = json.dumps([{"prefix": f"s3://{bucket}/train/"}, "a.csv", "no-such-object.csv", "z"])
    if where == "s3":
        key = f"errs/missing-{tmp_path.name[-20:]}.json"
        moto_s3.client().put_object(Bucket=bucket, Key=key, Body=doc.encode())
        uri = f"s3://{bucket}/{key}"
    else:
        path = tmp_path / "missing.json"
        path.write_text(doc)
        uri = str(path)
    proc, ml_root = s3_jobs.fail(moto_s3, [s3_channel("man", uri, "ManifestFile")])
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "man" in line and "no-such-object.csv" in line, line
    assert_nothing_written(ml_root)


def test_augmented_ref_missing(moto_s3, buckets, s3_jobs, tmp_path):
    bucket, _ = buckets.get(moto_s3)
    path = tmp_path / "aug.jsonl"
    path.write_bytes(jsonl([{"x-ref": f"s3://{bucket}/train/a.csv"}, {"x-ref": f"s3://{bucket}/train/gone.bin"}]))
    proc, ml_root = s3_jobs.fail(moto_s3, [s3_channel("aug", str(path), "AugmentedManifestFile",
                                                      s3_AttributeNames=["x-ref"])])
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "aug" in line and "gone.bin" in line, line
    assert_nothing_written(ml_root)


def test_manifest_object_missing(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    uri = f"s3://{bucket}/manifests/nope.json"
    proc, ml_root = s3_jobs.fail(moto_s3, [s3_channel("man", uri, "ManifestFile")])
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "man" in line and uri in line, line
    assert_nothing_written(ml_root)


def test_prefix_without_objects(any_server, buckets, s3_jobs):
    bucket, _ = buckets.get(any_server)
    uri = f"s3://{bucket}/nothing-here/"
    proc, ml_root = s3_jobs.fail(any_server, [s3_channel("train", uri)])
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "train" in line and uri in line, line
    assert_nothing_written(ml_root)


def test_only_folder_markers_is_no_object(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    client = moto_s3.client()
    for key in ("markers/", "markers/a/", "markers/a/b/"):
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    uri = f"s3://{bucket}/markers/"
    proc, ml_root = s3_jobs.fail(moto_s3, [s3_channel("m", uri)])
    assert proc.poll() == 2, proc.stderr
    line = error_line(proc.stderr)
    assert uri in line, line
    assert_nothing_written(ml_root)
