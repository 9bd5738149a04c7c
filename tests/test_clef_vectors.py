"""The published clef and geth vectors, through the wire of a running `clave up`.

- `clef/sign_requests`: the `_exp_fail` requests are refused with clef's `validation failed: …` text before
  any account lookup; the others pass validation (their sender's key is not published, so clave answers
  `unknown account`), and sign once the sender is an account clave holds.
- `clef/eip712`: `expfail_*` refused with the encoder's error (for an unknown account too: clef hashes
  before it looks the account up); the rest signed by account_signTypedData and account_signData
  ("data/typed"), byte-exact with an RFC 6979 signature over the digest.
- `clef/extapi_vectors.json`: request/response pairs byte-exact on the wire, the recover-only case, the
  version call as geth sends it, the importraw address.
- `geth/eip712/typed-data.json`: all 123 digests, signed over the wire by a key the test knows.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from clave.core.errors import RequestError
from clave.core.eth.transactions import encode_signed
from clave.core.eth.txjson import parse_geth_tx_json
from clave.core.eth.typed_data import TypedDataDecodeError, typed_data_preimage
from tests.clients import import_key
from tests.ipc_peer import IpcPeer, go_json
from tests.stack import ClaveProcess, RpcFailure, post_json
from tests.vectors import names, vector

pytestmark = pytest.mark.clients

SIGNER_CHAIN = 31337  # the session clave runs --chainid 31337,1: requests without chainId get 31337
UNKNOWN = "0x" + "5a" * 20

# clef's texts for the published refusals (signer/fourbyte/validation.go, first fee message only).
EXPECTED_REFUSALS = {
    "sign_1559_missing_field_exp_fail.json": "validation failed: Neither 'gasPrice' nor 'maxPriorityFeePerGas' specified.",
    "sign_1559_missing_maxfeepergas_exp_fail.json": "validation failed: Neither 'gasPrice' nor 'maxFeePerGas' specified.",
    "sign_bad_checksum_exp_fail.json": "validation failed: Invalid checksum on recipient address",
}


def _sign_digest(key: bytes, digest: bytes) -> str:
    """The signature clef returns for a digest: RFC 6979, low-S (libsecp256k1), V 27/28."""
    sig = PrivateKey(key).sign_recoverable(digest, hasher=None)
    return "0x" + (sig[:64] + bytes([sig[64] + 27])).hex()


def _error(reply: dict[str, Any]) -> tuple[int, str]:
    assert "error" in reply, reply
    return reply["error"]["code"], reply["error"]["message"]


@pytest.fixture(scope="module")
def known(clave: ClaveProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """An account clave holds whose private key this module knows."""
    key = keccak(b"clave test_clef_vectors known key")
    address = import_key(clave, key, tmp_path_factory.mktemp("known"))
    return key, address


@pytest.fixture(scope="module")
def peer(clave: ClaveProcess) -> Any:
    with IpcPeer(clave.ipc) as p:
        yield p


# --- clef/sign_requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", names("clef/sign_requests"))
def test_sign_request_vector(clave: ClaveProcess, known: tuple[bytes, str], name: str) -> None:
    path = vector(f"clef/sign_requests/{name}")
    text = path.read_bytes()
    request = json.loads(text)
    status, reply = post_json(clave.url, text)  # the file's own bytes, tabs and all
    assert status == 200 and reply["id"] == request["id"] and reply["jsonrpc"] == "2.0"
    if name.endswith("_exp_fail.json"):
        assert name in EXPECTED_REFUSALS, f"new refusal vector {name}: add clef's expected text"
        expected = EXPECTED_REFUSALS[name]
        assert _error(reply) == (-32000, expected)
    else:
        # Validation passed; the vector's sender is nobody clave holds.
        expected = ""
        assert _error(reply) == (-32000, "unknown account")

    # The same request from an account clave holds: refused with the same text, or signed as asked.
    _, address = known
    args = dict(request["params"][0])
    args["from"] = to_checksum_address(address)
    if expected:
        with pytest.raises(RpcFailure) as err:
            clave.rpc("account_signTransaction", args)
        assert (err.value.code, err.value.message) == (-32000, expected)
        return
    result = clave.rpc("account_signTransaction", args)
    tx, y_parity, r, s = parse_geth_tx_json(result["tx"])
    assert "0x" + encode_signed(tx, y_parity, r, s).hex() == result["raw"]
    assert Account.recover_transaction(result["raw"]).lower() == address
    assert tx["chainId"] == SIGNER_CHAIN
    assert tx["to"] == bytes.fromhex(args["to"][2:])
    for field in ("gas", "nonce", "value"):
        assert tx[field] == int(args[field], 16), field
    assert tx["data"] == bytes.fromhex(args.get("input", args.get("data", "0x"))[2:])
    if "maxFeePerGas" in args:
        assert tx["type"] == 2
        assert (tx["maxFeePerGas"], tx["maxPriorityFeePerGas"]) == (
            int(args["maxFeePerGas"], 16), int(args["maxPriorityFeePerGas"], 16))
    else:
        assert tx["type"] == 0 and tx["gasPrice"] == int(args["gasPrice"], 16)


# --- clef/eip712 ----------------------------------------------------------------------------------------


def _encoder_error(typed: Any) -> RequestError:
    with pytest.raises(RequestError) as err:
        typed_data_preimage(typed)
    return err.value


@pytest.mark.parametrize("name", names("clef/eip712"))
def test_clef_eip712_file(clave: ClaveProcess, known: tuple[bytes, str], name: str) -> None:
    path = vector(f"clef/eip712/{name}")
    text = path.read_bytes()
    typed = json.loads(text)
    key, address = known
    as_hex = "0x" + text.hex()
    if name.startswith("expfail_"):
        refusal = _encoder_error(typed)
        # As a positional argument, a JSON decoding failure is an argument error; encoding errors are plain.
        want = ((-32602, f"invalid argument 1: {refusal.message}") if isinstance(refusal, TypedDataDecodeError)
                else (-32000, refusal.message))
        for signer in (address, UNKNOWN):  # clef hashes before it looks the account up
            with pytest.raises(RpcFailure) as err:
                clave.rpc("account_signTypedData", signer, typed)
            assert (err.value.code, err.value.message) == want, name
            with pytest.raises(RpcFailure) as err:
                clave.rpc("account_signData", "data/typed", signer, as_hex)
            assert (err.value.code, err.value.message) == (-32000, refusal.message), name
        return
    digest = keccak(typed_data_preimage(typed))
    expected = _sign_digest(key, digest)
    assert clave.rpc("account_signTypedData", address, typed) == expected
    assert clave.rpc("account_signData", "data/typed", address, as_hex) == expected
    assert clave.rpc("eth_signTypedData_v4", address, text.decode()) == expected
    with pytest.raises(RpcFailure) as err:
        clave.rpc("account_signTypedData", UNKNOWN, typed)
    assert (err.value.code, err.value.message) == (-32000, "unknown account")


# --- clef/extapi_vectors.json -------------------------------------------------------------------------------


def _cases() -> list[dict[str, Any]]:
    return json.loads(vector("clef/extapi_vectors.json").read_text())["cases"]


def _raw_ipc(path: Path, payload: bytes) -> bytes:
    """Send one message on a fresh connection and return the reply bytes up to and including the newline."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(payload)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def _raw_http(url: str, payload: bytes) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def test_extapi_vectors_byte_exact(clave: ClaveProcess, tmp_path: Path) -> None:
    checked = 0
    for case in _cases():
        if "key" not in case or "request" not in case:
            continue
        import_key(clave, bytes.fromhex(case["key"]), tmp_path)
        request = case["request"]
        payload = go_json(request)
        if "expect_tx" in case or "expect_result" in case:
            result = case.get("expect_result") or {"raw": case["expect_raw"], "tx": case["expect_tx"]}
            want = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result},
                              separators=(",", ":")).encode() + b"\n"
            assert _raw_ipc(clave.ipc, payload) == want, case["name"]
            assert _raw_http(clave.url, payload) == want, case["name"]
        else:
            reply = json.loads(_raw_ipc(clave.ipc, payload))
            assert reply["id"] == request["id"]
            assert reply["result"]["raw"] == case["expect_raw"], case["name"]
            assert reply["result"]["tx"]["hash"] == case["expect_hash"], case["name"]
        if "expect_digest" in case:
            digest = bytes.fromhex(case["expect_digest"][2:])
            assert _sign_digest(bytes.fromhex(case["key"]), digest) == case["expect_result"]
        checked += 1
    assert checked >= 6


def test_extapi_recover_only_and_version(clave: ClaveProcess, tmp_path: Path) -> None:
    cases = {c["name"]: c for c in _cases()}
    recover = next(c for c in cases.values() if "expect_signer" in c)
    content_type, address, data = recover["request"]["params"]
    assert content_type == "data/plain"
    assert clave.rpc("account_ecRecover", data, recover["expect_result"]) == recover["expect_signer"].lower()
    # Unknown content types are text/plain: the request passes decoding and stops at the account lookup.
    reply = json.loads(_raw_ipc(clave.ipc, go_json(recover["request"])))
    assert reply["id"] == recover["request"]["id"] and _error(reply) == (-32000, "unknown account")

    version = next(c for c in cases.values() if c["name"] == "account_version")
    assert "params" not in version["request"]
    want = json.dumps({"jsonrpc": "2.0", "id": version["request"]["id"], "result": version["expect_result"]},
                      separators=(",", ":")).encode() + b"\n"
    assert _raw_ipc(clave.ipc, go_json(version["request"])) == want

    imported = next(c for c in cases.values() if c["name"].startswith("clef importraw"))
    import_key(clave, bytes.fromhex(imported["key"]), tmp_path)
    assert imported["address"].lower() in clave.rpc("account_list")


# --- geth/eip712/typed-data.json -----------------------------------------------------------------------------


def test_geth_typed_data_digests_over_the_wire(clave: ClaveProcess, known: tuple[bytes, str], peer: IpcPeer) -> None:
    cases = json.loads(vector("geth/eip712/typed-data.json").read_text())
    assert len(cases) == 123
    key, address = known
    typed_calls, data_calls, expected = [], [], {}
    for index, case in enumerate(cases):
        typed = {"types": case["types"], "primaryType": case["primaryType"], "domain": case["domain"],
                 "message": case["data"]}
        expected[index] = _sign_digest(key, bytes.fromhex(case["digest"][2:]))
        typed_calls.append({"jsonrpc": "2.0", "id": f"t{index}", "method": "account_signTypedData",
                            "params": [address, typed]})
        data_calls.append({"jsonrpc": "2.0", "id": f"d{index}", "method": "account_signData",
                           "params": ["data/typed", address, "0x" + json.dumps(typed).encode().hex()]})
    for prefix, batch in (("t", typed_calls), ("d", data_calls)):
        future = peer.expect(f"{prefix}0")
        peer.send_raw(go_json(batch))
        replies = future.result(60)
        assert [r["id"] for r in replies] == [m["id"] for m in batch]  # answered in order, all of them
        for reply in replies:
            index = int(reply["id"][1:])
            assert reply.get("result") == expected[index], (cases[index]["name"], reply)
