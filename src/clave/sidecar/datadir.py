"""One clave per data directory: an advisory lock taken before anything in the directory is touched."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from clave.core.errors import InfraError


class DatadirBusy(InfraError):
    """Another clave holds the data directory's lock."""

    remedy = "stop the other clave first, or give this one another --datadir"


@contextlib.contextmanager
def datadir_lock(datadir: Path) -> Iterator[None]:
    datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = datadir / "clave.lock"
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DatadirBusy(f"another clave is already running on {datadir} (lock {lock_path} is held)") from None
    try:
        yield
    finally:
        handle.close()
