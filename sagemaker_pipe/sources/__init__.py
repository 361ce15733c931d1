"""Pick the transport for a URI: `s3://` goes to S3, anything else is a local path."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from functools import cache

from sagemaker_pipe.chunks import ObjectRef, ObjectStream
from sagemaker_pipe.errors import ConfigError
from sagemaker_pipe.sources.base import Transport
from sagemaker_pipe.sources.local import LocalTransport

__all__ = ["ObjectRef", "ObjectStream", "transport_for", "stream", "stat"]


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


@cache
def _local() -> LocalTransport:
    return LocalTransport()


@cache
def _s3() -> Transport:
    try:
        from sagemaker_pipe.sources.s3 import S3Transport
    except ImportError:
        raise ConfigError("s3:// sources are not supported yet in this version") from None
    return S3Transport()


def transport_for(uri: str) -> Transport:
    return _s3() if is_s3(uri) else _local()


def stat(refs: Sequence[ObjectRef]) -> list[ObjectRef]:
    """Sizes for refs that came from a manifest, failing on the first missing one."""
    s3 = [r for r in refs if is_s3(r.uri)]
    local = [r for r in refs if not is_s3(r.uri)]
    sized = {r.uri: r for r in (_s3().stat(s3) if s3 else []) + _local().stat(local)}
    return [sized[r.uri] for r in refs]


def stream(refs: Sequence[ObjectRef]) -> Generator[ObjectStream, None, None]:
    """Open refs in order; each transport fetches ahead over its own share of the list."""
    kinds = {is_s3(r.uri) for r in refs}
    if len(kinds) <= 1:
        if refs:
            yield from transport_for(refs[0].uri).stream(refs)
        return
    s3_iter = _s3().stream([r for r in refs if is_s3(r.uri)])
    local_iter = _local().stream([r for r in refs if not is_s3(r.uri)])
    for ref in refs:
        yield next(s3_iter if is_s3(ref.uri) else local_iter)
