"""Keyfile work (scrypt) on every core.

eth-keyfile runs scrypt through pycryptodome, which holds the GIL: worker threads would import keyfiles
one core at a time (about 0.8 s each here). A small pool of processes inside the enclave spreads
concurrent imports and exports over all cores. The workers receive the keyfile and password and return
the secret over a pipe between processes of the same enclave; nothing leaves it.

Each worker leaves no core file and ends as soon as the enclave process does, even when the enclave was
SIGKILLed and ran no clean-up (`link.process`): a worker sees passwords and plaintext keys.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from clave.link.process import end_with, forbid_core_dumps

T = TypeVar("T")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _get() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            # spawn, not fork: the enclave process has threads and an event loop that must not be cloned.
            _pool = ProcessPoolExecutor(
                max_workers=os.cpu_count() or 1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_start,
                initargs=(os.getpid(),),
            )
        return _pool


def worker_start(enclave_pid: int) -> None:
    """First thing in every worker: no core dumps (an exec makes a process dumpable again), and an end
    together with the enclave process."""
    forbid_core_dumps()
    end_with(enclave_pid)


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
