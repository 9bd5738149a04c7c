"""The RPC methods (`build_methods`) in-process, on the real signer, enclave service and KMS emulator
(tests/inproc.py), called through the dispatcher as IPC and HTTP hand them over.

Every signature is checked with eth-account, not with clave's code: it must recover to the account that
was asked to sign. Refusals are checked by JSON-RPC code and geth's or clef's exact text.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import rlp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_intended_validator, encode_typed_data
from eth_keyfile import create_keyfile_json, decode_keyfile_json
from eth_utils import keccak, to_checksum_address

from clave.core.envelope import seal_to
from clave.enclave import kdf_pool
from clave.enclave.server import SLOW_METHODS
from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation
from tests.inproc import Stack, running_stack
from tests.stack import RpcFailure
from tests.test_validator import opera_decrypt, uncompressed_public_key

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one stack for the module, on one event loop

CHAIN = 31337  # the stack's first chain id: requests without chainId sign for it
TO = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"
UNKNOWN = "0x" + "5a" * 20
TYPED = {
    "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"}],
        "Mail": [{"name": "from", "type": "address"}, {"name": "contents", "type": "string"},
                 {"name": "tags", "type": "bytes32[]"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "clave test", "chainId": CHAIN},
    "message": {"from": TO, "contents": "hello ✓", "tags": ["0x" + "01" * 32, "0x" + "02" * 32]},
}


ADMIN = Account.from_key(keccak(b"clave test_methods admin"))  # authorizes exports (README "Accounts")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    admins = [bytes.fromhex(ADMIN.address[2:])]
    async with running_stack(tmp_path_factory.mktemp("methods"), admins=admins) as running:
        yield running


async def _export(stack: Stack, address: str, envelope: str) -> Any:
    return await stack.export(address, envelope, ADMIN)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def account(stack: Stack) -> str:
    return str(await stack.rpc("account_new"))


async def _failure(stack: Stack, method: str, *params: Any, transport: str = "ipc") -> tuple[int, str]:
    with pytest.raises(RpcFailure) as err:
        await stack.rpc(method, *params, transport=transport)
    return err.value.code, err.value.message


async def _enclave_key(stack: Stack) -> bytes:
    """The enclave's boot key, from a fresh attestation checked here (as the CLI does before it seals)."""
    nonce = os.urandom(32)
    document = bytes.fromhex((await stack.rpc("clave_attest", "0x" + nonce.hex()))[2:])
    verified = verify_attestation(document, root=load_root(stack.root_pem), now_ms=int(time.time() * 1000),
                                  pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=nonce)
    assert verified.public_key is not None
    return verified.public_key


def _recovered_message(signable: Any, signature: str) -> str:
    return str(Account.recover_message(signable, signature=bytes.fromhex(signature[2:]))).lower()


# --- accounts ---------------------------------------------------------------------------------------------


async def test_version_and_modules(stack: Stack) -> None:
    assert await stack.rpc("account_version") == "6.1.0"
    assert await stack.rpc("rpc_modules", transport="http") == {"account": "1.0", "eth": "1.0", "rpc": "1.0"}
    assert await stack.rpc("rpc_modules") == {"account": "1.0", "clave": "1.0", "eth": "1.0", "rpc": "1.0"}


async def test_new_accounts_are_listed_stored_and_described(stack: Stack, account: str) -> None:
    assert len(account) == 42 and account == account.lower()
    made = await stack.rpc("clave_newAccount", {"count": 2, "exportable": True})
    assert len(made) == 2 and len(set(made)) == 2
    listed = await stack.rpc("account_list")
    assert {account, *made} <= set(listed)
    assert await stack.rpc("eth_accounts", transport="http") == listed
    described = {a["address"]: a for a in await stack.rpc("clave_listAccounts")}
    assert described[account]["origin"] == "generated" and described[account]["exportable"] is False
    assert described[made[0]]["exportable"] is True and abs(described[made[0]]["created"] - time.time()) < 120
    stored = {"0x" + r.address.hex(): r for r in stack.store.records()}
    assert {account, *made} <= set(stored)
    assert stored[made[1]].exportable is True and stored[account].origin == "generated"


async def test_new_account_options_are_checked(stack: Stack) -> None:
    for options in ({"count": 0}, {"count": -1}, {"count": "2"}, {"count": True}):
        assert await _failure(stack, "clave_newAccount", options) == (
            -32602, "invalid argument 0: count must be a positive integer")
    assert await _failure(stack, "clave_newAccount", [1]) == (-32602, "invalid argument 0: expected an object")


# --- messages ---------------------------------------------------------------------------------------------


async def test_eth_sign_recovers_to_the_account(stack: Stack, account: str) -> None:
    for data in (b"", b"\x00", b"hello clave", bytes(range(256))):
        signature = await stack.rpc("eth_sign", account, "0x" + data.hex(), transport="http")
        assert len(signature) == 132 and signature[-2:] in ("1b", "1c"), "V is 27 or 28"
        assert _recovered_message(encode_defunct(primitive=data), signature) == account
    upper = to_checksum_address(account)
    signature = await stack.rpc("eth_sign", upper, "0x68690a")
    assert _recovered_message(encode_defunct(primitive=b"hi\n"), signature) == account


async def test_account_sign_data_content_types(stack: Stack, account: str) -> None:
    text = "0x" + b"plain text".hex()
    plain = await stack.rpc("account_signData", "text/plain", to_checksum_address(account), text)
    assert _recovered_message(encode_defunct(primitive=b"plain text"), plain) == account
    validator = "0x" + "ab" * 20
    signed = await stack.rpc("account_signData", "data/validator", account,
                             {"address": validator, "message": "0x0102"})
    intended = encode_intended_validator(to_checksum_address(validator), primitive=b"\x01\x02")
    assert _recovered_message(intended, signed) == account
    typed = await stack.rpc("account_signData", "data/typed", account, "0x" + json.dumps(TYPED).encode().hex())
    assert _recovered_message(encode_typed_data(full_message=TYPED), typed) == account


async def test_typed_data_both_ways_recover_and_agree(stack: Stack, account: str) -> None:
    clef = await stack.rpc("account_signTypedData", account, TYPED)
    node = await stack.rpc("eth_signTypedData_v4", account, json.dumps(TYPED))
    node_object = await stack.rpc("eth_signTypedData_v4", account, TYPED)
    assert clef == node == node_object, "RFC 6979: one digest, one signature"
    assert _recovered_message(encode_typed_data(full_message=TYPED), clef) == account


async def test_ec_recover_checks_signatures_from_eth_account(stack: Stack) -> None:
    key = keccak(b"clave test_methods ecrecover")
    signed = Account.sign_message(encode_defunct(primitive=b"recover me"), key)
    address = await stack.rpc("account_ecRecover", "0x" + b"recover me".hex(), "0x" + bytes(signed.signature).hex())
    assert address == Account.from_key(key).address.lower()
    assert await _failure(stack, "account_ecRecover", "0x00", "0x00") == (-32000, "signature must be 65 bytes long")


# --- transactions -----------------------------------------------------------------------------------------


async def test_clef_sign_transaction_recovers_and_defaults_to_the_first_chain(stack: Stack, account: str) -> None:
    args = {"from": to_checksum_address(account), "to": TO, "gas": "0x5208", "maxFeePerGas": hex(30 * 10**9),
            "maxPriorityFeePerGas": hex(10**9), "nonce": "0x7", "value": hex(10**15)}
    result = await stack.rpc("account_signTransaction", args)
    raw = bytes.fromhex(result["raw"][2:])
    assert raw[0] == 2
    assert Account.recover_transaction(raw).lower() == account
    tx = result["tx"]
    assert int(tx["chainId"], 16) == CHAIN and int(tx["nonce"], 16) == 7 and tx["to"].lower() == TO.lower()
    assert tx["hash"] == "0x" + keccak(raw).hex()
    assert int(tx["value"], 16) == 10**15


async def test_eth_sign_transaction_types(stack: Stack, account: str) -> None:
    # The eth_* namespace answers a bare raw transaction (as anvil, hardhat and Web3Signer do).
    legacy = await stack.rpc("eth_signTransaction", {"from": account, "to": TO, "gas": "0x5208",
                                                     "gasPrice": hex(10**9), "nonce": "0x0", "chainId": "0x1"})
    raw = bytes.fromhex(legacy[2:])
    assert raw[0] >= 0xC0, "legacy: an RLP list"
    assert Account.recover_transaction(raw).lower() == account
    assert rlp.decode(raw)[6] in (b"\x25", b"\x26"), "EIP-155 on chain 1: v is 37 or 38"
    # Without `type`, geth's rules: with gasPrice the access list is dropped (legacy).
    access_list = [{"address": TO, "storageKeys": ["0x" + "00" * 31 + "01"]}]
    dropped = await stack.rpc("eth_signTransaction", {
        "from": account, "to": TO, "gas": "0x6000", "gasPrice": hex(10**9), "nonce": "0x1", "accessList": access_list})
    raw = bytes.fromhex(dropped[2:])
    assert raw[0] >= 0xC0 and Account.recover_transaction(raw).lower() == account
    # clef's account_signTransaction does: gasPrice and an access list make type 1.
    access = await stack.rpc("account_signTransaction", {
        "from": account, "to": TO, "gas": "0x6000", "gasPrice": hex(10**9), "nonce": "0x1", "accessList": access_list})
    raw = bytes.fromhex(access["raw"][2:])
    assert raw[0] == 1 and Account.recover_transaction(raw).lower() == account
    assert int(access["tx"]["chainId"], 16) == CHAIN and len(access["tx"]["accessList"]) == 1


async def test_transaction_refusals(stack: Stack, account: str) -> None:
    bad_checksum = {"from": account, "to": TO[:-2] + "c7", "gas": "0x5208",  # one letter's case changed
                    "gasPrice": hex(10**9), "nonce": "0x0", "value": "0x1"}
    assert await _failure(stack, "account_signTransaction", bad_checksum) == (
        -32000, "validation failed: Invalid checksum on recipient address")
    expensive = {"from": account, "to": TO, "gas": "0x5208", "gasPrice": hex(10**17), "nonce": "0x0"}
    assert await _failure(stack, "eth_signTransaction", expensive) == (
        -32000, "tx fee (2100.00 ether) exceeds the configured cap (1.00 ether)")
    no_from = {"to": TO, "gas": "0x5208", "gasPrice": hex(10**9), "nonce": "0x0"}
    assert await _failure(stack, "eth_signTransaction", no_from) == (-32000, "unknown account")
    assert await _failure(stack, "account_signTransaction", {**bad_checksum, "to": TO, "from": UNKNOWN}) == (
        -32000, "unknown account")
    assert await _failure(stack, "account_signTransaction", {"from": account}, 5) == (
        -32602, "invalid argument 1: json: cannot unmarshal non-string into Go value of type string")


# --- argument and account errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        ("eth_sign", ["0x12", "0x00"], (-32602, "invalid argument 0: hex string has length 2, want 40 for common.Address")),
        ("eth_sign", [UNKNOWN], (-32602, "missing value for required argument 1")),
        ("eth_sign", [UNKNOWN, "0x00"], (-32000, "unknown account")),
        ("eth_sign", [UNKNOWN, "0x00", 1], (-32602, "too many arguments, want at most 2")),
        ("account_signTypedData", [UNKNOWN, "x"],
         (-32602, "invalid argument 1: json: cannot unmarshal string into Go value of type apitypes.TypedData")),
        ("account_signTypedData", [UNKNOWN, TYPED], (-32000, "unknown account")),
        ("eth_signTypedData_v4", [UNKNOWN, "{x"], (-32602, "invalid argument 1: typed data string is not valid JSON")),
        ("account_signData", [5, UNKNOWN, "0x00"],
         (-32602, "invalid argument 0: json: cannot unmarshal non-string into Go value of type string")),
        ("account_signData", ["data/validator", UNKNOWN, "0x00"], (-32000, "validator input is not a map[string]interface{}")),
        ("clave_attest", ["0x00"], (-32602, "invalid argument 0: nonce must be at least 16 bytes")),
        ("no_such_method", [], (-32601, "the method no_such_method does not exist/is not available")),
    ],
)
async def test_bad_arguments_and_unknown_accounts(stack: Stack, method: str, params: list[Any],
                                                  error: tuple[int, str]) -> None:
    assert await _failure(stack, method, *params) == error


@pytest.mark.parametrize("method", ["clave_attest", "clave_listAccounts", "clave_newAccount", "clave_importKeyfile",
                                    "clave_exportChallenge", "clave_exportKeyfile", "clave_validatorNew",
                                    "clave_validatorKeyfile"])
async def test_management_methods_are_ipc_only(stack: Stack, method: str) -> None:
    params = {"clave_attest": ["0x" + "00" * 16], "clave_importKeyfile": ["0x00"],
              "clave_exportKeyfile": [UNKNOWN, "0x00", "0x00", "0x00"], "clave_exportChallenge": [UNKNOWN],
              "clave_validatorNew": ["0x00"],
              "clave_validatorKeyfile": ["0xc0", "0x00"]}.get(method, [])
    assert await _failure(stack, method, *params, transport="http") == (
        -32601, f"the method {method} does not exist/is not available")
    with pytest.raises(RpcFailure) as err:
        await stack.http_rpc(method, *params)
    assert err.value.code == -32601 and err.value.status == 200


# --- attestation, import and export -----------------------------------------------------------------------


async def test_attestation_carries_the_nonce_and_the_enclaves_boot_key(stack: Stack) -> None:
    public_key = await _enclave_key(stack)
    hello = await stack.signer.client.call("hello")
    assert public_key == hello["public_key"]
    nonce = os.urandom(16)
    document = bytes.fromhex((await stack.rpc("clave_attest", "0x" + nonce.hex()))[2:])
    with pytest.raises(Exception, match="nonce"):
        verify_attestation(document, root=load_root(stack.root_pem), now_ms=int(time.time() * 1000),
                           pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=os.urandom(16))


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_import_sign_export_and_refusals(stack: Stack) -> None:
    key = keccak(b"clave test_methods imported key")
    address = Account.from_key(key).address.lower()
    password = "import password 3"
    keyfile = json.dumps(create_keyfile_json(key, password.encode(), kdf="scrypt", iterations=1 << 12))
    public_key = await _enclave_key(stack)

    def envelope(payload: dict[str, Any]) -> str:
        return "0x" + seal_to(public_key, payload).hex()

    wrong = envelope({"keyfile": keyfile, "password": "not it"})
    assert await _failure(stack, "clave_importKeyfile", wrong) == (-32000, "could not decrypt key with given password")
    assert await _failure(stack, "clave_importKeyfile", "0x00") == (
        -32000, "envelope does not open: it was not made for this enclave boot")
    assert await stack.rpc("clave_importKeyfile", envelope({"keyfile": keyfile, "password": password}), True) == address
    again = envelope({"keyfile": keyfile, "password": password})
    assert await _failure(stack, "clave_importKeyfile", again, True) == (-32000, f"account already exists: {address}")
    described = {a["address"]: a for a in await stack.rpc("clave_listAccounts")}
    assert described[address]["origin"] == "imported" and described[address]["exportable"] is True

    signature = await stack.rpc("eth_sign", address, "0x" + b"imported".hex())
    assert _recovered_message(encode_defunct(primitive=b"imported"), signature) == address

    exported = json.loads(await _export(stack, address, envelope({"password": "export pw 1"})))
    assert exported["address"].lower() == address[2:]
    assert bytes(decode_keyfile_json(exported, b"export pw 1")) == key  # eth-keyfile opens what the enclave wrote

    generated = await stack.rpc("account_new")
    assert await _failure(stack, "clave_exportChallenge", generated) == (
        -32000, "account is not exportable: it was created or imported without --exportable")
    assert await _failure(stack, "clave_exportChallenge", UNKNOWN) == (-32000, "unknown account")


# --- observability through the same wiring ----------------------------------------------------------------


async def test_metrics_count_signatures_refusals_and_requests(stack: Stack, account: str) -> None:
    await stack.rpc("eth_sign", account, "0x01")
    await _failure(stack, "eth_sign", UNKNOWN, "0x01")
    response = await stack.http.get("/metrics")
    text = await response.text()
    assert response.status == 200
    assert 'clave_signatures_total{kind="personal"}' in text
    assert 'clave_requests_total{method="eth_sign",outcome="ok"}' in text
    assert 'clave_requests_total{method="eth_sign",outcome="refused"}' in text
    assert 'clave_enclave_roundtrip_seconds_count{call="sign_personal"}' in text
    assert 'clave_kms_calls_total{operation="GenerateDataKey",outcome="ok"} 1.0' in text
    health = await (await stack.http.get("/healthz")).json()
    assert health["ready"] is True and health["attested"] is True and health["keys_loaded"] >= 1
    assert health["store_reachable"] is True and health["last_error"] is None


async def test_a_refused_duplicate_import_changes_nothing(stack: Stack) -> None:
    key = keccak(b"clave test_methods duplicate import")
    address = Account.from_key(key).address.lower()
    keyfile = json.dumps(create_keyfile_json(key, b"dup pw", kdf="scrypt", iterations=1 << 12))
    public_key = await _enclave_key(stack)
    sealed = "0x" + seal_to(public_key, {"keyfile": keyfile, "password": "dup pw"}).hex()
    assert await stack.rpc("clave_importKeyfile", sealed, False) == address
    assert await _failure(stack, "clave_importKeyfile", sealed, True) == (-32000, f"account already exists: {address}")
    assert await _failure(stack, "clave_exportChallenge", address) == (
        -32000, "account is not exportable: it was created or imported without --exportable")


# --- go-opera / sonic validator keys ------------------------------------------------------------------------


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_validator_key_new_and_restore(stack: Stack) -> None:
    public_key = await _enclave_key(stack)
    made = await stack.rpc("clave_validatorNew", "0x" + seal_to(public_key, {"password": "validator pw 1"}).hex())
    pubkey = made["pubkey"]
    assert pubkey.startswith("0xc004") and len(pubkey) == 2 + 2 * 66
    secret = opera_decrypt(made["keyfile"], "validator pw 1")  # the test's own scrypt, not eth-keyfile's
    assert "0xc0" + uncompressed_public_key(secret).hex() == pubkey
    assert stack.store.get_meta("validator:" + pubkey[2:]) is not None, "the sealed backup is stored"
    assert all(r.address != keccak(uncompressed_public_key(secret)[1:])[12:] for r in stack.store.records())
    restored = await stack.rpc("clave_validatorKeyfile", pubkey.upper().replace("0XC", "0xc"),
                               "0x" + seal_to(public_key, {"password": "validator pw 2"}).hex())
    assert restored["pubkey"] == pubkey and json.loads(restored["keyfile"])["pubkey"] == pubkey[4:]
    assert await _failure(stack, "clave_validatorKeyfile", "0xc004" + "ab" * 64, "0x00") == (
        -32000, "no sealed backup of validator key 0xc004" + "ab" * 64 + " in this store")
    assert await _failure(stack, "clave_validatorKeyfile", "0x04" + "ab" * 64, "0x00") == (
        -32602, "invalid argument 0: expected a 0xc004… validator public key")
    assert await _failure(stack, "clave_validatorNew", "0x" + seal_to(public_key, {"password": ""}).hex()) == (
        -32602, "envelope must carry a non-empty password")


async def test_validator_scrypt_runs_off_the_signing_path(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validator keyfiles take a full-strength scrypt (~0.8 s): the frame server must not run them inline
    with signatures, and the work goes to the keyfile pool like imports and exports do."""
    assert {"validator_new", "validator_keyfile"} <= SLOW_METHODS
    pooled: list[str] = []
    inline_run = kdf_pool.run
    monkeypatch.setattr(kdf_pool, "run", lambda fn, *args: pooled.append(fn.__name__) or inline_run(fn, *args))
    public_key = await _enclave_key(stack)
    await stack.rpc("clave_validatorNew", "0x" + seal_to(public_key, {"password": "pooled pw"}).hex())
    assert pooled == ["opera_keyfile"]
