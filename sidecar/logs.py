"""Logging set-up and the one-line-per-request log. Only method, account, outcome and latency appear:
never params, keys, passwords or keyfiles."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import re
import sys
import time
from typing import Any

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        return json.dumps(entry, separators=(",", ":"))


class _DeferredQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread unformatted: formatting and the write() to stderr then happen
    off the event loop (the write releases the GIL), which matters at thousands of requests a second."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info:  # tracebacks are rendered here, while the exception is still alive
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def setup_logging(json_lines: bool, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    atexit.register(listener.stop)  # drains what is queued before the process exits
    root = logging.getLogger()
    root.handlers[:] = [_DeferredQueueHandler(records)]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def account_of(method: str, params: list[Any]) -> str:
    """The account a request acts for, as the caller named it, if it names one."""
    if not params:
        return "-"
    candidates: list[Any] = []
    if method in ("account_signTransaction", "eth_signTransaction") and isinstance(params[0], dict):
        candidates = [v for k, v in params[0].items() if k.lower() == "from"]
    elif method == "account_signData" and len(params) > 1:
        candidates = [params[1]]
    else:
        candidates = [params[0]]
    for value in candidates:
        if isinstance(value, str) and _ADDRESS.match(value):
            return value.lower()
    return "-"
