"""Property tests against oracles nobody here wrote.

- Random valid transactions of every type the two request shapes build (types 0, 1, 2 through clef's
  account_signTransaction; 2 and 4 through geth's eth_signTransaction) are mined by anvil, from the
  right sender, and the `tx` JSON rebuilds exactly `raw`.
- Random messages and random EIP-712 typed data (generated struct types, nested structs, arrays) get
  the same signatures from clave as from `cast wallet sign` with the same private key.

Examples are few on purpose (the file runs in well under a minute); hypothesis still shrinks a failure.
"""

from __future__ import annotations

import json
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clave.core.eth.transactions import encode_signed
from clave.core.eth.txjson import parse_geth_tx_json
from tests.accounts import new_account
from tests.clients import import_key, send_and_mine
from tests.stack import Anvil, ClaveProcess

pytestmark = pytest.mark.clients

CHAIN = 31337
GWEI = 10**9
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEWER = settings(SETTINGS, max_examples=25)  # one cast process per example


@pytest.fixture(scope="module")
def tx_sender(clave: ClaveProcess, anvil: Anvil) -> str:
    address = new_account(clave)
    anvil.fund(address, 10**22)
    return str(address)


@pytest.fixture(scope="module")
def known(clave: ClaveProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    key = keccak(b"clave test_properties known key")
    return "0x" + key.hex(), import_key(clave, key, tmp_path_factory.mktemp("prop-known"))


@pytest.fixture(scope="module")
def cast_bin(cast: str) -> str:
    """The native cast binary behind npm's node shim, when it is there (30 ms a call instead of 250)."""
    modules = Path(cast).resolve().parent.parent
    for candidate in sorted(modules.glob("@foundry-rs/cast-*/bin/cast")):
        if candidate.is_file():
            return str(candidate)
    return cast


def _cast(cast_bin: str, *args: str) -> str:
    out = subprocess.run([cast_bin, "wallet", "sign", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- transactions -----------------------------------------------------------------------------------------

addresses = st.binary(min_size=20, max_size=20).filter(lambda b: int.from_bytes(b, "big") > 0xFFFF)
hashes = st.binary(min_size=32, max_size=32)
access_lists = st.lists(st.tuples(addresses, st.lists(hashes, max_size=2)), max_size=2)
fees = st.integers(2 * GWEI, 60 * GWEI)


@st.composite
def calldata(draw: st.DrawFn) -> bytes:
    """Empty, or a 4-byte selector and whole 32-byte words (clef warns about anything else)."""
    if draw(st.booleans()):
        return b""
    size = 4 + 32 * draw(st.integers(0, 3))
    return draw(st.binary(min_size=size, max_size=size))


def initcode(n: int) -> bytes:
    """JUMPDEST × n, STOP: deploys an empty contract (status 1); n ≥ 39 keeps clef's size warning quiet."""
    return b"\x5b" * n + b"\x00"


def _gas(data: bytes, access: list[tuple[bytes, list[bytes]]], create: bool, auths: int = 0) -> int:
    # Generous: intrinsic cost, the EIP-7623 floor (≤ 40 per byte), initcode words, access list, auths.
    return (21000 + 40 * len(data) + (32000 + 2 * ((len(data) + 31) // 32) + 200 if create else 0)
            + sum(2400 + 1900 * len(keys) for _, keys in access) + 25000 * auths + 1000)


def _recase(key: str, upper: bool) -> str:
    return key.upper() if upper else key


def _check_mined(anvil: Anvil, result: dict[str, Any], sender: str) -> dict[str, Any]:
    tx, y, r, s = parse_geth_tx_json(result["tx"])
    assert "0x" + encode_signed(tx, y, r, s).hex() == result["raw"]
    assert Account.recover_transaction(result["raw"]).lower() == sender
    receipt = send_and_mine(anvil, result["raw"])
    assert receipt["status"] == "0x1", receipt
    assert receipt["from"].lower() == sender
    assert receipt["transactionHash"] == result["tx"]["hash"]
    return tx


@SETTINGS
@given(data=st.data())
def test_clef_random_transactions_are_mined(clave: ClaveProcess, anvil: Anvil, tx_sender: str, data: Any) -> None:
    tx_type = data.draw(st.sampled_from([0, 1, 2]), "type")
    create = data.draw(st.integers(0, 4), "create") == 0
    to = None if create else data.draw(addresses, "to")
    payload = initcode(data.draw(st.integers(39, 90))) if create else data.draw(calldata(), "data")
    access = data.draw(access_lists, "accessList") if tx_type else []
    upper = data.draw(st.booleans(), "upper-case keys")
    args: dict[str, Any] = {
        "from": to_checksum_address(tx_sender),
        "to": to_checksum_address(to) if to else None,
        "gas": hex(_gas(payload, access, create)),
        "value": hex(0 if create else data.draw(st.integers(0, 10**15), "value")),
        "nonce": anvil.rpc("eth_getTransactionCount", tx_sender, "pending"),
        data.draw(st.sampled_from(["input", "data"])): "0x" + payload.hex(),
    }
    if tx_type == 2:
        max_fee = data.draw(fees, "maxFeePerGas")
        args["maxFeePerGas"] = hex(max_fee)
        args["maxPriorityFeePerGas"] = hex(data.draw(st.integers(0, max_fee), "tip"))
    else:
        args["gasPrice"] = hex(data.draw(fees, "gasPrice"))
    if tx_type == 1 or (tx_type == 2 and data.draw(st.booleans())):
        args["accessList"] = [{"address": to_checksum_address(a), "storageKeys": ["0x" + k.hex() for k in keys]}
                              for a, keys in access]
    else:
        access = []
    if data.draw(st.booleans(), "chainId"):
        args["chainId"] = hex(CHAIN)
    request = {_recase(k, upper): v for k, v in args.items()}
    result = clave.rpc("account_signTransaction", request)
    tx = _check_mined(anvil, result, tx_sender)
    assert tx["type"] == tx_type and tx["chainId"] == CHAIN
    assert tx["to"] == to and tx["data"] == payload and tx["nonce"] == int(args["nonce"], 16)
    if tx_type:
        assert tx["accessList"] == [(a, list(keys)) for a, keys in access]


@SETTINGS
@given(data=st.data())
def test_eth_random_transactions_are_mined(clave: ClaveProcess, anvil: Anvil, tx_sender: str, data: Any) -> None:
    tx_type = data.draw(st.sampled_from([2, 4]), "type")
    to = data.draw(addresses, "to")
    payload = data.draw(calldata(), "data")
    access = data.draw(access_lists, "accessList") if data.draw(st.booleans()) else []
    max_fee = data.draw(fees, "maxFeePerGas")
    authorities = [Account.create() for _ in range(data.draw(st.integers(1, 2)))] if tx_type == 4 else []
    args: dict[str, Any] = {
        # geth's eth_signTransaction has no checksum rule: any case will do.
        "from": data.draw(st.sampled_from([tx_sender, tx_sender.upper().replace("0X", "0x"),
                                           to_checksum_address(tx_sender)])),
        "to": data.draw(st.sampled_from(["0x" + to.hex(), to_checksum_address(to)])),
        "gas": hex(_gas(payload, access, False, len(authorities))),
        "maxFeePerGas": hex(max_fee),
        "maxPriorityFeePerGas": hex(data.draw(st.integers(0, max_fee), "tip")),
        "value": hex(data.draw(st.integers(0, 10**15), "value")),
        "nonce": anvil.rpc("eth_getTransactionCount", tx_sender, "pending"),
        data.draw(st.sampled_from(["input", "data"])): "0x" + payload.hex(),
    }
    if access:
        args["accessList"] = [{"address": "0x" + a.hex(), "storageKeys": ["0x" + k.hex() for k in keys]}
                              for a, keys in access]
    if data.draw(st.booleans(), "chainId"):
        args["chainId"] = hex(CHAIN)
    delegates = []
    if authorities:
        auth_list = []
        for authority in authorities:
            delegate = data.draw(addresses, "delegate")
            auth_chain = data.draw(st.sampled_from([CHAIN, 0]), "auth chainId")
            signed = authority.sign_authorization({"chainId": auth_chain, "address": delegate, "nonce": 0})
            auth_list.append({"chainId": hex(auth_chain), "address": "0x" + delegate.hex(), "nonce": "0x0",
                              "yParity": hex(signed.y_parity), "r": hex(signed.r), "s": hex(signed.s)})
            delegates.append((authority.address, delegate))
        args["authorizationList"] = auth_list
    result = clave.rpc("eth_signTransaction", args)
    tx = _check_mined(anvil, result, tx_sender)
    assert tx["type"] == tx_type and tx["chainId"] == CHAIN and tx["data"] == payload
    for authority_address, delegate in delegates:
        assert anvil.rpc("eth_getCode", authority_address, "latest") == "0xef0100" + delegate.hex()


# --- messages ----------------------------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=80)


@FEWER
@given(message=st.one_of(st.binary(min_size=1, max_size=300), texts.filter(lambda t: not t.startswith("0x"))))
def test_messages_sign_like_cast(clave: ClaveProcess, known: tuple[str, str], cast_bin: str,
                                 message: bytes | str) -> None:
    key, address = known
    raw = message if isinstance(message, bytes) else message.encode()
    by_cast = _cast(cast_bin, "--private-key", key, "--", "0x" + raw.hex() if isinstance(message, bytes) else message)
    assert clave.rpc("eth_sign", address, "0x" + raw.hex()) == by_cast
    assert clave.rpc("account_signData", "text/plain", address, "0x" + raw.hex()) == by_cast


# --- typed data --------------------------------------------------------------------------------------------

names = st.text(string.ascii_lowercase, min_size=1, max_size=6).map(lambda s: "f" + s)
sizes = st.integers(1, 32).map(lambda n: n * 8)
PRIMITIVES = st.one_of(
    sizes.map(lambda n: f"uint{n}"), sizes.map(lambda n: f"int{n}"),
    st.sampled_from(["address", "bool", "string", "bytes", "uint256", "int256"]),
    st.integers(1, 32).map(lambda n: f"bytes{n}"),
)


def value_for(kind: str) -> st.SearchStrategy[Any]:
    if kind.endswith("[]"):
        return st.lists(value_for(kind[:-2]), max_size=3)
    if kind.startswith("uint"):
        bits = int(kind[4:])
        return st.integers(0, 2**bits - 1).flatmap(_int_forms)
    if kind.startswith("int"):
        bits = int(kind[3:])
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1).flatmap(_int_forms)
    if kind == "address":
        return addresses.map(lambda b: "0x" + b.hex())
    if kind == "bool":
        return st.booleans()
    if kind == "string":
        return st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
    if kind == "bytes":
        return st.binary(max_size=40).map(lambda b: "0x" + b.hex())
    if kind.startswith("bytes"):
        n = int(kind[5:])
        return st.binary(min_size=n, max_size=n).map(lambda b: "0x" + b.hex())
    raise AssertionError(kind)


def _int_forms(value: int) -> st.SearchStrategy[Any]:
    """Decimal string always; a JSON number when both encoders read it exactly (|v| < 2^53)."""
    forms: list[Any] = [str(value)]
    if abs(value) < 2**53:
        forms.append(value)
    return st.sampled_from(forms)


@st.composite
def typed_data(draw: st.DrawFn) -> dict[str, Any]:
    sub_fields = draw(st.lists(st.tuples(names, PRIMITIVES), min_size=1, max_size=3, unique_by=lambda f: f[0]))
    kinds = st.one_of(PRIMITIVES, PRIMITIVES.map(lambda k: k + "[]"), st.sampled_from(["Sub", "Sub[]"]))
    main_fields = draw(st.lists(st.tuples(names, kinds), min_size=1, max_size=5, unique_by=lambda f: f[0]))
    types: dict[str, Any] = {"Main": [{"name": n, "type": k} for n, k in main_fields]}
    uses_sub = any(k.startswith("Sub") for _, k in main_fields)
    if uses_sub:
        types["Sub"] = [{"name": n, "type": k} for n, k in sub_fields]

    def sub_value() -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries({n: value_for(k) for n, k in sub_fields})

    message = {}
    for n, k in main_fields:
        if k == "Sub":
            message[n] = draw(sub_value())
        elif k == "Sub[]":
            message[n] = draw(st.lists(sub_value(), max_size=2))
        else:
            message[n] = draw(value_for(k))
    domain_fields = draw(st.lists(st.sampled_from(["name", "version", "chainId", "verifyingContract", "salt"]),
                                  min_size=1, max_size=5, unique=True))
    order = ["name", "version", "chainId", "verifyingContract", "salt"]
    domain_types = {"name": "string", "version": "string", "chainId": "uint256", "verifyingContract": "address",
                    "salt": "bytes32"}
    domain_values = {
        "name": draw(st.text(string.ascii_letters + " ", min_size=1, max_size=12)),
        "version": draw(st.sampled_from(["1", "2", "1.0.0"])),
        "chainId": draw(st.integers(1, 2**40)),
        "verifyingContract": "0x" + draw(addresses).hex(),
        "salt": "0x" + draw(hashes).hex(),
    }
    present = [f for f in order if f in domain_fields]
    types["EIP712Domain"] = [{"name": f, "type": domain_types[f]} for f in present]
    return {"types": types, "primaryType": "Main", "domain": {f: domain_values[f] for f in present},
            "message": message}


@SETTINGS
@given(typed=typed_data())
def test_typed_data_signs_like_cast(clave: ClaveProcess, known: tuple[str, str], cast_bin: str,
                                    tmp_path_factory: pytest.TempPathFactory, typed: dict[str, Any]) -> None:
    key, address = known
    path = tmp_path_factory.mktemp("typed") / "typed.json"
    path.write_text(json.dumps(typed))
    by_cast = _cast(cast_bin, "--data", "--from-file", str(path), "--private-key", key)
    assert clave.rpc("account_signTypedData", address, typed) == by_cast, json.dumps(typed)
    assert clave.rpc("eth_signTypedData_v4", address, json.dumps(typed)) == by_cast
