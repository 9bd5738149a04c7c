"""Process hygiene: children that end with their parent, and key-holding processes that leave no core.

`clave up` starts the enclave (which holds every key in plaintext) and the KMS emulator; `clave serve`
starts its HTTP workers; the enclave starts keyfile workers. A SIGKILLed parent runs no clean-up, so each
child arranges its own end:

- `die_with_parent()`, first thing in a child's entry point: the kernel sends it a signal when the parent
  exits (Linux `PR_SET_PDEATHSIG`). The parent names itself in `CLAVE_PARENT_PID` (`child_env()`), so a
  child whose parent died before the call notices and ends at once, and a process not started that way
  (systemd's units, the enclave image) is left alone.
- `end_with(pid)`, for the enclave's keyfile workers: `PR_SET_PDEATHSIG` follows the *thread* that forked,
  and multiprocessing spawns pool workers from whichever thread submits first, which may end long before
  the enclave does. A daemon thread waits on a pidfd of the enclave instead (polls where there is none).
- `forbid_core_dumps()`: `RLIMIT_CORE` 0 and `PR_SET_DUMPABLE` 0, so a crash writes no core file with keys
  in it, and processes of the same user cannot ptrace the process or read its memory through /proc.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import sys
import threading
import time

PARENT_ENV = "CLAVE_PARENT_PID"
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
POLL_INTERVAL = 0.2


def _prctl(option: int, value: int) -> int | None:
    """prctl(2) with one argument; None where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")
    return int(result)


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should call `die_with_parent()`: this process as its parent."""
    return {**(os.environ if base is None else base), PARENT_ENV: str(os.getpid())}


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """If a clave process started this one (`CLAVE_PARENT_PID`), have the kernel send `sig` when it exits,
    and end now with `sig` if it already has. Returns whether the parent death signal was set."""
    expected = os.environ.pop(PARENT_ENV, None)  # not for our own children: they have another parent
    if expected is None:
        return False
    if _prctl(PR_SET_PDEATHSIG, sig) is None:
        end_with(int(expected), sig)  # no prctl here: watch the parent instead
        return False
    if os.getppid() != int(expected):  # the parent died between fork() and the prctl above
        os.kill(os.getpid(), sig)
    return True


def end_with(pid: int, sig: int = signal.SIGKILL) -> None:
    """End this process with `sig` as soon as process `pid` exits (a daemon thread waits for it)."""
    try:
        handle: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), sig)  # already gone
        return
    except (AttributeError, OSError):
        handle = None  # no pidfd (old kernel or not Linux): poll instead

    def wait() -> None:
        if handle is not None:
            select.select([handle], [], [])  # readable once the process has exited
        else:
            while _alive(pid):
                time.sleep(POLL_INTERVAL)
        os.kill(os.getpid(), sig)

    threading.Thread(target=wait, name="clave-end-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return os.getppid() == pid  # our parent, or it died and the pid was reused


def forbid_core_dumps() -> None:
    """No core file, and no ptrace or /proc/PID/mem by processes of the same user (Linux)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)


def dumpable() -> bool | None:
    """This process's PR_GET_DUMPABLE; None where there is no prctl."""
    value = _prctl(PR_GET_DUMPABLE, 0)
    return None if value is None else value != 0
