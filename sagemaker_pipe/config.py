"""Read a channel file (CreateTrainingJob's InputDataConfig, in YAML or JSON) into a Job.

Every check that can fail without touching data happens here, and each error names the
channel and the field, using SageMaker's own field names.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.fields import TOP_LEVEL_KEYS, did_you_mean, got, shown, unknown

DATA_TYPES = ("S3Prefix", "ManifestFile", "AugmentedManifestFile")
DISTRIBUTIONS = ("FullyReplicated", "ShardedByS3Key")
INPUT_MODES = ("Pipe", "File", "FastFile")
COMPRESSIONS = ("None", "Gzip")
WRAPPERS = ("None", "RecordIO")

CHANNEL_FIELDS = {
    "ChannelName", "DataSource", "ContentType", "CompressionType",
    "RecordWrapperType", "InputMode", "ShuffleConfig",
    "SageMakerPipe",  # local-only extensions; SageMaker itself has no such field
}
EXTENSION_FIELDS = {"ThrottleMBps"}
S3_FIELDS = {"S3Uri", "S3DataType", "S3DataDistributionType", "AttributeNames", "InstanceGroupNames"}
GROUP_FIELDS = {"InstanceGroupName", "InstanceType", "InstanceCount"}
NAME_RE = re.compile(r"[A-Za-z0-9.\-_]{1,64}")
HOST_RE = re.compile(r"[A-Za-z0-9.\-_]{1,64}")
MAX_GROUPS = 5  # ResourceConfig.InstanceGroups and S3DataSource.InstanceGroupNames: at most 5 each
HOMOGENEOUS = "homogeneousCluster"  # SageMaker's group name for a job without InstanceGroups
# current_instance_type without ResourceConfig.InstanceType: the toolkit's own default, in none of its
# EFA instance lists (sagemaker_training/__init__.py), so no launcher switches EFA on (docs/instance-groups.md).
DEFAULT_INSTANCE_TYPE = "local"

# CreateTrainingJob's own limits (botocore's sagemaker service model), so that what runs here runs there
MAX_CHANNELS = 20
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_KEY = 256
MAX_HYPERPARAMETER_VALUE = 2500
MAX_S3_URI = 1024
MAX_CONTENT_TYPE = 256
MAX_ATTRIBUTE_NAME = 256
LONG = (-(1 << 63), (1 << 63) - 1)  # ShuffleConfig.Seed is a Long
MAX_HOSTS = 10_000  # local: every host is listed in resourceconfig.json (the API's int32 allows far more)
# The channel file itself: far above any real job, far below what would hurt
MAX_FILE_BYTES = 16 << 20
MAX_ALIAS_NODES = 100_000  # nodes YAML aliases may add by repetition (a "billion laughs" adds billions)


@dataclass(frozen=True)
class Channel:
    """One channel, with every default filled in."""

    name: str
    uri: str  # "s3://bucket/key" or an absolute local path
    data_type: str = "S3Prefix"
    distribution: str = "FullyReplicated"
    attribute_names: tuple[str, ...] = ()
    input_mode: str = "Pipe"
    compression: str = "None"
    record_wrapper: str = "None"
    content_type: str | None = None
    shuffle_seed: int | None = None
    throttle_mbps: float | None = None  # local-only: pace the channel like a slow source
    instance_groups: tuple[str, ...] = ()  # S3DataSource.InstanceGroupNames; empty: every host

    @property
    def gunzip(self) -> bool:
        return self.compression == "Gzip"

    @property
    def recordio(self) -> bool:
        return self.record_wrapper == "RecordIO"


@dataclass(frozen=True)
class InstanceGroup:
    """One instance group as resourceconfig.json lists it: name, instance type, its hosts."""

    name: str
    instance_type: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Cluster:
    """The hosts of a job in their instance groups, and the host this sidecar stands for.

    A job without ResourceConfig.InstanceGroups is one group, `homogeneousCluster`, as SageMaker
    names it.
    """

    groups: tuple[InstanceGroup, ...] = (InstanceGroup(HOMOGENEOUS, DEFAULT_INSTANCE_TYPE, ("algo-1",)),)
    current_host: str = "algo-1"
    heterogeneous: bool = False  # the groups came from ResourceConfig.InstanceGroups

    @functools.cached_property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h for g in self.groups for h in g.hosts)

    @functools.cached_property
    def _groups_by_host(self) -> dict[str, InstanceGroup]:
        return {h: g for g in self.groups for h in g.hosts}

    def group_of(self, host: str) -> InstanceGroup:
        return self._groups_by_host[host]

    @property
    def group(self) -> InstanceGroup:
        return self.group_of(self.current_host)


@dataclass(frozen=True)
class Job:
    """What the sidecar serves: the channels and the cluster it pretends to be part of."""

    channels: tuple[Channel, ...]
    hyperparameters: dict[str, str] = field(default_factory=dict)
    cluster: Cluster = field(default_factory=Cluster)
    training_image: str | None = None  # AlgorithmSpecification.TrainingImage: compose and run --image default to it

    @property
    def current_host(self) -> str:
        return self.cluster.current_host

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.cluster.hosts

    def receivers(self, channel: Channel) -> tuple[str, ...]:
        """The hosts a channel is delivered to: its InstanceGroupNames' hosts, or every host."""
        if not channel.instance_groups:
            return self.hosts
        return tuple(h for g in self.cluster.groups if g.name in channel.instance_groups for h in g.hosts)

    def channels_of(self, host: str) -> tuple[Channel, ...]:
        return tuple(c for c in self.channels if host in self.receivers(c))

    @property
    def served(self) -> tuple[Channel, ...]:
        """The channels this host receives: the only ones in its FIFOs, folders and inputdataconfig.json."""
        return self.channels_of(self.current_host)


def load_job(path: str | Path, hosts: list[str] | None = None, current_host: str | None = None) -> Job:
    """Parse and validate a channel file; `hosts`/`current_host` override its ResourceConfig."""
    path = Path(path)
    doc = read_document(path)
    return parse_job(doc, base_dir=path.resolve().parent, source=str(path), hosts=hosts, current_host=current_host)


def read_document(path: Path) -> Any:
    """The channel file's YAML (or JSON) document, with a one-line error naming the file."""
    text = _read_text(path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"channel file {path} is not valid YAML{at}") from None
    except RecursionError:
        raise ConfigError(f"channel file {path} is nested too deeply") from None
    except ValueError as e:  # a number past int()'s digit limit
        raise ConfigError(f"channel file {path}: {e}") from None
    finally:
        loader.dispose()


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when PyYAML has it: 16 MiB in a second


def _read_text(path: Path) -> str:
    """A regular file of at most MAX_FILE_BYTES, as UTF-8: never a device, a FIFO or a folder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"channel file {path} is not a regular file")
            if st.st_size > MAX_FILE_BYTES:
                raise ConfigError(f"channel file {path} is {st.st_size} bytes; the limit is {MAX_FILE_BYTES}")
            data = b""
            while len(data) <= MAX_FILE_BYTES and (more := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
                data += more
        finally:
            os.close(fd)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"channel file {path} grew past {MAX_FILE_BYTES} bytes while being read")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read channel file {path}: {_reason(e)}") from None


def _check_aliases(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases repeat more than MAX_ALIAS_NODES nodes.

    An alias is the node its anchor names, shared, not copied, so the document costs little
    until something walks it (json.dumps of a hyperparameter would build gigabytes). Each
    distinct node is sized once here, so this takes time in the file's size, not the expansion's.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # expanded, not yet sized: met again below itself, it contains itself
    distinct = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if not children_done:
            if key in open_:
                raise ConfigError(f"channel file {path}: a YAML alias refers to a node that contains it")
            open_.add(key)
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = node.value
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if children_done:
            size = 1 + sum(sizes[id(k)] for k in kids)
            distinct += 1
            if size - distinct > MAX_ALIAS_NODES:
                raise ConfigError(f"channel file {path}: YAML aliases expand to more than "
                                  f"{MAX_ALIAS_NODES} nodes")
            sizes[key] = size
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)


def parse_job(
    doc: Any,
    base_dir: Path,
    source: str = "channel file",
    hosts: list[str] | None = None,
    current_host: str | None = None,
) -> Job:
    """Build a Job from the parsed document (a list of channels or a CreateTrainingJob-like mapping)."""
    top: Mapping[str, Any]
    if isinstance(doc, Mapping):
        _no_unknown_top_level(doc, source)
    if isinstance(doc, list):
        top, channels_doc = {}, doc
    elif isinstance(doc, Mapping) and "InputDataConfig" in doc:
        top, channels_doc = doc, doc["InputDataConfig"]
    else:
        raise ConfigError(f"{source}: expected a list of channels or a mapping with InputDataConfig")
    if not isinstance(channels_doc, list) or not channels_doc:
        raise ConfigError(f"{source}: InputDataConfig must be a non-empty list of channels")
    if len(channels_doc) > MAX_CHANNELS:
        raise ConfigError(f"{source}: InputDataConfig has {len(channels_doc)} channels; "
                          f"SageMaker allows 1 to {MAX_CHANNELS}")

    job_mode = _job_input_mode(top, source)
    channels = [_parse_channel(c, i, job_mode, base_dir) for i, c in enumerate(channels_doc)]
    seen: set[str] = set()
    for c in channels:
        if c.name in seen:
            raise ConfigError(f"channel {c.name!r}: ChannelName is used by more than one channel")
        seen.add(c.name)

    cluster = parse_cluster(top.get("ResourceConfig"), source, hosts, current_host)
    _check_instance_groups(channels, cluster, source)
    return Job(
        channels=tuple(channels),
        hyperparameters=_parse_hyperparameters(top.get("HyperParameters"), source),
        cluster=cluster,
        training_image=_training_image(top, source),
    )


def _no_unknown_top_level(doc: Mapping[Any, Any], source: str) -> None:
    """SageMaker's job keys pass (even those unused here), and keys of the user's own starting with
    `x-` (as in compose files: a place for YAML anchors); anything else is likely a typo."""
    for key in doc:
        if key in TOP_LEVEL_KEYS or (isinstance(key, str) and key.startswith("x-")):
            continue
        own = "" if did_you_mean(key, TOP_LEVEL_KEYS) else " (keys of your own, such as YAML anchors, start with x-)"
        raise ConfigError(f"{source}: {unknown(key, TOP_LEVEL_KEYS, kind='top-level field')}{own}")


def parse_cluster(doc: Any, source: str = "channel file", hosts: list[str] | None = None,
                  current_host: str | None = None) -> Cluster:
    """The cluster from ResourceConfig (InstanceCount or InstanceGroups) and the --hosts/--current-host overrides.

    InstanceGroups give hosts algo-1..algo-N numbered consecutively through the groups in the order
    listed (2 + 1 instances: algo-1, algo-2 in the first group, algo-3 in the second). `hosts`
    replaces a homogeneous cluster's hosts; with InstanceGroups it must name exactly their hosts.
    """
    groups, me, heterogeneous = _parse_resources(doc, source)
    if hosts is not None:
        listed = _check_hosts(hosts, "--hosts")
        if heterogeneous:
            derived = [h for g in groups for h in g.hosts]
            if sorted(listed) != sorted(derived):
                raise ConfigError(f"--hosts {','.join(listed)} does not match the hosts of ResourceConfig."
                                  f"InstanceGroups ({', '.join(derived)}); leave --hosts out")
        else:
            groups = (InstanceGroup(HOMOGENEOUS, groups[0].instance_type, tuple(listed)),)
        me = current_host or listed[0]
    elif current_host is not None:
        me = current_host
    cluster = Cluster(groups, me, heterogeneous)
    if me not in cluster.hosts:
        raise ConfigError(f"current host {me!r} is not among the hosts {', '.join(cluster.hosts)}")
    return cluster


def _training_image(top: Mapping[str, Any], source: str) -> str | None:
    spec = top.get("AlgorithmSpecification")
    image = spec.get("TrainingImage") if isinstance(spec, Mapping) else None
    if image is not None and (not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image)):
        raise ConfigError(f"{source}: AlgorithmSpecification.TrainingImage must be an image name (got {image!r})")
    return image


def resolve_local(uri: str, base_dir: PurePath) -> str:
    """Turn a `file://` URI or a path relative to the channel file into an absolute path."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with a host is not supported: {uri}")
        return unquote(parsed.path)
    return str((Path(base_dir) / Path(uri).expanduser()).absolute())


def _job_input_mode(top: Mapping[str, Any], source: str) -> str:
    spec = top.get("AlgorithmSpecification")
    mode = top.get("TrainingInputMode")
    if mode is None and isinstance(spec, Mapping):
        mode = spec.get("TrainingInputMode")
    if mode is None:
        return "Pipe"
    if mode not in INPUT_MODES:
        allowed = ", ".join(INPUT_MODES)
        raise ConfigError(f"{source}: TrainingInputMode must be one of {allowed} {got(mode, INPUT_MODES)}")
    return str(mode)


def _parse_channel(doc: Any, index: int, job_mode: str, base_dir: Path) -> Channel:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"channel #{index + 1}: expected a mapping of fields, got {type(doc).__name__}")
    name = doc.get("ChannelName")
    if name is None:
        typo = next((k for k in doc if k not in CHANNEL_FIELDS and did_you_mean(k, ["ChannelName"])), None)
        also = f"; {unknown(typo, ['ChannelName'])}" if typo is not None else ""
        raise ConfigError(f"channel #{index + 1}: ChannelName is required{also}")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"channel #{index + 1}: ChannelName {name!r} must be 1-64 characters of letters, digits, '.', '-', '_'"
        )
    where = f"channel {name!r}"
    if "InstanceGroupNames" in doc:
        raise ConfigError(f"{where}: InstanceGroupNames belongs in DataSource.S3DataSource, as in SageMaker's API")
    _no_unknown(doc, CHANNEL_FIELDS, where)

    ds = doc.get("DataSource")
    if not isinstance(ds, Mapping):
        raise ConfigError(f"{where}: DataSource.S3DataSource is required")
    for key in ds:
        if key == "FileSystemDataSource":
            raise ConfigError(f"{where}: DataSource.FileSystemDataSource (EFS/FSx) is not supported; use S3DataSource")
        if key != "S3DataSource":
            raise ConfigError(f"{where}: {unknown(key, ['S3DataSource'], 'DataSource.')}")
    s3 = ds.get("S3DataSource")
    if not isinstance(s3, Mapping):
        raise ConfigError(f"{where}: DataSource.S3DataSource is required")
    _no_unknown(s3, S3_FIELDS, where, prefix="DataSource.S3DataSource.")

    uri = s3.get("S3Uri")
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"{where}: DataSource.S3DataSource.S3Uri is required (an s3:// URI or a local path)")
    if "\0" in uri:
        raise ConfigError(f"{where}: DataSource.S3DataSource.S3Uri contains a NUL byte")
    _at_most(uri, MAX_S3_URI, f"{where}: DataSource.S3DataSource.S3Uri")
    if not uri.startswith("s3://"):
        try:
            uri = resolve_local(uri, base_dir)
        except ValueError as e:
            raise ConfigError(f"{where}: DataSource.S3DataSource.S3Uri: {e}") from None

    data_type = _enum(s3, "S3DataType", DATA_TYPES, "S3Prefix", where, "DataSource.S3DataSource.")
    attributes = s3.get("AttributeNames")
    if data_type == "AugmentedManifestFile":
        if (
            not isinstance(attributes, list)
            or not 1 <= len(attributes) <= 16
            or not all(isinstance(a, str) and 1 <= len(a) <= MAX_ATTRIBUTE_NAME for a in attributes)
        ):
            raise ConfigError(f"{where}: DataSource.S3DataSource.AttributeNames must be a list of 1 to 16 "
                              f"attribute names of 1 to {MAX_ATTRIBUTE_NAME} characters")
    elif attributes is not None:
        raise ConfigError(f"{where}: DataSource.S3DataSource.AttributeNames is only for AugmentedManifestFile")

    input_mode = _enum(doc, "InputMode", INPUT_MODES, job_mode, where)
    if data_type == "AugmentedManifestFile" and input_mode != "Pipe":
        raise ConfigError(f"{where}: AugmentedManifestFile needs InputMode Pipe (got {input_mode})")

    content_type = doc.get("ContentType")
    if content_type is not None and not isinstance(content_type, str):
        raise ConfigError(f"{where}: ContentType must be a string")
    if content_type is not None:
        _at_most(content_type, MAX_CONTENT_TYPE, f"{where}: ContentType")

    return Channel(
        name=name,
        uri=uri,
        data_type=data_type,
        distribution=_enum(s3, "S3DataDistributionType", DISTRIBUTIONS, "FullyReplicated", where,
                           "DataSource.S3DataSource."),
        attribute_names=tuple(attributes or ()),
        input_mode=input_mode,
        compression=_enum(doc, "CompressionType", COMPRESSIONS, "None", where),
        record_wrapper=_enum(doc, "RecordWrapperType", WRAPPERS, "None", where),
        content_type=content_type,
        shuffle_seed=_parse_shuffle(doc.get("ShuffleConfig"), where),
        throttle_mbps=_parse_extensions(doc.get("SageMakerPipe"), where),
        instance_groups=_parse_group_names(s3.get("InstanceGroupNames"), where),
    )


def _enum(doc: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str, where: str,
          prefix: str = "") -> str:
    value = doc.get(key, default)
    if value not in allowed:
        hint = " (the Converse data type is for Bedrock, not training channels)" if value == "Converse" else ""
        raise ConfigError(f"{where}: {prefix}{key} must be one of {', '.join(allowed)} {got(value, allowed)}{hint}")
    return str(value)


def _parse_shuffle(doc: Any, where: str) -> int | None:
    if doc is None:
        return None
    if isinstance(doc, Mapping):
        _no_unknown(doc, {"Seed"}, where, prefix="ShuffleConfig.")
    if not isinstance(doc, Mapping) or set(doc) != {"Seed"}:
        raise ConfigError(f"{where}: ShuffleConfig must be a mapping with exactly one field, Seed")
    seed = doc["Seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not LONG[0] <= seed <= LONG[1]:
        raise ConfigError(f"{where}: ShuffleConfig.Seed must be a 64-bit integer (got {_short(seed)})")
    return seed


def _parse_group_names(doc: Any, where: str) -> tuple[str, ...]:
    """S3DataSource.InstanceGroupNames: 1 to 5 distinct group names (checked against the groups later)."""
    if doc is None:
        return ()
    if (
        not isinstance(doc, list)
        or not 1 <= len(doc) <= MAX_GROUPS
        or not all(_group_name(g) for g in doc)
        or len(set(doc)) != len(doc)
    ):
        raise ConfigError(f"{where}: DataSource.S3DataSource.InstanceGroupNames must be a list of 1 to {MAX_GROUPS} "
                          "distinct instance group names")
    return tuple(doc)


def _parse_extensions(doc: Any, where: str) -> float | None:
    """`SageMakerPipe: {ThrottleMBps: N}`: what only a local run can do."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: SageMakerPipe must be a mapping")
    _no_unknown(doc, EXTENSION_FIELDS, where, prefix="SageMakerPipe.")
    rate = doc.get("ThrottleMBps")
    if rate is None:
        return None
    try:
        value = float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else math.nan
    except OverflowError:
        value = math.inf
    if not (0 < value < math.inf):
        raise ConfigError(f"{where}: SageMakerPipe.ThrottleMBps must be a positive number (got {_short(rate)})")
    return value


def _no_unknown(doc: Mapping[str, Any], known: set[str], where: str, prefix: str = "") -> None:
    for key in doc:
        if key not in known:
            raise ConfigError(f"{where}: {unknown(key, known, prefix)}")


def _at_most(value: str, limit: int, what: str) -> None:
    if len(value) > limit:
        raise ConfigError(f"{what} is {len(value)} characters; SageMaker allows at most {limit}")


def _short(value: Any) -> str:
    """A value for an error line, cut so that a huge number or string stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"a {value.bit_length()}-bit number"
    text = shown(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_resources(doc: Any, source: str) -> tuple[tuple[InstanceGroup, ...], str, bool]:
    """ResourceConfig: SageMaker's InstanceType with InstanceCount or InstanceGroups, or our Hosts/CurrentHost."""
    if doc is None:
        return Cluster().groups, "algo-1", False
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: ResourceConfig must be a mapping")
    if "InstanceGroups" in doc:
        clash = [k for k in ("InstanceType", "InstanceCount", "Hosts") if k in doc]
        if clash:  # SageMaker: "InstanceType or InstanceCount cannot be specified with InstanceGroups"
            raise ConfigError(f"{source}: ResourceConfig.{clash[0]} cannot be given with ResourceConfig.InstanceGroups")
        groups = _parse_groups(doc["InstanceGroups"], source)
        heterogeneous = True
    else:
        instance_type = doc.get("InstanceType", DEFAULT_INSTANCE_TYPE)
        if not isinstance(instance_type, str) or not instance_type.strip():
            raise ConfigError(f"{source}: ResourceConfig.InstanceType must be an instance type name "
                              f"(got {instance_type!r})")
        if "Hosts" in doc:
            hosts = _check_hosts(doc["Hosts"], "ResourceConfig.Hosts")
        else:
            count = doc.get("InstanceCount", 1)
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_HOSTS:
                raise ConfigError(f"{source}: ResourceConfig.InstanceCount must be an integer from 1 to "
                                  f"{MAX_HOSTS} (got {_short(count)})")
            hosts = [f"algo-{i}" for i in range(1, count + 1)]
        groups = (InstanceGroup(HOMOGENEOUS, instance_type, tuple(hosts)),)
        heterogeneous = False
    all_hosts = [h for g in groups for h in g.hosts]
    me = doc.get("CurrentHost", all_hosts[0])
    if not isinstance(me, str):
        raise ConfigError(f"{source}: ResourceConfig.CurrentHost must be a host name")
    return groups, me, heterogeneous


def _parse_groups(doc: Any, source: str) -> tuple[InstanceGroup, ...]:
    """ResourceConfig.InstanceGroups: 1 to 5 named groups; their hosts numbered on through the list."""
    where = f"{source}: ResourceConfig.InstanceGroups"
    if not isinstance(doc, list) or not 1 <= len(doc) <= MAX_GROUPS:
        raise ConfigError(f"{where} must be a list of 1 to {MAX_GROUPS} instance groups")
    groups: list[InstanceGroup] = []
    for i, g in enumerate(doc):
        at = f"{where}[{i}]"
        if not isinstance(g, Mapping):
            raise ConfigError(f"{at} must be a mapping with InstanceGroupName, InstanceType and InstanceCount")
        _no_unknown(g, GROUP_FIELDS, at, prefix="")
        name, kind, count = g.get("InstanceGroupName"), g.get("InstanceType"), g.get("InstanceCount")
        if not _group_name(name):
            raise ConfigError(f"{at}.InstanceGroupName must be 1 to 64 printable characters (got {name!r})")
        if any(name == other.name for other in groups):
            raise ConfigError(f"{at}.InstanceGroupName {name!r} names two instance groups")
        if not isinstance(kind, str) or not kind.strip():
            raise ConfigError(f"{at}.InstanceType must be an instance type name (got {kind!r})")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{at}.InstanceCount must be a whole number, 0 or more (got {_short(count)})")
        if count > MAX_HOSTS:
            raise ConfigError(f"{at}.InstanceCount is {_short(count)}; at most {MAX_HOSTS} hosts here")
        first = sum(len(x.hosts) for x in groups) + 1
        groups.append(InstanceGroup(name, kind, tuple(f"algo-{n}" for n in range(first, first + count))))
    if not any(g.hosts for g in groups):
        raise ConfigError(f"{where} has no instances: give at least one group an InstanceCount above 0")
    return tuple(groups)


def _group_name(name: Any) -> bool:
    """SageMaker's InstanceGroupName: 1 to 64 characters (pattern `.+`); printable here, as it is shown in logs."""
    return isinstance(name, str) and 1 <= len(name) <= 64 and name.isprintable()


def _check_instance_groups(channels: list[Channel], cluster: Cluster, source: str) -> None:
    """InstanceGroupNames name groups of the job, and are set on every channel or on none (as SageMaker checks)."""
    names = [g.name for g in cluster.groups]
    for c in channels:
        if c.instance_groups and not cluster.heterogeneous:
            raise ConfigError(f"channel {c.name!r}: DataSource.S3DataSource.InstanceGroupNames needs "
                              "ResourceConfig.InstanceGroups (a heterogeneous cluster)")
        for group in c.instance_groups:
            if group not in names:
                raise ConfigError(f"channel {c.name!r}: DataSource.S3DataSource.InstanceGroupNames: {group!r} is not "
                                  f"an instance group of ResourceConfig.InstanceGroups ({', '.join(map(repr, names))})")
    assigned = [c.name for c in channels if c.instance_groups]
    if assigned and len(assigned) < len(channels):
        missing = [c.name for c in channels if not c.instance_groups]
        raise ConfigError(f"{source}: DataSource.S3DataSource.InstanceGroupNames is set on {', '.join(assigned)} "
                          f"but not on {', '.join(missing)}; SageMaker needs it on every channel or on none")


def _check_hosts(hosts: Any, what: str) -> list[str]:
    if (
        not isinstance(hosts, list)
        or not 1 <= len(hosts) <= MAX_HOSTS
        or not all(isinstance(h, str) and HOST_RE.fullmatch(h) for h in hosts)
        or len(set(hosts)) != len(hosts)
    ):
        raise ConfigError(f"{what} must be a list of 1 to {MAX_HOSTS} distinct host names")
    return sorted(hosts)


def _parse_hyperparameters(doc: Any, source: str) -> dict[str, str]:
    """SageMaker hands hyperparameters to the algorithm as strings; do the same."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: HyperParameters must be a mapping")
    if len(doc) > MAX_HYPERPARAMETERS:
        raise ConfigError(f"{source}: HyperParameters has {len(doc)} entries; SageMaker allows at most "
                          f"{MAX_HYPERPARAMETERS}")
    out = {}
    for k, v in doc.items():
        key = str(k)
        _at_most(key, MAX_HYPERPARAMETER_KEY, f"{source}: HyperParameters key {_short(key)}")
        try:
            value = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        except TypeError:  # a YAML date, set or binary: no JSON for it
            raise ConfigError(f"{source}: HyperParameters.{_short(key)} is a YAML {type(v).__name__}; "
                              "quote it to pass it as a string") from None
        _at_most(value, MAX_HYPERPARAMETER_VALUE, f"{source}: HyperParameters.{_short(key)}")
        out[key] = value
    return out


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e)
