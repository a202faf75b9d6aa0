"""Structured logs: one JSON object per line on stderr (journald keeps them).

Call `event(log, "info", "lease granted", lease=..., client=...)`; the message
is a fixed phrase and the variable parts are fields, so logs can be queried.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = "radium.daemon"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname.lower():7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(level: str, fmt: str) -> logging.Logger:
    log = logging.getLogger(LOGGER)
    log.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log


def event(log: logging.Logger, level: str, message: str, **fields: Any) -> None:
    log.log(logging.getLevelName(level.upper()), message, extra={"fields": fields})
