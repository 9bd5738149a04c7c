"""`clave up`'s KMS emulator as the review attacked it: killed, it comes back where the sidecar expects it
(DATADIR/kms/endpoint.json), so an enclave restart after it still re-unseals; a process that takes its port
meanwhile is refused loudly (log line, /healthz last_error) and never believed.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.accounts import new_account
from tests.stack import ClaveProcess, RpcFailure, get_text, process_table

pytestmark = pytest.mark.slow  # starts `clave up`


def _children(parent: int, marker: str) -> list[int]:
    return [pid for pid, (ppid, state, cmdline) in process_table().items()
            if ppid == parent and marker in cmdline and state != "Z"]


def _child(clave: ClaveProcess, marker: str, *, not_pid: int = 0, timeout: float = 30) -> int:
    assert clave.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in _children(clave.proc.pid, marker) if p != not_pid]
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"no child {marker} of clave up:\n{clave.logs()[-3000:]}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate, timeout: float, what: str, clave: ClaveProcess) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}:\n{clave.logs()[-4000:]}"
        time.sleep(0.1)
    return time.monotonic() - start


def _signs(clave: ClaveProcess, address: str) -> bool:
    message = b"after the restarts"
    try:
        signature = clave.rpc("eth_sign", address, "0x" + message.hex())
    except RpcFailure:
        return False
    return bool(Account.recover_message(encode_defunct(message), signature=signature).lower() == address)


def _health(clave: ClaveProcess) -> dict[str, object]:
    return dict(json.loads(get_text(clave.url + "/healthz")[1]))


def _port(clave: ClaveProcess) -> int:
    return int(json.loads((clave.datadir / "kms" / "endpoint.json").read_text())["port"])


def test_emulator_killed_then_enclave_killed_signing_recovers(tmp_path: Path) -> None:
    clave = ClaveProcess(tmp_path / "d")
    clave.start()
    try:
        address = new_account(clave)
        assert _signs(clave, address)
        port = _port(clave)
        assert f"kms-emulator listening https://127.0.0.1:{port}" in clave.logs()
        creds = clave.datadir / "kms" / "credentials.json"
        assert oct(creds.stat().st_mode & 0o777) == "0o600"

        emulator = _child(clave, "clave.dev.kmsemu")
        os.kill(emulator, signal.SIGKILL)
        t0 = time.monotonic()
        _child(clave, "clave.dev.kmsemu", not_pid=emulator)
        back = _wait(lambda: _listening(port), 30, "the emulator back on its port", clave)
        print(f"emulator back on port {port} {back:.2f}s after SIGKILL")
        assert _port(clave) == port

        enclave = _child(clave, "clave.dev.enclave")
        os.kill(enclave, signal.SIGKILL)
        t1 = time.monotonic()
        recovered = _wait(lambda: _signs(clave, address), 60, "signing after the enclave restart", clave)
        print(f"signing again {recovered:.2f}s after the enclave's SIGKILL ({time.monotonic() - t0:.2f}s after "
              f"the emulator's)")
        assert t1 >= t0 and _health(clave)["ready"] is True
        assert "KMS Decrypt unreachable" not in clave.logs()
    finally:
        assert clave.stop() == 0


class _Squatter(http.server.BaseHTTPRequestHandler):
    """Another user's process on the emulator's port: KMS-shaped answers with a data key of its choosing."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Squatter.seen.append(self.headers.get("X-Amz-Target", ""))
        body = json.dumps({"KeyId": "k", "CiphertextForRecipient": "AAAA"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_taken_port_fails_loudly_and_the_squatter_is_not_believed(tmp_path: Path) -> None:
    clave = ClaveProcess(tmp_path / "d")
    clave.start()
    server: http.server.HTTPServer | None = None
    try:
        address = new_account(clave)
        port = _port(clave)
        emulator = _child(clave, "clave.dev.kmsemu")
        os.kill(emulator, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while server is None:  # take the port before `clave up` restarts the emulator
            try:
                server = http.server.HTTPServer(("127.0.0.1", port), _Squatter)
            except OSError:
                assert time.monotonic() < deadline, "could not take the emulator's port"
                time.sleep(0.01)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        _wait(lambda: "is in use by another process" in clave.logs(), 30, "the port-taken log line", clave)
        assert f"port 127.0.0.1:{port}" in clave.logs()
        # The keys are still unsealed (it signs), but /healthz already says what is wrong.
        _wait(lambda: "is in use by another process" in str(_health(clave).get("last_error")), 10,
              "/healthz last_error naming the taken port", clave)
        assert _health(clave)["ready"] is True and _signs(clave, address)

        os.kill(_child(clave, "clave.dev.enclave"), signal.SIGKILL)
        # The restarted enclave's TLS session to KMS reaches the squatter, which has no certificate under the
        # emulator's dev CA (it does not even speak TLS): no key, and /healthz names the endpoint.
        _wait(lambda: f"KMS endpoint 127.0.0.1:{port}" in str(_health(clave).get("last_error")), 60,
              "/healthz last_error naming the KMS endpoint", clave)
        health = _health(clave)
        assert health["ready"] is False and "TLS failed" in str(health["last_error"]), health
        assert not _Squatter.seen, "it never saw a request: the enclave does TLS first"
        with pytest.raises(RpcFailure):
            clave.rpc("eth_sign", address, "0x00")

        server.shutdown()
        server.server_close()
        server = None
        recovered = _wait(lambda: _signs(clave, address), 60, "signing once the port is free again", clave)
        print(f"signing again {recovered:.2f}s after the squatter left")
        assert _port(clave) == port
        _wait(lambda: _health(clave).get("last_error") is None, 10, "last_error cleared", clave)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        assert clave.stop() == 0
