"""The SDK's channel list, split between sagemaker-pipe and the SDK, and the inputdataconfig.json for all of it.

Both SDKs hand their local mode CreateTrainingJob-shaped channels (SDK v3's pydantic shapes are
turned into the same dictionaries first). sagemaker-pipe serves every channel the SDK would get
wrong: Pipe channels, and File channels that are sharded or use a manifest. The SDK keeps the
plain File channels (its own download or bind mount). Every channel is validated here, with the
same one-line errors as a channel file, before any process starts or any file is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagemaker_pipe.config import Channel, Job, parse_job
from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.sidecar import input_data_config

# Fields of the SDKs' requests that say nothing about the bytes of a channel here (local mode runs
# one homogeneous group of instances, so InstanceGroupNames select nothing).
IGNORED_S3_FIELDS = ("ModelAccessConfig", "HubAccessConfig", "InstanceGroupNames")


@dataclass(frozen=True)
class ChannelSplit:
    """Who serves what, and what every host's algorithm is told."""

    engine_doc: dict[str, Any]  # a channel file for the engines; no channels: no engine at all
    sdk_channels: tuple[str, ...]  # names of the channels the SDK serves itself (plain File channels)
    input_data_config: dict[str, dict[str, str]]  # inputdataconfig.json, every channel
    local_sources: tuple[str, ...]  # local folders or files the engine reads (mounted into a sidecar)
    uses_s3: bool

    @property
    def served(self) -> bool:
        return bool(self.engine_doc["InputDataConfig"])


def split_channels(channels: Sequence[Mapping[str, Any]], job_mode: str) -> ChannelSplit:
    """Translate the SDK's channels, validate them all, and decide which ones the engine serves."""
    docs = [_channel_doc(c) for c in channels]
    if not docs:  # a job without channels (a channel file needs one): nothing to serve
        return ChannelSplit({"TrainingInputMode": job_mode, "InputDataConfig": []}, (), {}, (), False)
    job = _parse({"TrainingInputMode": job_mode, "InputDataConfig": docs})
    ours = [(doc, c) for doc, c in zip(docs, job.channels, strict=True) if _engine_serves(c)]
    engine_doc = {"TrainingInputMode": job_mode, "InputDataConfig": [doc for doc, _ in ours]}
    return ChannelSplit(
        engine_doc=engine_doc,
        sdk_channels=tuple(c.name for c in job.channels if not _engine_serves(c)),
        input_data_config=input_data_config(job),
        local_sources=tuple(sorted({_local_root(c) for _, c in ours if not c.uri.startswith("s3://")})),
        uses_s3=any(c.uri.startswith("s3://") for _, c in ours),
    )


def _engine_serves(channel: Channel) -> bool:
    """Pipe, and the File channels the SDK's own local mode would refuse or get wrong."""
    return (channel.input_mode == "Pipe" or channel.distribution == "ShardedByS3Key"
            or channel.data_type != "S3Prefix")


def _local_root(channel: Channel) -> str:
    """What a sidecar must see of a local channel: its folder, or a local manifest's folder (its references)."""
    return channel.uri if channel.data_type == "S3Prefix" else str(Path(channel.uri).parent)


def _parse(doc: dict[str, Any]) -> Job:
    # Local paths are absolute by now, so the base folder is never used.
    return parse_job(doc, base_dir=Path("/"), source="the estimator's inputs")


def _channel_doc(channel: Mapping[str, Any]) -> dict[str, Any]:
    """One channel as sagemaker-pipe's channel file spells it (CreateTrainingJob's own fields)."""
    doc = {k: v for k, v in channel.items() if k not in ("DataSource", "DataUri")}
    name = channel.get("ChannelName")
    source = channel.get("DataSource") or {}
    if "S3DataSource" in source:
        s3 = {k: v for k, v in source["S3DataSource"].items() if k not in IGNORED_S3_FIELDS}
    elif "FileDataSource" in source:  # SDK v2's file_input: FileUri and FileDataDistributionType
        fds = source["FileDataSource"]
        s3 = {"S3Uri": fds.get("FileUri"), "S3DataDistributionType": fds.get("FileDataDistributionType")}
    elif "FileSystemDataSource" in source and "DirectoryPath" in source["FileSystemDataSource"]:
        s3 = {"S3Uri": str(Path(source["FileSystemDataSource"]["DirectoryPath"]).absolute())}
    else:
        raise ConfigError(f"channel {name!r}: DataSource must be an S3DataSource, a file:// URI or a local folder")
    doc["DataSource"] = {"S3DataSource": {k: v for k, v in s3.items() if v is not None}}
    return doc
