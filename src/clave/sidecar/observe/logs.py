"""Logging set-up and the one-line-per-request log. Only method, account, outcome and latency appear:
never params, keys, passwords or keyfiles."""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from typing import Any

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_METHOD_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_METHOD = 64
MAX_ERROR = 300

# The account a call made (imports): a handler sets it, the request log reads and clears it. A context
# variable: each call runs in its dispatcher task's context, so concurrent calls do not see each other's.
result_account: contextvars.ContextVar[str] = contextvars.ContextVar("result_account", default="")


def method_for_log(method: str) -> str:
    """A method name as the caller sent it, safe for a log line: at most MAX_METHOD characters, anything
    outside [A-Za-z0-9_.:-] replaced by '?'."""
    shown = _METHOD_CHARS.sub("?", method[:MAX_METHOD])
    return (shown + "…") if len(method) > MAX_METHOD else (shown or "?")


def log_text(text: str) -> str:
    """An error message for a log line: one line, bounded. Messages are what the caller is told, which
    never carries a secret."""
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + "…"


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

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None], writer: _WriterHandle | None = None) -> None:
        super().__init__(records)  # type: ignore[arg-type]
        self.writer = writer

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.writer is not None:
            self.writer.ensure()
        super().enqueue(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info:  # tracebacks are rendered here, while the exception is still alive
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class TextFormatter(logging.Formatter):
    """`2026-11-21 20:00:00,123 INFO name message`, with the date part rendered once per second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = f"{self._prefix},{int(record.msecs):03d} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _BatchWriter(threading.Thread):
    """Formats and writes queued records, all that have piled up in one write() and one flush().

    At thousands of requests a second, a write and a flush per line cost the sidecar more than the
    request itself; batching turns them into one system call per burst. After the first record of a burst
    the thread waits FLUSH_INTERVAL for more: waking for every record, as a plain blocking get() does at
    moderate load, costs a thread switch and a GIL handover per request, which showed up as the sidecar's
    CPU per request doubling at half load. Log lines are at most that much late.
    """

    FLUSH_INTERVAL = 0.05

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None], formatter: logging.Formatter) -> None:
        super().__init__(name="clave-log-writer", daemon=True)
        self.records = records
        self.formatter = formatter
        self.stopped = False  # set when stop() ended it on purpose

    def run(self) -> None:
        while True:
            record = self.records.get()
            if record is not None:
                time.sleep(self.FLUSH_INTERVAL)
            batch = [record]
            while len(batch) < 100_000:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            lines = [self._format(r) for r in batch if r is not None]
            if lines:
                try:
                    sys.stderr.write("\n".join(lines) + "\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass  # stderr closed: nothing sensible left to do with a log line
            if None in batch:
                self.stopped = True
                return

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self.formatter.format(record)
        except Exception as exc:  # one bad record (say, arguments that do not fit its format) is not fatal
            return f"log record from {record.name} ({record.pathname}:{record.lineno}) could not be formatted: {exc!r}"

    def stop(self) -> None:
        self.records.put(None)
        self.join(timeout=5)


class _WriterHandle:
    """The running writer thread; `ensure()` starts a new one if it died (say, on an error it could not
    catch), and the new one says so first: log lines are never silently dropped into a dead queue."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None], formatter: logging.Formatter) -> None:
        self.records = records
        self.formatter = formatter
        self.restarts = 0
        self._lock = threading.Lock()
        self.writer = _BatchWriter(records, formatter)
        self.writer.start()

    def ensure(self) -> None:
        writer = self.writer
        if writer.is_alive() or writer.stopped:
            return
        with self._lock:
            if self.writer is writer:
                self._restart()

    def _restart(self) -> None:
        self.restarts += 1
        self.writer = _BatchWriter(self.records, self.formatter)
        notice = logging.LogRecord(
            "clave.logs", logging.ERROR, __file__, 0,
            "the log writer thread died; restarted it (restart %d)", (self.restarts,), None,
        )
        self.records.put(notice)
        self.writer.start()

    def stop(self) -> None:
        self.writer.stop()


def setup_logging(json_lines: bool, level: int = logging.INFO) -> None:
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    writer = _WriterHandle(records, JsonFormatter() if json_lines else TextFormatter())
    atexit.register(writer.stop)  # drains what is queued before the process exits
    root = logging.getLogger()
    root.handlers[:] = [_DeferredQueueHandler(records, writer)]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def account_of(method: str, params: list[Any]) -> str:
    """The account a request acts for, as the caller named it, if it names one."""
    if not params:
        return "-"
    candidates: list[Any] = []
    if method in ("account_signTransaction", "eth_signTransaction", "eth_sendTransaction",
                  "wallet_sendTransaction") and isinstance(params[0], dict):
        candidates = [v for k, v in params[0].items() if k.lower() == "from"]
    elif method in ("account_signData", "personal_sign") and len(params) > 1:
        candidates = [params[1]]
    else:
        candidates = [params[0]]
    for value in candidates:
        if isinstance(value, str) and _ADDRESS.match(value):
            return value.lower()
    return "-"
