"""Object bodies by plain SigV4-signed GETs, with botocore doing everything but the request itself.

botocore's per-request Python work in `get_object` (endpoint rules, event hooks, response
parsing) caps a 2-core machine near 500 small objects/s whatever the thread count (the
bench's pool16 row).
Here the URL prefix, signing region and service of a bucket come from one presigned URL that
botocore resolves (so endpoints, addressing style and access points are its rules, not ours),
credentials from botocore's chain (refreshed as they expire), and the request is signed by
botocore's own S3 signer and sent through its own HTTP session class (proxies, CA bundle).

Only a 200 or 206 is handled here. Any other answer (errors, redirects, throttling), or none
at all, returns None, and the caller repeats the request through `get_object`, which retries,
follows region redirects and words the error exactly as before. A bucket whose presigned URL is not plain
SigV4 (anonymous access, S3 Express sessions), or that answered once with a redirect, a 400
or a 403 (another region, a signature it does not take), takes that path from then on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from botocore import __version__ as botocore_version
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.httpsession import URLLib3Session
from botocore.utils import get_environ_proxies

from sagemaker_pipe import __version__

_PROBE = "sagemaker-pipe-probe"  # a key name that URL-quotes to itself
AGENT = f"sagemaker-pipe/{__version__} botocore/{botocore_version}"
NOT_HERE = (301, 307, 400, 403)  # a region redirect, or a signature this bucket does not take


@dataclass(frozen=True)
class Target:
    """Where a bucket's keys live: `prefix + quote(key)`, signed for `region` and `service`."""

    prefix: str
    region: str
    service: str


class Body:
    """An object body being read: the response's headers (lower-case names) and its stream."""

    def __init__(self, headers: Any, stream: Any) -> None:
        self.headers = headers
        self._stream = stream

    def read(self, n: int) -> bytes:
        data: bytes = self._stream.read(n)
        return data

    def close(self) -> None:
        """A body read to its end gives its connection back to the pool; any other is dropped."""
        if getattr(self._stream, "length_remaining", None) == 0:
            self._stream.release_conn()
        else:
            self._stream.close()


class SignedGet:
    def __init__(self, session: Any, config: Config, timeout: tuple[float, float], connections: int) -> None:
        """`session` is the botocore session the transport's client came from, `config` that client's Config."""
        # Presigned only to learn each bucket's URL prefix and signing scope: SigV4, as get_object signs.
        self._presigner = session.create_client("s3", config=config.merge(Config(signature_version="s3v4")))
        self._credentials = session.get_credentials()
        self._http = URLLib3Session(verify=session.get_config_variable("ca_bundle") or True, timeout=timeout,
                                    max_pool_connections=connections,
                                    proxies=get_environ_proxies(self._presigner.meta.endpoint_url))  # as botocore
        self._targets: dict[str, Target | None] = {}
        self._lock = threading.Lock()

    def get(self, bucket: str, key: str, headers: dict[str, str]) -> Body | None:
        """The object's body, or None when `get_object` must take this request."""
        target = self.target(bucket)
        if target is None:
            return None
        request = AWSRequest("GET", target.prefix + quote(key, safe="/~"),
                             headers={"User-Agent": AGENT, **headers}, stream_output=True)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), target.service, target.region).add_auth(request)
        try:
            response = self._http.send(request.prepare())
        except BotoCoreError:  # no answer at all: get_object's retries take it from here
            return None
        if response.status_code in (200, 206):
            return Body(response.raw.headers, response.raw)
        response.raw.close()
        if response.status_code in NOT_HERE:
            self.refuse(bucket)
        return None

    def refuse(self, bucket: str) -> None:
        """Another region or signing scheme answered: the bucket is botocore's from now on."""
        with self._lock:
            self._targets[bucket] = None

    def target(self, bucket: str) -> Target | None:
        """Where the bucket's keys live, or None when only `get_object` may fetch them."""
        with self._lock:
            if bucket not in self._targets:
                self._targets[bucket] = self._resolve(bucket)
            return self._targets[bucket]

    def _resolve(self, bucket: str) -> Target | None:
        if self._credentials is None:
            return None
        url = self._presigner.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE})
        address, _, query = url.partition("?")
        params = parse_qs(query)
        scope = params.get("X-Amz-Credential", [""])[0].split("/")  # key/date/region/service/aws4_request
        if params.get("X-Amz-Algorithm") != ["AWS4-HMAC-SHA256"] or len(scope) != 5 or not address.endswith(_PROBE):
            return None
        return Target(address[: -len(_PROBE)], scope[2], scope[3])
