"""How the `clave` command ends when something fails: one line on stderr naming what was wrong and what to
do, a non-zero exit status, never a traceback.

`OneLineParser` is argparse's parser with a one-line `error()` (argparse prints the whole usage first);
`explain()` turns an exception that escaped a command into that line and an exit status. Set
`CLAVE_DEBUG=1` to get the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import NoReturn

# What to do when the running clave refuses a management call, by the start of its message.
_RPC_REMEDIES: tuple[tuple[str, str], ...] = (
    ("enclave not ready", "wait until clave logs 'clave ready' (its keys are sealed until the enclave "
                          "gets the master key from KMS; see `clave up` / journalctl -u clave)"),
    ("unknown account", "see `clave account list` for the accounts this clave holds"),
    ("the method", "this clave is older than this command, or the method is IPC-only: use --ipcpath"),
)
_NETWORK_REMEDY = "check that clave is running (`clave up`, or systemctl status clave) and try again"


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: `clave up: --http.port 99999: … (see clave up --help)`."""

    def error(self, message: str) -> NoReturn:
        message = message.replace("\n", " ")
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def explain(exc: BaseException) -> tuple[str, int] | None:
    """The line to print (without the `clave: ` prefix) and the exit status for an exception a command
    raised; None for a broken pipe (the reader went away: nothing to print, nobody to read it)."""
    from clave.core.errors import ClaveError, InfraError
    from clave.sidecar.transports.ipc_client import RpcCallError

    if isinstance(exc, BrokenPipeError):
        return None
    if isinstance(exc, RpcCallError):
        for prefix, remedy in _RPC_REMEDIES:
            if exc.message.startswith(prefix):
                return f"{one_line(exc.message)}; {remedy}", 1
        return one_line(exc.message), 1
    if isinstance(exc, ClaveError):
        remedy = exc.remedy if isinstance(exc, InfraError) else ""
        return (f"{one_line(exc.message)}; {remedy}" if remedy else one_line(exc.message)), 1
    if isinstance(exc, OSError):
        return _os_error(exc), 1
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason}); check the file you named", 1
    return (f"unexpected {type(exc).__name__}: {one_line(str(exc))[:300]}; "
            "rerun with CLAVE_DEBUG=1 for the traceback and report it"), 1


def _os_error(exc: OSError) -> str:
    what = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
    if exc.errno == errno.EADDRINUSE:
        where = reason if "address already in use" in reason else f"address already in use ({reason})"
        return f"{what}{where}: another process listens there; stop it, or choose another port (--http.port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{what}{reason}: --http.addr is not an address of this host; use 127.0.0.1 or one of its addresses"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{what}{reason}; check the path"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{what}{reason}; check the file's owner and permissions (run as the user clave runs as)"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return f"connection to clave failed: {reason}; {_NETWORK_REMEDY}"
    if exc.errno == errno.ENOSPC:
        return f"{what}{reason}; free some space and retry"
    return f"{what}{reason}"


def fail(exc: BaseException) -> NoReturn:
    """Print the one line for `exc` and exit (re-raise with CLAVE_DEBUG=1 for an unexpected error)."""
    explained = explain(exc)
    if explained is None:  # broken pipe: send the rest of the output nowhere, as `head` expects
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no real stdout (tests)
            pass
        raise SystemExit(128 + 13)  # as a shell reports SIGPIPE
    line, code = explained
    if os.environ.get("CLAVE_DEBUG") and line.startswith("unexpected "):
        raise exc
    print(f"clave: {line}", file=sys.stderr)
    raise SystemExit(code)
