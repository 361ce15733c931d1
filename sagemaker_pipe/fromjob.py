"""A channel file from the JSON of `aws sagemaker describe-training-job`.

Keeps SageMaker's field names, drops what only the API knows (and says so), takes the job's
TrainingInputMode, HyperParameters and cluster (InstanceType with InstanceCount, or
InstanceGroups), and rewrites S3 URI prefixes to local
folders (`--map s3://bucket/prefix=./data`, the longest matching prefix wins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sagemaker_pipe.config import CHANNEL_FIELDS, GROUP_FIELDS, S3_FIELDS
from sagemaker_pipe.errors import ConfigError

LOCAL_ONLY_FIELDS = {"SageMakerPipe"}  # this tool's extensions: never in a describe output


def parse_map(spec: str) -> tuple[str, str]:
    """`s3://bucket/prefix=./folder`, split at the last `=` (S3 keys often hold `=`, paths seldom)."""
    prefix, sep, local = spec.rpartition("=")
    if not sep or not prefix.startswith("s3://") or len(prefix) <= len("s3://") or not local:
        raise ConfigError(f"--map {spec!r}: expected s3://bucket/prefix=LOCAL_FOLDER")
    return prefix, local


def map_uri(uri: str, maps: Sequence[tuple[str, str]]) -> str | None:
    """The local path for `uri` by the longest matching prefix (whole path segments), or None."""
    best: tuple[str, str] | None = None
    for prefix, local in maps:
        bare = prefix.rstrip("/")
        if (uri == prefix or uri == bare or uri.startswith(bare + "/")) and (best is None or len(bare) > len(best[0])):
            best = (bare, local)
    if best is None:
        return None
    bare, local = best
    rest = uri[len(bare):].lstrip("/")
    if not rest:
        return local
    return local.rstrip("/") + "/" + rest


def channel_file(describe: Any, maps: Sequence[tuple[str, str]] = ()) -> tuple[dict[str, Any], list[str]]:
    """(the channel-file document, notes for the user about what was dropped or left remote)."""
    if isinstance(describe, Mapping) and isinstance(describe.get("TrainingJob"), Mapping):
        describe = describe["TrainingJob"]
    if not isinstance(describe, Mapping) or not isinstance(describe.get("InputDataConfig"), list):
        raise ConfigError("expected the JSON of `aws sagemaker describe-training-job` (a mapping with "
                          "InputDataConfig)")
    notes: list[str] = []
    doc: dict[str, Any] = {}
    spec = describe.get("AlgorithmSpecification")
    mode = spec.get("TrainingInputMode") if isinstance(spec, Mapping) else None
    if mode is None:
        mode = describe.get("TrainingInputMode")
    if mode is not None:
        doc["TrainingInputMode"] = mode
    image = spec.get("TrainingImage") if isinstance(spec, Mapping) else None
    if isinstance(image, str) and image:
        doc["AlgorithmSpecification"] = {"TrainingImage": image}  # what compose and run --image default to
    doc["InputDataConfig"] = [_channel(c, i, maps, notes) for i, c in enumerate(describe["InputDataConfig"])]
    hyper = describe.get("HyperParameters")
    if isinstance(hyper, Mapping) and hyper:
        doc["HyperParameters"] = {str(k): v if isinstance(v, str) else str(v) for k, v in hyper.items()}
    resources = _resources(describe.get("ResourceConfig"))
    if resources:
        doc["ResourceConfig"] = resources
    return doc, notes


def _channel(c: Any, index: int, maps: Sequence[tuple[str, str]], notes: list[str]) -> dict[str, Any]:
    if not isinstance(c, Mapping):
        raise ConfigError(f"InputDataConfig entry #{index + 1} is not a mapping")
    name = c.get("ChannelName", f"#{index + 1}")
    where = f"channel {name!r}"
    out: dict[str, Any] = {}
    for key, value in c.items():
        if key == "DataSource":
            out[key] = _data_source(value, where, maps, notes)
        elif key in CHANNEL_FIELDS and key not in LOCAL_ONLY_FIELDS:
            out[key] = value
        else:
            notes.append(f"{where}: dropped {key} (an API-only field this tool does not use)")
    return out


def _data_source(ds: Any, where: str, maps: Sequence[tuple[str, str]], notes: list[str]) -> dict[str, Any]:
    if not isinstance(ds, Mapping) or not isinstance(ds.get("S3DataSource"), Mapping):
        kinds = ", ".join(ds) if isinstance(ds, Mapping) else type(ds).__name__
        raise ConfigError(f"{where}: only DataSource.S3DataSource can be served locally (got {kinds})")
    for key in ds:
        if key != "S3DataSource":
            notes.append(f"{where}: dropped DataSource.{key}")
    s3: dict[str, Any] = {}
    for key, value in ds["S3DataSource"].items():
        if key in S3_FIELDS:
            s3[key] = value
        else:
            notes.append(f"{where}: dropped DataSource.S3DataSource.{key} (an API-only field this tool does not use)")
    uri = s3.get("S3Uri")
    if isinstance(uri, str):
        local = map_uri(uri, maps)
        if local is not None:
            s3["S3Uri"] = local
            if s3.get("S3DataType") in ("ManifestFile", "AugmentedManifestFile"):
                notes.append(f"{where}: the manifest now comes from {local}, but the object URIs inside it are "
                             "not rewritten; point them at local files if they should not come from S3")
        elif uri.startswith("s3://"):
            notes.append(f"{where}: still reads {uri} (no --map matches it; it needs AWS credentials)")
    return {"S3DataSource": s3}


def _resources(rc: Any) -> dict[str, Any]:
    """ResourceConfig's cluster fields: InstanceGroups, or InstanceType and InstanceCount (not the volume, keys...)."""
    if not isinstance(rc, Mapping):
        return {}
    groups = rc.get("InstanceGroups")
    if isinstance(groups, list) and groups:
        return {"InstanceGroups": [{k: v for k, v in g.items() if k in GROUP_FIELDS} if isinstance(g, Mapping) else g
                                   for g in groups]}
    return {k: rc[k] for k in ("InstanceType", "InstanceCount") if k in rc}
