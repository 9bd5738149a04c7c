"""The wire, as geth's `rpc` package and clef defined it, against a running `clave up`.

- Fifty calls in flight on one IPC connection, slow ones first: answered as each finishes (out of
  order), every answer checked.
- Go JSON decoding: keys fold case (the last one wins), unknown keys are ignored, `null` is absent for
  pointer fields and an error for value fields; hexutil texts for bad quantities and data.
- JSON-RPC framing: `params` must be an array, optional trailing arguments, batches, notifications.
- HTTP as clef served it: GET health probe, 405/413/415, vhosts, CORS only when configured, bearer token.
- Chain ids, account_list, unknown accounts, every account_signData content type, Gnosis Safe, ecRecover.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import rlp as pyrlp
from coincurve import PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keyfile import create_keyfile_json
from eth_utils import keccak, to_checksum_address

from clave.core.envelope import seal_to
from clave.core.eth.transactions import encode_signed
from clave.core.eth.txjson import parse_geth_tx_json
from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation
from tests.accounts import new_account
from tests.clients import KNOWN_SECRETS, import_key
from tests.ipc_peer import IpcPeer, go_json, result_of
from tests.stack import ClaveProcess, RpcFailure, post_json

pytestmark = [pytest.mark.clients, pytest.mark.slow]  # `clave up` processes, one started here

RECIPIENT = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"
UNKNOWN = "0x" + "5a" * 20


def _failure(clave: ClaveProcess, method: str, *params: Any) -> tuple[int, str]:
    with pytest.raises(RpcFailure) as err:
        clave.rpc(method, *params)
    return err.value.code, err.value.message


def _reply(clave: ClaveProcess, message: Any) -> Any:
    status, reply = post_json(clave.url, message)
    assert status == 200, (status, reply)
    return reply


def _http(url: str, method: str = "POST", body: bytes | None = None, headers: dict[str, str] | None = None,
          path: str = "/") -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=hdrs)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def account(clave: ClaveProcess) -> str:
    return str(new_account(clave))


@pytest.fixture(scope="module")
def known(clave: ClaveProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    key = keccak(b"clave test_wire known key")
    return key, import_key(clave, key, tmp_path_factory.mktemp("wire-known"))


def _tx(account: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"from": to_checksum_address(account), "to": RECIPIENT, "gas": "0x5208",
                            "gasPrice": "0x3b9aca00", "value": "0x1", "nonce": "0x0", "input": "0x"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not Ellipsis}


def _signed(result: dict[str, Any], sender: str) -> dict[str, Any]:
    tx, y, r, s = parse_geth_tx_json(result["tx"])
    assert "0x" + encode_signed(tx, y, r, s).hex() == result["raw"]
    assert Account.recover_transaction(result["raw"]).lower() == sender.lower()
    return tx


# --- fifty calls in flight on one IPC connection ------------------------------------------------------


def _enclave_key(peer: IpcPeer, datadir: Path) -> bytes:
    """The enclave's per-boot RSA key, from a fresh attestation checked against the local root."""
    nonce = os.urandom(32)
    document = bytes.fromhex(peer.call("clave_attest", "0x" + nonce.hex())[2:])
    root = load_root((datadir / "nsm" / "root.pem").read_bytes())
    verified = verify_attestation(document, root=root, now_ms=int(time.time() * 1000),
                                  pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=nonce,
                                  max_age_ms=5 * 60 * 1000)
    assert verified.public_key is not None
    return verified.public_key


def test_fifty_in_flight_answered_out_of_order(clave: ClaveProcess, account: str) -> None:
    with IpcPeer(clave.ipc, timeout=120) as peer:
        # Slow first: a keyfile import whose scrypt (N=2^17) runs ~0.3 s in the enclave.
        secret = os.urandom(32)
        password = "fifty in flight"
        KNOWN_SECRETS.update({secret.hex(), password})
        keyfile = create_keyfile_json(secret, password.encode(), kdf="scrypt", iterations=1 << 17)
        envelope = seal_to(_enclave_key(peer, clave.datadir), {"keyfile": json.dumps(keyfile), "password": password})
        calls: list[tuple[Any, str, Any]] = []  # (future, kind, expected)

        def send(kind: str, method: str, params: list[Any], expected: Any = None) -> None:
            calls.append((peer.send(method, params), kind, expected))

        send("import", "clave_importKeyfile", ["0x" + envelope.hex(), False],
             Account.from_key(secret).address.lower())
        big = os.urandom(2 * 1024 * 1024)
        send("sign", "eth_sign", [account, "0x" + big.hex()], big)
        send("new", "account_new", [])
        for i in range(47):
            kind = ("tx0", "tx1", "tx2", "sign", "list")[i % 5]
            if kind == "tx0":
                send(kind, "account_signTransaction", [_tx(account, nonce=hex(i))], i)
            elif kind == "tx1":
                send(kind, "account_signTransaction", [_tx(account, nonce=hex(i), accessList=[])], i)
            elif kind == "tx2":
                send(kind, "account_signTransaction",
                     [_tx(account, nonce=hex(i), gasPrice=None, maxFeePerGas="0x77359400",
                          maxPriorityFeePerGas="0x1")], i)
            elif kind == "sign":
                message = f"message {i}".encode()
                send(kind, "eth_sign", [account, "0x" + message.hex()], message)
            else:
                send(kind, "account_list", [])
        assert len(calls) == 50
        replies = [future.result(120) for future, _, _ in calls]
        first_id = replies[0]["id"]
        order = [i for i in peer.arrivals if isinstance(i, int)]
        assert order.index(first_id) > 0, "the slow import held back the replies sent after it"
        assert len(order) >= 50 and order != sorted(order)
        for reply, (_, kind, expected) in zip(replies, calls, strict=True):
            result = result_of(reply)
            if kind == "import":
                assert result == expected
            elif kind == "new":
                assert result.startswith("0x") and len(result) == 42
            elif kind == "sign":
                assert Account.recover_message(encode_defunct(expected), signature=result).lower() == account
            elif kind == "list":
                assert account in result
            else:
                tx = _signed(result, account)
                assert tx["type"] == int(kind[-1]) and tx["nonce"] == expected
        assert replies[0]["result"] in clave.rpc("account_list")


# --- Go JSON decoding ------------------------------------------------------------------------------------


def test_keys_fold_case_and_the_last_one_wins(clave: ClaveProcess, account: str) -> None:
    args = {"FROM": to_checksum_address(account), "To": RECIPIENT, "GAS": "0x1", "gas": "0x5208",
            "gasprice": "0x2", "VALUE": "0x3", "Nonce": "0x4", "INPUT": "0x"}
    tx = _signed(clave.rpc("account_signTransaction", args), account)
    assert (tx["gas"], tx["gasPrice"], tx["value"], tx["nonce"]) == (0x5208, 2, 3, 4)
    # Exact duplicate keys: only raw JSON can carry them. Go assigns in document order.
    sender = to_checksum_address(account)
    raw = ('{"jsonrpc":"2.0","id":1,"method":"account_signTransaction","params":[{"from":"' + sender + '",'
           '"to":"' + RECIPIENT + '","gas":"0x1","gasPrice":"0x1","gas":"0x5208","value":"0x0","nonce":"0x0"}]}'
           ).encode()
    tx = _signed(_reply(clave, raw)["result"], account)
    assert tx["gas"] == 0x5208
    tx = _signed(clave.rpc("eth_signTransaction", {"From": account, "TO": RECIPIENT, "Gas": "0x5208",
                                                   "MAXFEEPERGAS": "0x2", "maxpriorityfeepergas": "0x1",
                                                   "nonce": "0x9"}), account)
    assert (tx["type"], tx["maxFeePerGas"], tx["nonce"]) == (2, 2, 9)


def test_unknown_keys_are_ignored(clave: ClaveProcess, account: str) -> None:
    args = _tx(account, type="0x12", v="0x1", r="0x2", s="0x3", hash="0x" + "ab" * 32, authorizationList=[{}],
               somethingElse={"nested": [1, 2, 3]})
    tx = _signed(clave.rpc("account_signTransaction", args), account)
    assert tx["type"] == 0  # inferred from the fields, never read from "type"


def test_null_is_absent_for_pointer_fields(clave: ClaveProcess, account: str) -> None:
    tx = _signed(clave.rpc("account_signTransaction", _tx(account, maxFeePerGas=None, maxPriorityFeePerGas=None,
                                                          accessList=None, chainId=None, data=None)), account)
    assert tx["type"] == 0 and tx["chainId"] == 31337
    code = b"\x60\x00" * 25
    tx = _signed(clave.rpc("account_signTransaction", _tx(account, to=None, value="0x0",
                                                          input="0x" + code.hex())), account)
    assert tx["to"] is None and tx["data"] == code


@pytest.mark.parametrize("field,go_type", [("value", "*hexutil.Big"), ("gas", "hexutil.Uint64"),
                                           ("nonce", "hexutil.Uint64")])
def test_null_for_a_value_field_is_an_argument_error(clave: ClaveProcess, account: str, field: str,
                                                     go_type: str) -> None:
    assert _failure(clave, "account_signTransaction", _tx(account, **{field: None})) == (
        -32602, f"invalid argument 0: json: cannot unmarshal non-string into Go struct field "
                f"SendTxArgs.{field} of type {go_type}")


def test_to_0x_is_an_argument_error(clave: ClaveProcess, account: str) -> None:
    want = (-32602, "invalid argument 0: hex string has length 0, want 40 for common.Address")
    assert _failure(clave, "account_signTransaction", _tx(account, to="0x")) == want
    assert _failure(clave, "eth_signTransaction", {"from": account, "to": "0x", "gas": "0x5208",
                                                   "gasPrice": "0x1", "nonce": "0x0"}) == want


@pytest.mark.parametrize("field,value,text,go_type", [
    ("gas", "0x05208", "hex number with leading zero digits", "hexutil.Uint64"),
    ("value", "0x01", "hex number with leading zero digits", "*hexutil.Big"),
    ("nonce", "0x", 'hex string "0x"', "hexutil.Uint64"),
    ("gasPrice", "1", "hex string without 0x prefix", "*hexutil.Big"),
    ("gas", 21000, "non-string", "hexutil.Uint64"),
    ("gas", "0x10000000000000000", "hex number > 64 bits", "hexutil.Uint64"),
    ("data", "0x123", "hex string of odd length", "hexutil.Bytes"),
    ("input", "0xzz", "invalid hex string", "hexutil.Bytes"),
])
def test_hexutil_errors(clave: ClaveProcess, account: str, field: str, value: Any, text: str, go_type: str) -> None:
    code, message = _failure(clave, "account_signTransaction", _tx(account, **{field: value}))
    assert code == -32602
    assert message == (f"invalid argument 0: json: cannot unmarshal {text} into Go struct field "
                       f"SendTxArgs.{field} of type {go_type}")


def test_empty_quantity_is_zero(clave: ClaveProcess, account: str) -> None:
    tx = _signed(clave.rpc("account_signTransaction", _tx(account, nonce="", value="")), account)
    assert (tx["nonce"], tx["value"]) == (0, 0)


def test_odd_length_data_elsewhere(clave: ClaveProcess, account: str) -> None:
    assert _failure(clave, "eth_sign", account, "0x123") == (
        -32602, "invalid argument 1: json: cannot unmarshal hex string of odd length into Go value of type hexutil.Bytes")
    assert _failure(clave, "account_signData", "text/plain", account, "0x123") == (-32000, "hex string of odd length")
    assert _failure(clave, "account_ecRecover", "0x1", "0x00") == (
        -32602, "invalid argument 0: json: cannot unmarshal hex string of odd length into Go value of type hexutil.Bytes")


# --- JSON-RPC framing ----------------------------------------------------------------------------------


def test_params_must_be_an_array(clave: ClaveProcess) -> None:
    for params in ({"a": 1}, "x", 1, True):
        reply = _reply(clave, {"jsonrpc": "2.0", "id": 9, "method": "account_version", "params": params})
        assert reply == {"jsonrpc": "2.0", "id": 9, "error": {"code": -32602, "message": "non-array args"}}
    for params in (None, []):  # null and [] are both "no arguments"
        reply = _reply(clave, {"jsonrpc": "2.0", "id": 9, "method": "account_version", "params": params})
        assert reply["result"] == "6.1.0"


def test_argument_counts_and_trailing_optionals(clave: ClaveProcess, account: str) -> None:
    abi_call = _tx(account, gasPrice="0x1", gas="0x333", input=None,
                   data="0x4401a6e40000000000000000000000000000000000000000000000000000000000000012")
    _signed(clave.rpc("account_signTransaction", abi_call), account)
    _signed(clave.rpc("account_signTransaction", abi_call, None), account)  # a trailing null = omitted
    _signed(clave.rpc("account_signTransaction", abi_call, "safeSend(address)"), account)
    assert _failure(clave, "account_signTransaction", abi_call, "transfer(address,uint256)")[1].startswith(
        "validation failed: Transaction contains data, but provided ABI signature could not be matched")
    assert _failure(clave, "account_signTransaction", abi_call, None, 1) == (
        -32602, "too many arguments, want at most 2")
    assert _failure(clave, "account_signTransaction") == (-32602, "missing value for required argument 0")
    assert _failure(clave, "account_version", "x") == (-32602, "too many arguments, want at most 0")
    assert _failure(clave, "account_signData", "text/plain", account) == (
        -32602, "missing value for required argument 2")


def test_batch_with_good_and_bad_members(clave: ClaveProcess, account: str) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "account_version"},
        {"jsonrpc": "2.0", "id": "two", "method": "no_such_method", "params": []},
        42,
        {"jsonrpc": "2.0", "method": "eth_sign", "params": [account, "0x00"]},  # notification: no reply
        {"jsonrpc": "2.0", "id": 3, "method": "eth_sign", "params": [account, "0xzz"]},
        {"jsonrpc": "2.0", "id": None, "method": "account_list"},
        {"jsonrpc": "2.0", "id": 5, "method": "eth_sign", "params": [UNKNOWN, "0x00"]},
    ]
    replies = _reply(clave, batch)
    assert [r["id"] for r in replies] == [1, "two", None, 3, None, 5]
    assert replies[0]["result"] == "6.1.0"
    assert replies[1]["error"] == {"code": -32601, "message": "the method no_such_method does not exist/is not available"}
    assert replies[2]["error"]["code"] == -32600
    assert replies[3]["error"]["code"] == -32602
    assert account in replies[4]["result"]
    assert replies[5]["error"] == {"code": -32000, "message": "unknown account"}


def test_notifications_get_no_reply(clave: ClaveProcess, account: str) -> None:
    status, headers, body = _http(clave.url, body=json.dumps(
        {"jsonrpc": "2.0", "method": "eth_sign", "params": [account, "0x00"]}).encode())
    assert status == 200 and body == b""
    with IpcPeer(clave.ipc) as peer:
        peer.send_raw(go_json({"jsonrpc": "2.0", "method": "account_version"}))
        peer.send_raw(go_json({"jsonrpc": "2.0", "method": "nope_nope", "params": []}))
        assert peer.call("account_version") == "6.1.0"
        time.sleep(0.2)
        assert peer.arrivals == [1] and peer.unmatched == []


def test_ipc_stream_without_newlines_and_split_writes(clave: ClaveProcess) -> None:
    """Go's decoder reads a stream of JSON values: no newline needed, any split across writes."""
    with IpcPeer(clave.ipc) as peer:
        futures = [peer.expect(i) for i in (1, 2, 3)]
        stream = b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "account_version"}).encode()
                          for i in (1, 2, 3))
        for i in range(0, len(stream), 7):
            peer.send_raw(stream[i:i + 7])
            time.sleep(0.001)
        assert [f.result(10)["result"] for f in futures] == ["6.1.0"] * 3


# --- HTTP ------------------------------------------------------------------------------------------------


def test_http_transport(clave: ClaveProcess) -> None:
    for path in ("/", "/anything/at/all"):
        status, _, body = _http(clave.url, "GET", path=path, headers={"Content-Type": ""})
        assert status == 200 and body == b""
    version = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "account_version"}).encode()
    for content_type in ("application/json", "application/json-rpc", "application/jsonrequest",
                         "application/json; charset=utf-8", "Application/JSON"):
        status, _, body = _http(clave.url, body=version, headers={"Content-Type": content_type}, path="/any")
        assert status == 200 and json.loads(body)["result"] == "6.1.0", content_type
    status, _, body = _http(clave.url, body=version, headers={"Content-Type": "text/plain"})
    assert (status, body) == (415, b"invalid content type, only application/json is supported\n")
    for method in ("PUT", "DELETE"):
        assert _http(clave.url, method, body=version)[0] == 405
    assert _http(clave.url, body=b"[" + b" " * (5 * 1024 * 1024) + b"]")[0] == 413
    status, headers, _ = _http(clave.url, body=version, headers={"Origin": "https://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in headers  # no CORS unless configured
    status, _, _ = _http(clave.url, body=version, headers={"Host": "LOCALHOST:8550"})
    assert status == 200
    status, _, body = _http(clave.url, body=version, headers={"Host": "evil.example"})
    assert (status, body) == (403, b"invalid host specified\n")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    datadir = tmp_path_factory.mktemp("guarded")
    token = "s3cret-token-for-the-wire-test"
    KNOWN_SECRETS.add(token)
    token_file = datadir.parent / "guarded-token"
    token_file.write_text(token + "\n")
    proc = ClaveProcess(datadir / "d", extra=["--http.vhosts", "signer.example,other.example",
                                              "--http.corsdomain", "https://app.example",
                                              "--http.auth-token-file", str(token_file)])
    proc.start()
    yield proc, token
    proc.stop()


def test_vhosts_cors_and_bearer_token(guarded: tuple[ClaveProcess, str]) -> None:
    proc, token = guarded
    version = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "account_version"}).encode()
    auth = {"Authorization": f"Bearer {token}"}
    assert _http(proc.url, body=version)[0] == 401
    assert _http(proc.url, body=version, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert _http(proc.url, body=version, headers={"Authorization": token})[0] == 401
    assert _http(proc.url, "GET", path="/upcheck")[0] == 200  # the health probes stay open
    # vhosts: names in the list (any case, any port), IP literals, no Host at all; nothing else.
    for host in ("signer.example", "OTHER.example:8550", "127.0.0.1", "[::1]:1"):
        status, _, body = _http(proc.url, body=version, headers={**auth, "Host": host})
        assert status == 200 and json.loads(body)["result"] == "6.1.0", host
    assert _http(proc.url, body=version, headers={**auth, "Host": "localhost"})[0] == 403
    # CORS for the configured origin only.
    status, headers, _ = _http(proc.url, body=version, headers={**auth, "Origin": "https://app.example"})
    assert status == 200 and headers.get("access-control-allow-origin") == "https://app.example"
    status, headers, _ = _http(proc.url, body=version, headers={**auth, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers
    # IPC is not behind the token.
    with IpcPeer(proc.ipc) as peer:
        assert peer.call("account_version", omit_params=True) == "6.1.0"


# --- chain ids, accounts -----------------------------------------------------------------------------------


def test_chain_ids(clave: ClaveProcess, account: str) -> None:
    for chain in (1, 31337):
        tx = _signed(clave.rpc("account_signTransaction", _tx(account, chainId=hex(chain), accessList=[])), account)
        assert tx["chainId"] == chain
        tx = _signed(clave.rpc("eth_signTransaction", {"from": account, "to": RECIPIENT, "gas": "0x5208",
                                                       "maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1",
                                                       "nonce": "0x0", "chainId": hex(chain)}), account)
        assert tx["chainId"] == chain
    legacy = _signed(clave.rpc("account_signTransaction", _tx(account, chainId="0x1")), account)
    assert legacy["chainId"] == 1  # EIP-155 with the requested (configured) chain
    assert _failure(clave, "account_signTransaction", _tx(account, chainId="0x5")) == (
        -32000, "requested chainid 5 does not match the configuration of the signer")
    assert _failure(clave, "eth_signTransaction", {"from": account, "to": RECIPIENT, "gas": "0x5208",
                                                   "gasPrice": "0x1", "nonce": "0x0", "chainId": "0x5"}) == (
        -32000, "chainId does not match node's (have=5, want=31337)")
    # clef's order: validation, then the chain id, then the account.
    assert _failure(clave, "account_signTransaction", _tx(account, chainId="0x5", to=RECIPIENT.lower())) == (
        -32000, "validation failed: Invalid checksum on recipient address")
    assert _failure(clave, "account_signTransaction", _tx(UNKNOWN, chainId="0x5")) == (
        -32000, "requested chainid 5 does not match the configuration of the signer")


def test_account_list_and_unknown_accounts(clave: ClaveProcess, account: str) -> None:
    listed = clave.rpc("account_list")
    assert account in listed
    assert all(a == a.lower() and a.startswith("0x") and len(a) == 42 for a in listed)
    assert clave.rpc("eth_accounts") == listed
    unknown = (-32000, "unknown account")
    assert _failure(clave, "account_signTransaction", _tx(UNKNOWN)) == unknown
    assert _failure(clave, "account_signData", "text/plain", UNKNOWN, "0x00") == unknown
    assert _failure(clave, "eth_sign", UNKNOWN, "0x00") == unknown
    assert _failure(clave, "eth_signTransaction", {"from": UNKNOWN, "to": RECIPIENT, "gas": "0x5208",
                                                   "gasPrice": "0x1", "nonce": "0x0"}) == unknown


# --- account_signData -------------------------------------------------------------------------------------


def _recover(digest: bytes, signature: str) -> str:
    sig = bytes.fromhex(signature[2:])
    v = sig[64] - 27 if sig[64] >= 27 else sig[64]
    public = PublicKey.from_signature_and_message(sig[:64] + bytes([v]), digest, hasher=None)
    return "0x" + keccak(public.format(compressed=False)[1:])[-20:].hex()


def test_sign_data_text_plain_and_unknown_types(clave: ClaveProcess, account: str) -> None:
    message = b"any content type but the three special ones is text/plain"
    data = "0x" + message.hex()
    reference = clave.rpc("account_signData", "text/plain", account, data)
    assert int(reference[-2:], 16) in (27, 28)
    assert Account.recover_message(encode_defunct(message), signature=reference).lower() == account
    assert clave.rpc("eth_sign", account, data) == reference
    for content_type in ("TEXT/PLAIN", "text/plain; charset=utf-8", "data/plain", "application/octet-stream",
                         "x/y", " text/plain "):
        assert clave.rpc("account_signData", content_type, account, data) == reference, content_type
    assert clave.rpc("account_signData", "text/plain", to_checksum_address(account), data) == reference
    assert _failure(clave, "account_signData", "", account, data) == (-32000, "mime: no media type")
    assert _failure(clave, "account_signData", "text/", account, data) == (-32000, "mime: expected token after slash")
    assert _failure(clave, "account_signData", "text/plain", account, 12) == (-32000, "wrong type float64")
    assert _failure(clave, "account_signData", "text/plain", account, "abcd") == (-32000, "hex string without 0x prefix")
    assert _failure(clave, "account_signData", "text/plain", account, "") == (-32000, "empty hex string")
    assert _failure(clave, "account_signData", 1, account, data) == (
        -32602, "invalid argument 0: json: cannot unmarshal non-string into Go value of type string")
    assert _failure(clave, "account_signData", "text/plain", "0x1234", data) == (
        -32602, "invalid argument 1: hex string has length 4, want 40 for common.Address")


def test_sign_data_validator(clave: ClaveProcess, account: str) -> None:
    validator = "0x" + "77" * 20
    message = b"\x01\x02 intended for one validator"
    signature = clave.rpc("account_signData", "data/validator", account,
                          {"address": validator, "message": "0x" + message.hex()})
    assert int(signature[-2:], 16) in (27, 28)
    digest = keccak(b"\x19\x00" + bytes.fromhex(validator[2:]) + message)
    assert _recover(digest, signature) == account
    cases = [
        ("0x00", "validator input is not a map[string]interface{}"),
        ({"message": "0x01"}, "validator address error: wrong type <nil>"),
        ({"address": "0x", "message": "0x01"}, "validator address is undefined"),
        ({"address": validator}, "message error: wrong type <nil>"),
        ({"address": validator, "message": "0x"}, "message is undefined"),
        ({"address": validator, "message": "01"}, "message error: hex string without 0x prefix"),
    ]
    for data, text in cases:
        for signer in (account, UNKNOWN):  # decoded before the account lookup
            assert _failure(clave, "account_signData", "data/validator", signer, data) == (-32000, text)


def _header(extra: bytes, number: int = 1234) -> list[Any]:
    return [b"\x01" * 32, b"\x1d" * 32, b"\x00" * 20, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, b"\x00" * 256,
            2, number, 8_000_000, 0, 1_700_000_000, extra, b"\x00" * 32, b"\x00" * 8]


def test_sign_data_clique_header(clave: ClaveProcess, account: str) -> None:
    vanity = b"clave".ljust(32, b"\x00")
    header = pyrlp.encode(_header(vanity))
    signature = clave.rpc("account_signData", "application/x-clique-header", account, "0x" + header.hex())
    assert int(signature[-2:], 16) in (0, 1)  # clique seals keep V as 0/1
    # The seal hash: keccak of the header RLP with extra = vanity (the 65-byte seal slot excluded).
    assert _recover(keccak(pyrlp.encode(_header(vanity))), signature) == account
    # Sealing it: the sealed header's seal hash is the same; a verifier recovers the sealer.
    sealed = vanity + bytes.fromhex(signature[2:])
    assert _recover(keccak(pyrlp.encode(_header(sealed[:-65]))), "0x" + sealed[32:].hex()) == account
    for data, code_text in [
        (12, "wrong type float64"),
        ("0xc0", "rlp: too few elements for types.Header"),
        ("0x" + pyrlp.encode(_header(vanity) + [7, b"\x05" * 32]).hex(), "unexpected withdrawal hash value in clique"),
    ]:
        for signer in (account, UNKNOWN):
            assert _failure(clave, "account_signData", "application/x-clique-header", signer, data) == (-32000, code_text)


def test_sign_data_typed(clave: ClaveProcess, known: tuple[bytes, str]) -> None:
    _, address = known
    typed = {"types": {"EIP712Domain": [{"name": "name", "type": "string"}],
                       "Note": [{"name": "text", "type": "string"}]},
             "primaryType": "Note", "domain": {"name": "wire"}, "message": {"text": "hi"}}
    signature = clave.rpc("account_signTypedData", address, typed)
    assert clave.rpc("account_signData", "data/typed", address, "0x" + json.dumps(typed).encode().hex()) == signature
    assert clave.rpc("eth_signTypedData_v4", address, typed) == signature
    assert _failure(clave, "account_signData", "data/typed", address, "0x" + b"{nope".hex()) == (
        -32000, "invalid character 'n' looking for beginning of object key string")
    # Decoding errors: an argument error as a parameter, a plain error inside account_signData.
    bad = {**typed, "types": []}
    text = "json: cannot unmarshal array into Go struct field TypedData.types of type apitypes.Types"
    assert _failure(clave, "account_signTypedData", address, bad) == (-32602, f"invalid argument 1: {text}")
    assert _failure(clave, "account_signData", "data/typed", address, "0x" + json.dumps(bad).encode().hex()) == (
        -32000, text)
    assert _failure(clave, "account_signTypedData", UNKNOWN, {**typed, "message": {}}) == (
        -32000, "provided data '<nil>' doesn't match type 'string'")


# --- Gnosis Safe --------------------------------------------------------------------------------------------

GNOSIS_CHANGELOG = {  # cmd/clef/extapi_changelog.md (6.1.0), the request as published
    "safe": "0x25a6c4BBd32B2424A9c99aEB0584Ad12045382B3", "to": "0xB372a646f7F05Cc1785018dBDA7EBc734a2A20E2",
    "value": "20000000000000000", "data": None, "operation": 0,
    "gasToken": "0x0000000000000000000000000000000000000000", "safeTxGas": 27845, "baseGas": 0, "gasPrice": "0",
    "refundReceiver": "0x0000000000000000000000000000000000000000", "nonce": 2, "executionDate": None,
    "submissionDate": "2020-09-15T21:54:49.617634Z", "modified": "2020-09-15T21:54:49.617634Z",
    "blockNumber": None, "transactionHash": None,
    "safeTxHash": "0x2edfbd5bc113ff18c0631595db32eb17182872d88d9bf8ee4d8c2dd5db6d95e2", "executor": None,
    "isExecuted": False, "isSuccessful": None, "ethGasPrice": None, "gasUsed": None, "fee": None, "origin": None,
    "dataDecoded": None, "confirmationsRequired": None,
    "confirmations": [{"owner": "0xAd2e180019FCa9e55CADe76E4487F126Fd08DA34",
                       "submissionDate": "2020-09-15T21:54:49.663299Z", "transactionHash": None,
                       "confirmationType": "CONFIRMATION",
                       "signature": "0x95a7250bb645f831c86defc847350e7faff815b2fb586282568e96cc859e39315876db20a2eed5f7a0412906ec5ab57652a6f645ad4833f345bda059b9da2b821c",
                       "signatureType": "EOA"}],
    "signatures": None,
}
GNOSIS_TEST = {  # signer/core/signed_data_test.go TestGnosisCustomData (fields clef reads)
    **{k: GNOSIS_CHANGELOG[k] for k in ("safe", "value", "data", "operation", "gasToken", "safeTxGas", "baseGas",
                                         "gasPrice", "refundReceiver")},
    "to": "0x9eE457023bB3De16D51A003a247BaEaD7fce313D", "nonce": 3,
    "safeTxHash": "0x28bae2bd58d894a1d9b69e5e9fde3570c4b98a6fc5499aefb54fb830137e831f",
}
GNOSIS_WITH_CHAIN = {  # TestGnosisCustomDataWithChainId
    "safe": "0x111dAE35D176A9607053e0c46e91F36AFbC1dc57", "to": "0x5592EC0cfb4dbc12D3aB100b257153436a1f0FEa",
    "value": "0", "data": "0xa9059cbb00000000000000000000000099d580d3a7fe7bd183b2464517b2cd7ce5a8f15a"
                          "0000000000000000000000000000000000000000000000000de0b6b3a7640000",
    "operation": 0, "gasToken": "0x0000000000000000000000000000000000000000", "safeTxGas": 0, "baseGas": 0,
    "gasPrice": "0", "refundReceiver": "0x0000000000000000000000000000000000000000", "nonce": 15,
    "safeTxHash": "0x6619dab5401503f2735256e12b898e69eb701d6a7e0d07abf1be4bb8aebfba29", "chainId": "4",
}
GNOSIS_KEYS = ["signature", "contractTransactionHash", "sender", "safe", "to", "value", "gasPrice", "data",
               "operation", "gasToken", "refundReceiver", "baseGas", "safeTxGas", "nonce", "safeTxHash"]


def test_gnosis_safe(clave: ClaveProcess, account: str) -> None:
    signer = to_checksum_address(account)
    for request in (GNOSIS_CHANGELOG, GNOSIS_TEST, GNOSIS_WITH_CHAIN):
        status, reply = post_json(clave.url, {"jsonrpc": "2.0", "id": 67, "method": "account_signGnosisSafeTx",
                                              "params": [signer, request]})
        result = reply["result"]
        with_chain = "chainId" in request
        assert list(result) == GNOSIS_KEYS + (["chainId"] if with_chain else [])
        assert result["contractTransactionHash"] == request["safeTxHash"]
        assert result["sender"] == signer
        assert _recover(bytes.fromhex(request["safeTxHash"][2:]), result["signature"]) == account
        assert int(result["signature"][-2:], 16) in (27, 28)
        assert (result["safe"], result["to"], result["value"], result["data"], result["nonce"]) == (
            request["safe"], request["to"], request["value"], request["data"], request["nonce"])
        if with_chain:
            assert result["chainId"] == "0x4"
    # No chainId and a hash that matches neither form: clef retries with its chain id, then refuses.
    wrong = {**GNOSIS_TEST, "safeTxHash": "0x" + "11" * 32}
    code, message = _failure(clave, "account_signGnosisSafeTx", signer, wrong)
    assert code == -32000 and message.startswith("mismatched safeTxHash; have 0x")
    assert message.endswith("want 0x" + "11" * 32)
    # With a chainId, a mismatch is not an error (clef's quirk): the computed digest is what is signed.
    quirk = {**GNOSIS_WITH_CHAIN, "safeTxHash": "0x" + "22" * 32}
    result = clave.rpc("account_signGnosisSafeTx", signer, quirk)
    assert result["contractTransactionHash"] == GNOSIS_WITH_CHAIN["safeTxHash"]
    assert result["safeTxHash"] == "0x" + "22" * 32
    # Validation as a transaction from the safe: a zero `to` is CRITICAL.
    zero_to = {**GNOSIS_TEST, "to": "0x0000000000000000000000000000000000000000"}
    assert _failure(clave, "account_signGnosisSafeTx", signer, zero_to) == (
        -32000, "validation failed: Transaction recipient is the zero address")


# --- account_ecRecover ----------------------------------------------------------------------------------------


def test_ec_recover(clave: ClaveProcess, account: str) -> None:
    data = "0x" + b"recover me".hex()
    signature = clave.rpc("account_signData", "text/plain", account, data)
    assert clave.rpc("account_ecRecover", data, signature) == account
    sig = bytes.fromhex(signature[2:])
    assert _failure(clave, "account_ecRecover", data, "0x" + sig[:64].hex()) == (
        -32000, "signature must be 65 bytes long")
    assert _failure(clave, "account_ecRecover", data, "0x" + (sig + b"\x00").hex()) == (
        -32000, "signature must be 65 bytes long")
    assert _failure(clave, "account_ecRecover", data, "0x" + (sig[:64] + bytes([sig[64] - 27])).hex()) == (
        -32000, "invalid Ethereum signature (V is not 27 or 28)")
    assert _failure(clave, "account_ecRecover", data) == (-32602, "missing value for required argument 1")
    assert _failure(clave, "account_ecRecover", data, 5) == (
        -32602, "invalid argument 1: json: cannot unmarshal non-string into Go value of type hexutil.Bytes")
    # Another message, same signature: recovers someone else, never an error.
    assert clave.rpc("account_ecRecover", "0x00", signature) != account


def _safe_tx_hash(request: dict[str, Any], chain_id: int) -> str:
    """SafeTx's EIP-712 digest by eth-account (an encoder clave does not use)."""
    from eth_account.messages import encode_typed_data

    safe_tx = [("to", "address"), ("value", "uint256"), ("data", "bytes"), ("operation", "uint8"),
               ("safeTxGas", "uint256"), ("baseGas", "uint256"), ("gasPrice", "uint256"), ("gasToken", "address"),
               ("refundReceiver", "address"), ("nonce", "uint256")]
    message = {name: request[name] for name, _ in safe_tx}
    message.update(value=int(message["value"]), gasPrice=int(message["gasPrice"]),
                   data=bytes.fromhex((message["data"] or "0x")[2:]))
    signable = encode_typed_data(full_message={
        "types": {"EIP712Domain": [{"name": "chainId", "type": "uint256"},
                                   {"name": "verifyingContract", "type": "address"}],
                  "SafeTx": [{"name": n, "type": k} for n, k in safe_tx]},
        "primaryType": "SafeTx", "domain": {"chainId": chain_id, "verifyingContract": request["safe"]},
        "message": message})
    return "0x" + keccak(b"\x19" + signable.version + signable.header + signable.body).hex()


def test_gnosis_safe_retries_every_configured_chain(clave: ClaveProcess, account: str) -> None:
    """clef retries a mismatched hash with its chain id; clave (--chainid 31337,1) tries each of its ids."""
    for chain in (31337, 1):
        request = {**GNOSIS_TEST, "safeTxHash": _safe_tx_hash(GNOSIS_TEST, chain)}
        result = clave.rpc("account_signGnosisSafeTx", to_checksum_address(account), request)
        assert result["chainId"] == hex(chain) and list(result)[-1] == "chainId"
        assert result["contractTransactionHash"] == request["safeTxHash"]
        assert _recover(bytes.fromhex(request["safeTxHash"][2:]), result["signature"]) == account
    other = {**GNOSIS_TEST, "safeTxHash": _safe_tx_hash(GNOSIS_TEST, 5)}
    code, message = _failure(clave, "account_signGnosisSafeTx", to_checksum_address(account), other)
    assert code == -32000 and message == (f"mismatched safeTxHash; have {_safe_tx_hash(GNOSIS_TEST, 31337)} "
                                          f"want {other['safeTxHash']}")


# --- framing edge cases -----------------------------------------------------------------------------------------


def test_batch_limits(clave: ClaveProcess) -> None:
    assert _reply(clave, []) == {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "empty batch"}}
    batch = [{"jsonrpc": "2.0", "method": "account_version"}] + [
        {"jsonrpc": "2.0", "id": i, "method": "account_version"} for i in range(7, 1008)]
    assert _reply(clave, batch) == [
        {"jsonrpc": "2.0", "id": 7, "error": {"code": -32600, "message": "batch too large"}}]
    replies = _reply(clave, batch[:1000])
    assert len(replies) == 999 and all(r["result"] == "6.1.0" for r in replies)


def test_json_go_does_not_accept(clave: ClaveProcess) -> None:
    for text in ('{"jsonrpc":"2.0","id":NaN,"method":"account_version"}',
                 '{"jsonrpc":"2.0","id":1,"method":"account_version","params":[Infinity]}'):
        assert _reply(clave, text.encode()) == {"jsonrpc": "2.0", "id": None,
                                                "error": {"code": -32700, "message": "parse error"}}
    with IpcPeer(clave.ipc) as peer:
        peer.send_raw(b'{"jsonrpc":"2.0","id":NaN,"method":"account_version"}\n')
        assert peer.call("account_version") == "6.1.0"
        assert peer.unmatched and peer.unmatched[0]["error"]["code"] == -32700


def test_missing_from_is_the_zero_address(clave: ClaveProcess) -> None:
    unknown = (-32000, "unknown account")
    args = {"to": RECIPIENT, "gas": "0x5208", "gasPrice": "0x1", "nonce": "0x0"}
    assert _failure(clave, "account_signTransaction", args) == unknown
    assert _failure(clave, "eth_signTransaction", args) == unknown
    assert _failure(clave, "account_signTransaction", {**args, "accessList": [{"address": RECIPIENT}]}) == (
        -32602, "invalid argument 0: missing required field 'storageKeys' for AccessTuple")


def test_rpc_modules(clave: ClaveProcess) -> None:
    """go-ethereum's server answers rpc_modules (clef: account and rpc); clave adds eth, and clave on IPC."""
    assert clave.rpc("rpc_modules", omit_params=True) == {"account": "1.0", "eth": "1.0", "rpc": "1.0"}
    with IpcPeer(clave.ipc) as peer:
        assert peer.call("rpc_modules", omit_params=True) == {"account": "1.0", "clave": "1.0", "eth": "1.0",
                                                              "rpc": "1.0"}
