"""Oracles nobody here wrote: anvil mines what clave signs, cast opens clave's keystores and agrees with
its EIP-712 signatures, and keystores made by cast import into clave."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ckzg
import pytest
from eth_account import Account
from eth_account.typed_transactions.blob_transactions import blob_transaction as eth_blob

from tests.accounts import new_account
from tests.clients import KNOWN_SECRETS, blob_network_form, import_key, run, send_and_mine
from tests.stack import Anvil, ClaveProcess
from tests.vectors import vector

CHAIN = 31337
RECIPIENT = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def sender(clave: ClaveProcess, anvil: Anvil) -> str:
    address = new_account(clave)
    anvil.fund(address)
    return address


def _nonce(anvil: Anvil, address: str) -> str:
    return anvil.rpc("eth_getTransactionCount", address, "pending")


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def _mined_by(anvil: Anvil, receipt: dict, sender: str) -> None:
    assert receipt["status"] == "0x1"
    assert receipt["from"].lower() == sender


def test_clef_types_0_1_2_mined_by_anvil(clave: ClaveProcess, anvil: Anvil, sender: str) -> None:
    base = {"from": _checksum(sender), "to": RECIPIENT, "gas": "0x5208", "value": "0x1", "input": "0x",
            "chainId": hex(CHAIN)}
    variants = {
        "0x0": {"gasPrice": "0x77359400"},
        "0x1": {"gasPrice": "0x77359400", "accessList": [{"address": RECIPIENT, "storageKeys": ["0x" + "00" * 32]}]},
        "0x2": {"maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00", "accessList": []},
    }
    for tx_type, fees in variants.items():
        request = {**base, **fees, "nonce": _nonce(anvil, sender)}
        if tx_type == "0x1":
            request["gas"] = hex(21000 + 2400 + 1900)
        result = clave.rpc("account_signTransaction", request)
        assert result["tx"]["type"] == tx_type
        receipt = send_and_mine(anvil, result["raw"])
        _mined_by(anvil, receipt, sender)
        assert receipt["transactionHash"] == result["tx"]["hash"]


def test_eth_sign_transaction_type_2_and_legacy(clave: ClaveProcess, anvil: Anvil, sender: str) -> None:
    dynamic = clave.rpc("eth_signTransaction", {"from": sender, "to": RECIPIENT.lower(), "gas": "0x5208",
                                                "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x1",
                                                "value": "0x2", "nonce": _nonce(anvil, sender)})
    assert dynamic["tx"]["type"] == "0x2" and dynamic["tx"]["chainId"] == hex(CHAIN)
    _mined_by(anvil, send_and_mine(anvil, dynamic["raw"]), sender)
    legacy = clave.rpc("eth_signTransaction", {"from": sender, "to": RECIPIENT, "gas": "0x5208",
                                               "gasPrice": "0x77359400", "value": "0x3", "nonce": _nonce(anvil, sender)})
    assert legacy["tx"]["type"] == "0x0"
    _mined_by(anvil, send_and_mine(anvil, legacy["raw"]), sender)


def test_blob_transaction_type_3_mined_by_anvil(clave: ClaveProcess, anvil: Anvil, sender: str) -> None:
    setup = ckzg.load_trusted_setup(str(Path(eth_blob.__file__).with_name("kzg_trusted_setup.txt")), 0)
    blob = bytes(32 * 4096)  # all-zero field elements: a valid blob
    commitment = ckzg.blob_to_kzg_commitment(blob, setup)
    proof = ckzg.compute_blob_kzg_proof(blob, commitment, setup)
    versioned = b"\x01" + hashlib.sha256(commitment).digest()[1:]
    result = clave.rpc("eth_signTransaction", {
        "from": sender, "to": RECIPIENT, "gas": "0x5208", "maxFeePerGas": "0x77359400",
        "maxPriorityFeePerGas": "0x1", "maxFeePerBlobGas": "0x3b9aca00", "value": "0x0",
        "nonce": _nonce(anvil, sender), "blobVersionedHashes": ["0x" + versioned.hex()],
    })
    assert result["tx"]["type"] == "0x3"
    receipt = send_and_mine(anvil, blob_network_form(result["raw"], [blob], [commitment], [proof]))
    _mined_by(anvil, receipt, sender)


def test_set_code_transaction_type_4_mined_by_anvil(clave: ClaveProcess, anvil: Anvil, sender: str) -> None:
    authority = Account.create()
    delegate = "0x" + "42" * 20
    auth = authority.sign_authorization({"chainId": CHAIN, "address": delegate, "nonce": 0})
    result = clave.rpc("eth_signTransaction", {
        "from": sender, "to": RECIPIENT, "gas": hex(100_000), "maxFeePerGas": "0x77359400",
        "maxPriorityFeePerGas": "0x1", "value": "0x0", "nonce": _nonce(anvil, sender),
        "authorizationList": [{"chainId": hex(CHAIN), "address": delegate, "nonce": "0x0",
                               "yParity": hex(auth.y_parity), "r": hex(auth.r), "s": hex(auth.s)}],
    })
    assert result["tx"]["type"] == "0x4"
    _mined_by(anvil, send_and_mine(anvil, result["raw"]), sender)
    assert anvil.rpc("eth_getCode", authority.address, "latest") == "0xef0100" + "42" * 20


def test_cast_keystore_imports(clave: ClaveProcess, cast: str, tmp_path: Path) -> None:
    password = "cast-made password 1"
    KNOWN_SECRETS.add(password)
    out = run(cast, "wallet", "new", str(tmp_path), "--unsafe-password", password)
    created = next(tmp_path.iterdir())
    private = run(cast, "wallet", "decrypt-keystore", created.name, "-k", str(tmp_path), "--unsafe-password", password)
    private = private.split()[-1]
    KNOWN_SECRETS.add(private.removeprefix("0x"))
    address = Account.from_key(private).address.lower()
    assert address in out.lower()
    pw = tmp_path.parent / "cast-pw"
    pw.write_text(password)
    result = clave.cli("account", "import", str(created), "--password-file", str(pw))
    assert result.returncode == 0, result.stderr
    assert address in clave.rpc("account_list")


def _export(clave: ClaveProcess, address: str, tmp_path: Path, password: str) -> Path:
    pw = tmp_path / "export-pw"
    pw.write_text(password + "\n")
    out = tmp_path / "exported.json"
    assert clave.admin is not None
    result = clave.cli("account", "export", address, "--password-file", str(pw), "--out", str(out), *clave.admin.export_args)
    assert result.returncode == 0, result.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    return out


def test_export_opens_with_cast_and_signs_like_cast(clave: ClaveProcess, cast: str, tmp_path: Path) -> None:
    result = clave.cli("account", "new", "--exportable")
    assert result.returncode == 0, result.stderr
    address = result.stdout.split()[-1]
    password = "export password 42"
    KNOWN_SECRETS.add(password)
    exported = _export(clave, address, tmp_path, password)
    private = run(cast, "wallet", "decrypt-keystore", exported.name, "-k", str(exported.parent),
                  "--unsafe-password", password).split()[-1]
    KNOWN_SECRETS.add(private.removeprefix("0x"))
    assert Account.from_key(private).address.lower() == address

    typed = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Order": [{"name": "maker", "type": "address"}, {"name": "amount", "type": "uint256"},
                      {"name": "memo", "type": "string"}, {"name": "tags", "type": "bytes32[]"}],
        },
        "primaryType": "Order",
        "domain": {"name": "clave test", "chainId": 1, "verifyingContract": "0x" + "cc" * 20},
        "message": {"maker": address, "amount": "1000000000000000000000", "memo": "héllo",
                    "tags": ["0x" + "ab" * 32, "0x" + "cd" * 32]},
    }
    typed_file = tmp_path / "typed.json"
    typed_file.write_text(json.dumps(typed))
    by_cast = run(cast, "wallet", "sign", "--data", "--from-file", str(typed_file), "--private-key", private)
    assert clave.rpc("account_signTypedData", address, typed) == by_cast
    assert clave.rpc("eth_signTypedData_v4", address, json.dumps(typed)) == by_cast
    message = "gm from clave"
    by_cast_msg = run(cast, "wallet", "sign", "--private-key", private, message)
    assert clave.rpc("eth_sign", address, "0x" + message.encode().hex()) == by_cast_msg


def test_not_exportable_refused(clave: ClaveProcess, tmp_path: Path) -> None:
    address = new_account(clave)
    pw = tmp_path / "pw"
    pw.write_text("whatever password")
    assert clave.admin is not None
    result = clave.cli("account", "export", address, "--password-file", str(pw), "--out", str(tmp_path / "x.json"),
                       *clave.admin.export_args)
    assert result.returncode != 0
    assert "not exportable" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_imported_vector_key_signs_published_vectors(clave: ClaveProcess, tmp_path: Path) -> None:
    cases = json.loads(vector("clef/extapi_vectors.json").read_text())["cases"]
    checked = 0
    for case in cases:
        if "key" not in case or "request" not in case:
            continue
        import_key(clave, bytes.fromhex(case["key"]), tmp_path)
        request = case["request"]
        result = clave.rpc(request["method"], *request["params"])
        if "expect_raw" in case:
            assert result["raw"] == case["expect_raw"], case["name"]
        if "expect_hash" in case:
            assert result["tx"]["hash"] == case["expect_hash"], case["name"]
        if "expect_tx" in case:
            assert json.dumps(result["tx"]) == json.dumps(case["expect_tx"]), case["name"]
        if "expect_result" in case:
            assert result == case["expect_result"], case["name"]
        checked += 1
    assert checked >= 5
