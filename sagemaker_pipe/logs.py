"""Log output: plain lines for a terminal, or one JSON object per line for CI (`--log-format json`).

A record may carry `extra={"fields": {...}}` (the epoch lines do: channel, epoch, objects, bytes,
seconds, ...); in JSON those become top-level keys. A plain `key=value` message without fields
gives its pairs the same way, so every line of either format carries the same facts.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

from sagemaker_pipe.errors import ConfigError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_PAIR = re.compile(r"(?:^|\s)([A-Za-z][\w.-]*)=(\S+)")
_RESERVED = {"ts", "level", "msg"}
_json_errors = False  # the CLI's final error line follows the log format


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname.lower(),
                               "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict):
            fields = {k: _number(v) for k, v in _PAIR.findall(out["msg"])}
        for k, v in fields.items():
            if k not in _RESERVED:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(log_format: str | None, debug: bool = False) -> None:
    """Configure the root handler once: warnings from libraries, info (or debug) from this package."""
    global _json_errors
    fmt = (log_format or "text").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--log-format must be one of {', '.join(FORMATS)} (got {log_format!r})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # -d is about our objects; botocore's debug output (headers, signatures) stays off
    logging.getLogger("sagemaker_pipe").setLevel(logging.DEBUG if debug else logging.INFO)
    _json_errors = fmt == "json"


def error_line(prog: str, message: str, exit_status: int) -> str:
    """The one line a failure prints: `prog: error: ...`, or its JSON object under --log-format json."""
    if _json_errors:
        return json.dumps({"ts": _timestamp(None), "level": "error", "msg": f"{prog}: error: {message}",
                           "exit_status": exit_status}, ensure_ascii=False)
    return f"{prog}: error: {message}"


def _timestamp(created: float | None) -> str:
    when = datetime.fromtimestamp(created, timezone.utc) if created is not None else datetime.now(timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
