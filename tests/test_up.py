"""`clave up` end to end: readiness, accounts, signing over HTTP and IPC, restart, bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.accounts import new_account
from tests.stack import ClaveProcess, RpcFailure, free_port, post_json

pytestmark = pytest.mark.slow  # every test here starts `clave up` (or other processes) itself


def ipc_call(path: Path, message: dict | list | bytes, *, timeout: float = 30) -> object:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(message if isinstance(message, bytes) else json.dumps(message).encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            try:
                return json.loads(buf)
            except ValueError:
                continue
    return json.loads(buf)


def test_ready_line_and_version(clave: ClaveProcess) -> None:
    assert "--signer=" in clave.ready_line and str(clave.ipc) in clave.ready_line
    # geth omits params for calls without arguments
    assert clave.rpc("account_version", omit_params=True) == "6.1.0"
    reply = ipc_call(clave.ipc, {"jsonrpc": "2.0", "id": 1, "method": "account_version"})
    assert reply == {"jsonrpc": "2.0", "id": 1, "result": "6.1.0"}
    assert oct(clave.ipc.stat().st_mode & 0o777) == "0o600"


def test_version_within_ten_seconds(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = ClaveProcess(tmp_path / "fresh")
    proc.start(timeout=10)
    try:
        assert proc.rpc("account_version") == "6.1.0"
        print(f"clave up answered account_version after {time.monotonic() - start:.2f}s")
    finally:
        proc.stop()


def test_account_new_and_list(clave: ClaveProcess) -> None:
    result = clave.cli("account", "new")
    assert result.returncode == 0, result.stderr
    address = result.stdout.split()[-1]
    assert address.startswith("0x") and len(address) == 42 and address == address.lower()
    assert address in clave.rpc("account_list")
    assert address in clave.rpc("eth_accounts")
    listed = clave.cli("account", "list")
    assert address[2:] in listed.stdout.lower() and "origin=generated" in listed.stdout
    created = new_account(clave)
    assert created in clave.rpc("account_list")


def test_eth_sign_recovers(clave: ClaveProcess) -> None:
    address = new_account(clave)
    message = b"clave says hello"
    signature = clave.rpc("eth_sign", address, "0x" + message.hex())
    assert int(signature[-2:], 16) in (27, 28)
    assert Account.recover_message(encode_defunct(message), signature=signature).lower() == address
    via_clef = clave.rpc("account_signData", "text/plain", address, "0x" + message.hex())
    assert via_clef == signature
    assert clave.rpc("account_ecRecover", "0x" + message.hex(), signature) == address


def test_ipc_batch_and_concurrency(clave: ClaveProcess) -> None:
    address = new_account(clave)
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_sign", "params": [address, "0x" + bytes([i]).hex()]}
        for i in range(20)
    ]
    replies = ipc_call(clave.ipc, batch)
    assert isinstance(replies, list) and sorted(r["id"] for r in replies) == list(range(20))
    for reply in replies:
        data = bytes([reply["id"]])
        assert Account.recover_message(encode_defunct(data), signature=reply["result"]).lower() == address


@pytest.mark.parametrize(
    "payload,code",
    [
        (b"{not json", -32700),
        ({"jsonrpc": "2.0", "id": 1, "method": "nope_nope", "params": []}, -32601),
        ({"jsonrpc": "2.0", "id": 1, "method": "account_version", "params": {"a": 1}}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "eth_sign", "params": ["0x12"]}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "eth_sign", "params": ["0x12", "0x00"]}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "eth_sign", "params": ["0x" + "11" * 20, "zz"]}, -32602),
        ([], -32600),
        ({"id": 1, "method": "account_version"}, -32600),
    ],
)
def test_bad_requests_get_json_rpc_errors(clave: ClaveProcess, payload: object, code: int) -> None:
    status, reply = post_json(clave.url, payload)
    assert status == 200
    assert reply["error"]["code"] == code, reply
    assert clave.rpc("account_version") == "6.1.0"  # still serving


def test_unknown_account(clave: ClaveProcess) -> None:
    with pytest.raises(RpcFailure) as err:
        clave.rpc("eth_sign", "0x" + "ab" * 20, "0x00")
    assert (err.value.code, err.value.message) == (-32000, "unknown account")


def test_http_transport_rules(clave: ClaveProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(clave.url, timeout=10) as response:  # GET, empty body: health probe
        assert response.status == 200
    status, _ = post_json(clave.url, b"x" * (5 * 1024 * 1024 + 10))
    assert status == 413
    request = urllib.request.Request(clave.url, data=b"{}", method="POST")
    request.add_header("Content-Type", "text/plain")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 415
    status, _ = post_json(clave.url, {"jsonrpc": "2.0", "id": 1, "method": "account_version"},
                          headers={"Host": "evil.example"})
    assert status == 403
    assert clave.rpc("account_version") == "6.1.0"


def test_management_methods_are_ipc_only(clave: ClaveProcess) -> None:
    with pytest.raises(RpcFailure) as err:
        clave.rpc("clave_listAccounts")
    assert err.value.code == -32601


def test_second_up_on_same_datadir_fails(clave: ClaveProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clave.cli", "up", "--datadir", str(clave.datadir), "--http.port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "already running" in result.stderr
    assert clave.rpc("account_version") == "6.1.0"
