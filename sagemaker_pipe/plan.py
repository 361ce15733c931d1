"""Which units an epoch carries, in what order, for this host.

Listing and manifest reading happen once, before any FIFO exists, so every missing object
or malformed manifest fails the job up front; an epoch only reorders and shards the units.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import PurePath
from posixpath import normpath

from sagemaker_pipe import sources
from sagemaker_pipe.config import Channel, Job, resolve_local
from sagemaker_pipe.errors import ConfigError, PipeError, in_channel
from sagemaker_pipe.sources import ObjectRef

MANIFEST = "(S3DataType: ManifestFile)"  # ends each manifest error: the setting that made it a manifest
AUGMENTED = "(S3DataType: AugmentedManifestFile)"
Part = ObjectRef | bytes  # an object to stream, or literal bytes from an augmented manifest


@dataclass(frozen=True)
class Unit:
    """What shuffling and sharding move around: an object, a manifest entry, or an augmented line.

    With RecordIO each part becomes one record.
    """

    parts: tuple[Part, ...]


@dataclass(frozen=True)
class ChannelPlan:
    channel: Channel
    units: tuple[Unit, ...]
    host_index: int = 0
    host_count: int = 1

    def epoch(self, n: int) -> list[Unit]:
        """This host's units for epoch n: shuffled afresh per epoch from the seed, then sharded."""
        units = list(self.units)
        if self.channel.shuffle_seed is not None:
            random.Random(f"sagemaker-pipe:{self.channel.shuffle_seed}:{n}").shuffle(units)
        if self.channel.distribution == "ShardedByS3Key" and self.host_count > 1:
            units = units[self.host_index :: self.host_count]
        return units

    @property
    def objects(self) -> list[ObjectRef]:
        return [p for u in self.units for p in u.parts if isinstance(p, ObjectRef)]


def plan_job(job: Job) -> list[ChannelPlan]:
    """The channels this host receives; a sharded one is split over the hosts that receive it."""
    plans = []
    for c in job.served:
        receivers = job.receivers(c)
        plans.append(plan_channel(c, receivers.index(job.current_host), len(receivers)))
    return plans


def check_local_paths(job: Job, hint: str = "") -> None:
    """Every local S3Uri exists, without listing it: the quick check `validate` makes of a mistyped path."""
    for c in job.channels:
        if not sources.is_s3(c.uri) and not os.path.exists(c.uri):
            raise ConfigError(f"channel {c.name!r}: DataSource.S3DataSource.S3Uri {c.uri}: no such file or folder"
                              f"{hint}")


def plan_channel(channel: Channel, host_index: int = 0, host_count: int = 1) -> ChannelPlan:
    """List the channel's source (or read its manifest) once; errors name the channel and URI."""
    try:
        if channel.data_type == "S3Prefix":
            units = [Unit((ref,)) for ref in sources.transport_for(channel.uri).list_objects(channel.uri)]
            if not units:
                raise ConfigError(f"{channel.uri}: no objects to stream")
        elif channel.data_type == "ManifestFile":
            units = [Unit((ref,)) for ref in sources.stat(_manifest(channel.uri))]
        else:
            units = _augmented(channel)
    except PipeError as e:
        raise ConfigError(str(in_channel(e, channel.name))) from None
    return ChannelPlan(channel, tuple(units), host_index, host_count)


def _manifest(uri: str) -> list[ObjectRef]:
    """`[{"prefix": "s3://b/p/"}, "key1", "key2", ...]`: the entries, in manifest order."""
    try:
        doc = json.loads(sources.transport_for(uri).read_bytes(uri))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"manifest {uri} is not valid JSON {MANIFEST}") from None
    if not (isinstance(doc, list) and doc and isinstance(doc[0], dict) and isinstance(doc[0].get("prefix"), str)):
        raise ConfigError(f'manifest {uri} must be a JSON array starting with {{"prefix": "..."}} {MANIFEST}')
    prefix = doc[0]["prefix"]
    if not sources.is_s3(prefix):
        if sources.is_s3(uri):
            raise ConfigError(f"manifest {uri}: a manifest in S3 needs an s3:// prefix (got {prefix!r}) {MANIFEST}")
        end = "/" if prefix.endswith("/") else ""  # keys are appended to the prefix as a string
        prefix = resolve_local(prefix, PurePath(uri).parent) + end
    refs = []
    for i, key in enumerate(doc[1:], start=1):
        if not isinstance(key, str):
            raise ConfigError(f"manifest {uri}: entry {i} is not a string {MANIFEST}")
        refs.append(ObjectRef(_join(prefix, key, f"manifest {uri}: entry {i}"), key))
    if not refs:
        raise ConfigError(f"manifest {uri} lists no objects {MANIFEST}")
    return refs


def _join(prefix: str, key: str, where: str) -> str:
    """prefix + key, refusing keys that would leave the prefix on a file system."""
    if "\0" in key:
        raise ConfigError(f"{where}: key contains a NUL byte {MANIFEST}")
    if not sources.is_s3(prefix):
        if key.startswith("/") or normpath(key).split("/")[0] == "..":
            raise ConfigError(f"{where}: key {key!r} escapes the prefix {MANIFEST}")
    return prefix + key


def _ref_uri(manifest: str, value: str, number: int) -> str:
    """An s3:// URI as is; a local path or file:// URI relative to a local manifest's folder."""
    if sources.is_s3(value):
        return value
    if sources.is_s3(manifest):
        raise ConfigError(f"augmented manifest {manifest}: line {number}: {value!r} is not an s3:// URI {AUGMENTED}")
    if "\0" in value:
        raise ConfigError(f"augmented manifest {manifest}: line {number}: reference contains a NUL byte {AUGMENTED}")
    try:
        return resolve_local(value, PurePath(manifest).parent)
    except ValueError as e:
        raise ConfigError(f"augmented manifest {manifest}: line {number}: {e} {AUGMENTED}") from None


def _augmented(channel: Channel) -> list[Unit]:
    """JSON Lines; each line's AttributeNames in order: `-ref` attributes are objects, others literal data."""
    uri = channel.uri
    try:
        text = sources.transport_for(uri).read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"augmented manifest {uri} is not UTF-8 text {AUGMENTED}") from None
    units: list[Unit] = []
    refs: list[ObjectRef] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ConfigError(f"augmented manifest {uri}: line {number} is not valid JSON {AUGMENTED}") from None
        if not isinstance(record, dict):
            raise ConfigError(f"augmented manifest {uri}: line {number} is not a JSON object {AUGMENTED}")
        parts: list[Part] = []
        for name in channel.attribute_names:
            if name not in record:
                raise ConfigError(f"augmented manifest {uri}: line {number} lacks attribute {name!r} "
                                  f"(AttributeNames: {', '.join(channel.attribute_names)})")
            value = record[name]
            if name.endswith("-ref"):
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"augmented manifest {uri}: line {number}: {name} must be a URI {AUGMENTED}")
                ref = ObjectRef(_ref_uri(uri, value, number), value.rsplit("/", 1)[-1])
                refs.append(ref)
                parts.append(ref)
            elif isinstance(value, str):
                parts.append(value.encode("utf-8"))
            else:
                parts.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        units.append(Unit(tuple(parts)))
    if not units:
        raise ConfigError(f"augmented manifest {uri} has no lines {AUGMENTED}")
    sized = {r.uri: r for r in sources.stat(refs)}
    return [Unit(tuple(sized[p.uri] if isinstance(p, ObjectRef) else p for p in u.parts)) for u in units]
