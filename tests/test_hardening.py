"""Hardening of the boundary's processes and endpoints, each shown by trying the attack:

- the enclave process and its keyfile workers leave no core file and cannot be read through /proc by a
  process of the same user without CAP_SYS_PTRACE (PR_SET_DUMPABLE 0, RLIMIT_CORE 0); systemd units
  set LimitCORE=0;
- everything clave creates in the datadir is private to its user, whatever the caller's umask;
- an HTTP client that sends nothing, half its headers, or half its body is disconnected after the read
  timeout, while other clients are served;
- `account_new` over HTTP only with a bearer token (IPC always); `clave_newAccount` takes at most
  100,000 per call.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from clave.sidecar.store.records import SqliteStore
from clave.sidecar.transports.ipc_client import IpcClient, RpcCallError
from tests.accounts import new_account
from tests.stack import ClaveProcess, RpcFailure, post_json

ROOT = Path(__file__).resolve().parents[1]
CAP_SYS_PTRACE = 19
PR_CAPBSET_DROP = 24

# Exec argv[1:] without CAP_SYS_PTRACE (dropped from the bounding set: an exec'd root process then holds
# every capability but that one).
_WITHOUT_PTRACE = (
    "import ctypes, os, sys\n"
    f"assert ctypes.CDLL(None, use_errno=True).prctl({PR_CAPBSET_DROP}, {CAP_SYS_PTRACE}, 0, 0, 0) == 0\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def _without_ptrace(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", _WITHOUT_PTRACE, *argv]


def _peekable(pid: int) -> bool:
    """Whether a process of the same user, with the same capabilities and none to override ptrace
    checks, may open /proc/PID/mem (PTRACE_MODE_ATTACH): yes for a dumpable process, no otherwise."""
    probe = f"import sys\ntry:\n    open('/proc/{pid}/mem', 'rb').close()\nexcept PermissionError:\n    sys.exit(13)\n"
    done = subprocess.run(_without_ptrace([sys.executable, "-c", probe]), capture_output=True, timeout=30)
    assert done.returncode in (0, 13), done
    return done.returncode == 0


class _WithoutPtrace(ClaveProcess):
    """`clave up`, and so all its children, without CAP_SYS_PTRACE: as the probe, so that the kernel's
    capability check passes and dumpability alone decides."""

    def command(self) -> list[str]:
        return _without_ptrace(super().command())


def _can_drop_ptrace() -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    caps = int(re.search(r"^CapEff:\s+([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(caps & (1 << CAP_SYS_PTRACE)) and bool(caps & (1 << 8))  # and CAP_SETPCAP to drop it


def _processes() -> dict[int, tuple[int, str]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                table[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, IndexError):
                continue
    return table


def _core_limit(pid: int) -> str:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max core file size"))
    return " ".join(line.split()[4:6])


@pytest.mark.slow
@pytest.mark.skipif(not _can_drop_ptrace(), reason="needs Linux, root with CAP_SYS_PTRACE and CAP_SETPCAP")
def test_key_holding_processes_leave_no_core_and_refuse_peeking(tmp_path: Path) -> None:
    clave = _WithoutPtrace(tmp_path / "d")
    clave.start()
    control = subprocess.Popen(_without_ptrace([sys.executable, "-c", "import time; time.sleep(60)"]))
    try:
        table = _processes()
        enclave = next(pid for pid, (_, cmd) in table.items()
                       if "clave.dev.enclave" in cmd and str(clave.datadir) in cmd)
        kms = next(pid for pid, (_, cmd) in table.items() if "clave.dev.kmsemu" in cmd and str(clave.datadir) in cmd)
        deadline = time.monotonic() + 10
        while not (workers := [pid for pid, (ppid, cmd) in _processes().items()
                               if ppid == enclave and "multiprocessing.spawn" in cmd]):
            assert time.monotonic() < deadline, "the enclave's keyfile workers start with the master key"
            time.sleep(0.1)
        for pid in (enclave, kms):
            assert _core_limit(pid) == "0 0", pid
            assert not _peekable(pid), f"process {pid} is dumpable: {_processes()[pid][1]}"
        for pid in workers:  # hardened by the pool's initializer, a moment after they appear
            assert _core_limit(pid) == "0 0", pid
            while _peekable(pid):
                assert time.monotonic() < deadline, f"keyfile worker {pid} stayed dumpable"
                time.sleep(0.2)
        assert _peekable(control.pid), "the probe must be able to open a dumpable process's memory"
    finally:
        control.kill()
        control.wait()
        clave.stop()


def test_units_forbid_core_dumps() -> None:
    """Every long-running unit gets LimitCORE=0, through the shared sandbox or by itself; the rendered
    units go through `systemd-analyze verify` in tests/test_ops.py."""
    assert "\nLimitCORE=0\n" in (ROOT / "systemd" / "sandbox.inc.j2").read_text()
    for template in sorted((ROOT / "systemd").glob("*.service.j2")):
        text = template.read_text()
        assert "include 'sandbox.inc.j2'" in text or "\nLimitCORE=0\n" in text, template.name


def _private(root: Path) -> list[str]:
    """Paths under root that anyone but the owner can read, write or enter."""
    return [f"{p.relative_to(root)} {stat.filemode(p.lstat().st_mode)}" for p in [root, *root.rglob("*")]
            if not p.is_symlink() and p.lstat().st_mode & 0o077]


def test_the_store_and_its_journal_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = SqliteStore(tmp_path / "keystore.sqlite")
    finally:
        os.umask(old)
    try:
        store.set_meta("x", b"y")
        assert (tmp_path / "keystore.sqlite-wal").exists() and (tmp_path / "keystore.sqlite-shm").exists()
        assert not _private(tmp_path), _private(tmp_path)  # while open: closing removes the -wal and -shm
    finally:
        store.close()


@pytest.mark.slow
def test_the_datadir_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what `clave up` inherits from a typical shell
    try:
        clave = ClaveProcess(tmp_path / "d", extra=["--http.workers", "2"])
        clave.start()
    finally:
        os.umask(old)
    try:
        address = new_account(clave)
        clave.rpc("eth_sign", address, "0x01")
        assert (clave.datadir / "keystore.sqlite-wal").exists() and list((clave.datadir / "logs").glob("*.log"))
        assert not _private(clave.datadir), _private(clave.datadir)
    finally:
        clave.stop()


# -- slow HTTP clients ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaveProcess]:
    clave = ClaveProcess(tmp_path_factory.mktemp("timeouts"), extra=["--http.read-timeout", "2"])
    clave.start()
    yield clave
    clave.stop()


def _closed_after(sock: socket.socket, since: float) -> tuple[float, bytes]:
    """Read until the server closes; (seconds since `since`, everything it sent)."""
    sock.settimeout(20)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return time.monotonic() - since, data


@pytest.mark.slow
def test_slow_clients_are_disconnected_while_others_are_served(quick: ClaveProcess) -> None:
    address = new_account(quick)
    head = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "account_list"}).encode()
    sends = {
        "nothing": b"",
        "half the headers": head[:30],
        "half the body": head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2],
    }
    sockets: dict[str, tuple[socket.socket, float]] = {}
    for name, data in sends.items():
        sock = socket.create_connection(("127.0.0.1", quick.port))
        sock.sendall(data)
        sockets[name] = (sock, time.monotonic())
    served = 0
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # meanwhile, others are served as usual
        signature = quick.rpc("eth_sign", address, "0x" + served.to_bytes(4, "big").hex())
        assert Account.recover_message(encode_defunct(served.to_bytes(4, "big")), signature=signature).lower() == address
        served += 1
    results = {}
    for name, (sock, since) in sockets.items():
        with sock:
            results[name] = _closed_after(sock, since)
    for name, (seconds, _) in results.items():
        assert 1.5 < seconds < 6, f"{name}: closed after {seconds:.1f} s with a 2 s read timeout"
    assert results["nothing"][1] == b"" and results["half the headers"][1] == b""
    assert results["half the body"][1].startswith(b"HTTP/1.1 408"), results["half the body"][1][:80]
    assert served > 10


@pytest.mark.slow
def test_a_whole_request_on_a_slow_connection_is_answered(quick: ClaveProcess) -> None:
    """Control: the deadline is for the request to arrive, not for the connection to be used. A client
    that sends its request within the timeout is answered, then idles within the keep-alive timeout."""
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "account_version"}).encode()
    request = (f"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", quick.port)) as sock:
        sock.sendall(request[:20])
        time.sleep(1.0)
        sock.sendall(request[20:])
        sock.settimeout(10)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200") and b'"result":"6.1.0"' in reply
        time.sleep(2.5)  # past the read timeout, idle after a complete request: still open
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


# -- account creation -----------------------------------------------------------------------------------


def test_account_new_over_http_needs_a_token(clave: ClaveProcess) -> None:
    with pytest.raises(RpcFailure) as refused:
        clave.rpc("account_new")
    assert refused.value.code == -32000 and "--http.auth-token-file" in refused.value.message
    address = new_account(clave)  # over IPC it works
    assert address in clave.rpc("account_list")


@pytest.mark.slow
def test_account_new_over_http_with_a_token_on_every_process(tmp_path: Path) -> None:
    token = "t0ken-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    clave = ClaveProcess(tmp_path / "d", extra=["--http.workers", "2", "--http.auth-token-file", str(token_file)])
    clave.start()
    bearer = {"Authorization": f"Bearer {token}"}

    def call(method: str, *params: object, headers: dict[str, str] = bearer) -> tuple[int, object]:
        return post_json(clave.url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, headers=headers)

    try:
        status, _ = call("account_new", headers={})
        assert status == 401
        created = []
        for _ in range(8):  # each on a new connection: both processes make some
            status, reply = call("account_new")
            assert status == 200 and "result" in reply, reply  # type: ignore[operator]
            created.append(reply["result"])  # type: ignore[index]
        with IpcClient(clave.ipc) as client:
            listed = {a["address"] for a in client.call("clave_listAccounts")}
        assert set(created) <= listed
        for i, address in enumerate(created):
            status, reply = call("eth_sign", address, f"0x{i:02x}")
            assert status == 200, reply
            signature = reply["result"]  # type: ignore[index]
            assert Account.recover_message(encode_defunct(bytes([i])), signature=signature).lower() == address
    finally:
        clave.stop()


def test_new_account_count_is_capped(clave: ClaveProcess) -> None:
    with IpcClient(clave.ipc) as client:
        before = len(client.call("clave_listAccounts"))
        with pytest.raises(RpcCallError) as refused:
            client.call("clave_newAccount", {"count": 100_001})
        assert refused.value.code == -32602 and "at most 100,000" in refused.value.message
        assert len(client.call("clave_listAccounts")) == before
