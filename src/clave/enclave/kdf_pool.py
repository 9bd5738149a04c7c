"""Keyfile work (scrypt) on every core.

eth-keyfile runs scrypt through pycryptodome, which holds the GIL: worker threads would import keyfiles
one core at a time (about 0.8 s each here). A small pool of processes inside the enclave spreads
concurrent imports and exports over all cores. The workers receive the keyfile and password and return
the secret over a pipe between processes of the same enclave; nothing leaves it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _get() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            # spawn, not fork: the enclave process has threads and an event loop that must not be cloned.
            _pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def run(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` in the pool and wait for it (called from the enclave's worker threads)."""
    return _get().submit(fn, *args).result()


def warm() -> None:
    """Start every worker now (in the background), so the first import does not pay for spawning them."""
    pool = _get()
    workers = os.cpu_count() or 1
    threading.Thread(target=lambda: [f.result() for f in [pool.submit(time.sleep, 0.2) for _ in range(workers)]],
                     daemon=True).start()


def shutdown() -> None:
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown(cancel_futures=True)
            _pool = None
