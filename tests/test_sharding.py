"""ShardedByS3Key across simulated hosts (PIPE_MODE.md section 3, issue 3).

Three sidecar processes, one per host (``--hosts algo-1,algo-2,algo-3 --current-host algo-N``, or
ResourceConfig in the channel file), each with its own ml-root and consumer, serve the same S3
channel. Per epoch their shares must be disjoint, together all the units, and of sizes differing
by at most 1; without ShuffleConfig each host's share is the same every epoch, with it the
assignment may move but the rules hold per epoch. A FullyReplicated channel beside it streams
everything on every host. Units are self-identifying payloads, so a share can be read back from
the bytes without knowing how the package assigns them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import homogeneous_resources
from s3_helpers import (
    ModuleBuckets,
    decode_records,
    gz,
    jsonl,
    s3_channel,
    stream_of,
    tagged_unit,
    unit_order,
)

pytestmark = pytest.mark.timeout(90)


HOSTS = ["algo-1", "algo-2", "algo-3"]
N_UNITS = 10  # 10 over 3 hosts: shares of 4, 3, 3
EPOCHS = 3
UNITS = {i: tagged_unit(i, 40 + 13 * i, seed=5) for i in range(N_UNITS)}


def objects_for(bucket: str) -> dict[str, bytes]:
    objects: dict[str, bytes] = {}
    for i, payload in UNITS.items():
        objects[f"units/{i:03d}.bin"] = payload
        objects[f"units-gz/{i:03d}.gz"] = gz(payload)
    objects["units/dir/"] = b""  # a folder marker is not a unit
    objects["two/000.bin"] = UNITS[0]
    objects["two/001.bin"] = UNITS[1]
    # a manifest in an order of its own
    order = [3, 9, 0, 7, 1, 8, 2, 6, 4, 5]
    objects["manifest.json"] = json.dumps(
        [{"prefix": f"s3://{bucket}/units-gz/"}, *(f"{i:03d}.gz" for i in order)]).encode()
    objects["aug.jsonl"] = jsonl({"data-ref": f"s3://{bucket}/units/{i:03d}.bin", "label": i}
                                 for i in reversed(range(N_UNITS)))
    return objects


MANIFEST_ORDER = [3, 9, 0, 7, 1, 8, 2, 6, 4, 5]
AUG_ORDER = list(reversed(range(N_UNITS)))


@pytest.fixture(scope="module")
def buckets():
    made = ModuleBuckets("sharding", objects_for)
    yield made
    made.cleanup()


# --------------------------------------------------------------------------------------------
# reading shares back
# --------------------------------------------------------------------------------------------

def share_of(data: bytes, record_io: bool, augmented: bool = False) -> list[int]:
    """The units of one epoch of one host, in stream order; checks the bytes are exactly them."""
    if record_io:
        records = decode_records(data)
        step = 2 if augmented else 1
        order = []
        for j in range(0, len(records), step):
            (i,) = unit_order(records[j])
            assert records[j] == UNITS[i]
            if augmented:
                assert records[j + 1] == str(i).encode(), "a line's label left its object"
            order.append(i)
        assert len(records) == step * len(order)
        return order
    order = unit_order(data)
    suffix = (lambda i: str(i).encode()) if augmented else (lambda i: b"")
    assert data == b"".join(UNITS[i] + suffix(i) for i in order), "bytes other than whole units"
    return order


def check_partition(shares: dict[str, list[int]], n_units: int = N_UNITS, epoch: int | None = None) -> None:
    where = f"epoch {epoch}: " if epoch is not None else ""
    flat = [i for share in shares.values() for i in share]
    assert len(flat) == len(set(flat)), f"{where}shares overlap: {shares}"
    assert sorted(flat) == list(range(n_units)), f"{where}shares do not cover every unit: {shares}"
    sizes = [len(s) for s in shares.values()]
    assert max(sizes) - min(sizes) <= 1, f"{where}uneven shares: {shares}"


def start_hosts(s3_jobs: Any, server: Any, channels: list[dict], *, epochs: int = EPOCHS,
                resource_config: dict | None = None, host_args: bool = True, tag: str = "") -> dict[str, Any]:
    """One sidecar + consumers per host, all started before any is waited for."""
    jobs = {}
    for host in HOSTS:
        doc: dict[str, Any] = {"InputDataConfig": channels}
        args: list[str] = []
        if resource_config is not None:
            doc["ResourceConfig"] = dict(resource_config, CurrentHost=host)
        if host_args:
            args = ["--hosts", ",".join(reversed(HOSTS)), "--current-host", host]
        jobs[host] = s3_jobs.start(server, doc, epochs=epochs, args=args, name=f"{tag}{host}")
    return jobs


def finish_hosts(jobs: dict[str, Any]) -> dict[str, dict]:
    reads = {host: job.finish(timeout=60) for host, job in jobs.items()}
    for host, job in jobs.items():
        assert job.config_json("resourceconfig.json") == homogeneous_resources(host, HOSTS)
        idc = job.config_json("inputdataconfig.json")
        for entry in idc.values():
            assert entry["TrainingInputMode"] == "Pipe"
            assert entry["S3DistributionType"] in ("ShardedByS3Key", "FullyReplicated")
    return reads


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------

CASES = {
    # name: (data type, key, gzip, record_io, augmented)
    "prefix-recordio": ("S3Prefix", "units/", False, True),
    "manifest-gzip-none": ("ManifestFile", "manifest.json", True, False),
    "augmented-recordio": ("AugmentedManifestFile", "aug.jsonl", False, True),
    "augmented-none": ("AugmentedManifestFile", "aug.jsonl", False, False),
}
SOURCE_ORDER = {"S3Prefix": list(range(N_UNITS)), "ManifestFile": MANIFEST_ORDER,
                "AugmentedManifestFile": AUG_ORDER}


def case_channel(case: str, bucket: str, **fields: Any) -> dict:
    data_type, key, gzip_on, record_io = CASES[case]
    extra = {"s3_AttributeNames": ["data-ref", "label"]} if data_type == "AugmentedManifestFile" else {}
    return s3_channel(case, f"s3://{bucket}/{key}", data_type, gzip=gzip_on, record_io=record_io,
                      s3_S3DataDistributionType="ShardedByS3Key", **extra, **fields)


def case_shares(case: str, reads: dict[str, dict]) -> list[dict[str, list[int]]]:
    """Per epoch: {host: units in stream order}."""
    data_type, _, _, record_io = CASES[case]
    augmented = data_type == "AugmentedManifestFile"
    return [{host: share_of(reads[host][case].data[n], record_io, augmented) for host in HOSTS}
            for n in range(EPOCHS)]


def is_subsequence(part: list[int], whole: list[int]) -> bool:
    it = iter(whole)
    return all(x in it for x in part)


def test_shards_without_shuffle_are_a_fixed_partition(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    everything = s3_channel("full", f"s3://{bucket}/units/", record_io=True)  # FullyReplicated
    channels = [case_channel(case, bucket) for case in CASES] + [everything]
    reads = finish_hosts(start_hosts(s3_jobs, moto_s3, channels))
    for case in CASES:
        per_epoch = case_shares(case, reads)
        for n, shares in enumerate(per_epoch):
            check_partition(shares, epoch=n)
            assert shares == per_epoch[0], f"{case}: without ShuffleConfig the shares moved: {per_epoch}"
            for host, share in shares.items():  # a share keeps the source's order
                assert is_subsequence(share, SOURCE_ORDER[CASES[case][0]]), (case, host, share)
    for host in HOSTS:
        reads[host]["full"].check(stream_of([UNITS[i] for i in range(N_UNITS)], True), f"full@{host}")


def test_shards_with_shuffle_partition_every_epoch(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    channels = [case_channel(case, bucket, ShuffleConfig={"Seed": 1234}) for case in CASES]
    reads = finish_hosts(start_hosts(s3_jobs, moto_s3, channels, epochs=EPOCHS))
    for case in CASES:
        per_epoch = case_shares(case, reads)
        for n, shares in enumerate(per_epoch):
            check_partition(shares, epoch=n)
        # something is shuffled: an order within a share or the assignment changes between epochs
        orders = [tuple(tuple(s[h]) for h in HOSTS) for s in per_epoch]
        assert len(set(orders)) > 1, f"{case}: the same shares in the same order every epoch"


def test_shard_assignment_is_reproducible_with_the_same_seed(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    ch = [case_channel("prefix-recordio", bucket, ShuffleConfig={"Seed": 99})]
    first = start_hosts(s3_jobs, moto_s3, ch, tag="a-")
    a = finish_hosts(first)
    second = {host: s3_jobs.start(moto_s3, {"InputDataConfig": ch}, epochs=EPOCHS, name=f"b-{host}",
                                  args=["--hosts", ",".join(HOSTS), "--current-host", host])
              for host in HOSTS}
    b = finish_hosts(second)
    for host in HOSTS:
        assert [r["sha256"] for r in a[host]["prefix-recordio"].results] == \
               [r["sha256"] for r in b[host]["prefix-recordio"].results], host


@pytest.mark.parametrize("form", ["hosts", "instance-count"])
def test_hosts_from_resource_config_in_the_channel_file(moto_s3, buckets, s3_jobs, form):
    bucket, _ = buckets.get(moto_s3)
    ch = [case_channel("prefix-recordio", bucket)]
    if form == "hosts":
        jobs = start_hosts(s3_jobs, moto_s3, ch, resource_config={"Hosts": ["algo-3", "algo-1", "algo-2"]},
                           host_args=False)
    else:  # hosts algo-1..algo-3; the current host defaults to the first
        jobs = start_hosts(s3_jobs, moto_s3, ch, resource_config={"InstanceCount": 3}, host_args=False)
    reads = finish_hosts(jobs)
    shares = case_shares("prefix-recordio", reads)
    for n, per_host in enumerate(shares):
        check_partition(per_host, epoch=n)


def test_instance_count_alone_serves_algo_1(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    job = s3_jobs.start(moto_s3, {"InputDataConfig": [case_channel("prefix-recordio", bucket)],
                                  "ResourceConfig": {"InstanceCount": 3}})
    reads = job.finish()
    assert job.config_json("resourceconfig.json") == homogeneous_resources("algo-1", HOSTS)
    shares = [share_of(d, True) for d in reads["prefix-recordio"].data]
    assert all(s == shares[0] for s in shares)
    assert len(shares[0]) in (N_UNITS // 3, N_UNITS // 3 + 1), shares[0]


def test_more_hosts_than_units_gives_empty_epochs(moto_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(moto_s3)
    ch = [s3_channel("two", f"s3://{bucket}/two/", record_io=True, s3_S3DataDistributionType="ShardedByS3Key")]
    reads = finish_hosts(start_hosts(s3_jobs, moto_s3, ch))
    for n in range(EPOCHS):
        shares = {host: share_of(reads[host]["two"].data[n], True) for host in HOSTS}
        check_partition(shares, n_units=2, epoch=n)
        empty = [h for h, s in shares.items() if not s]
        assert len(empty) == 1, shares
        assert reads[empty[0]]["two"].data[n] == b""
        assert reads[empty[0]]["two"].results[n]["eof"]


def test_sharding_on_seaweedfs(seaweed_s3, buckets, s3_jobs):
    bucket, _ = buckets.get(seaweed_s3)
    channels = [case_channel("prefix-recordio", bucket), case_channel("manifest-gzip-none", bucket)]
    reads = finish_hosts(start_hosts(s3_jobs, seaweed_s3, channels))
    for case in ("prefix-recordio", "manifest-gzip-none"):
        per_epoch = case_shares(case, reads)
        for n, shares in enumerate(per_epoch):
            check_partition(shares, epoch=n)
            assert shares == per_epoch[0]


def test_local_augmented_manifest_sharded(moto_s3, buckets, s3_jobs, tmp_path):
    """Mixed local/S3 with sharding: the manifest on disk, its objects in S3."""
    bucket, _ = buckets.get(moto_s3)
    manifest = tmp_path / "local-aug.jsonl"
    manifest.write_bytes(jsonl({"data-ref": f"s3://{bucket}/units/{i:03d}.bin", "label": i} for i in range(N_UNITS)))
    ch = [s3_channel("aug", str(manifest), "AugmentedManifestFile", record_io=True,
                     s3_AttributeNames=["data-ref", "label"], s3_S3DataDistributionType="ShardedByS3Key",
                     ShuffleConfig={"Seed": 5})]
    reads = finish_hosts(start_hosts(s3_jobs, moto_s3, ch))
    for n in range(EPOCHS):
        check_partition({h: share_of(reads[h]["aug"].data[n], True, augmented=True) for h in HOSTS}, epoch=n)
