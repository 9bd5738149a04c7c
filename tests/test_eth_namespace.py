"""The `eth_*` calls real clients make (issue 13), in-process (tests/inproc.py): node identity, MetaMask's
`personal_sign`, web3.py's `eth_signTypedData`, `_v3`, an explicit transaction `type`, the bare-hex
`eth_signTransaction` result (and geth's `{raw, tx}` with `eth_signtx_result="geth"`), and node methods
without `--downstream`.

Signatures are recovered with eth-account and transactions decoded with eth-account/rlp, not clave's code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import rlp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes

from clave import __version__
from tests.inproc import Stack, running_stack
from tests.stack import RpcFailure

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAIN = 31337
TO = "0x703c4b2bD70c169f5717101CaeE543299Fc946C7"
KEY = "0x" + "00" * 31 + "07"
ACCESS = [{"address": TO, "storageKeys": ["0x" + "00" * 31 + "01"]}]
MAIL = {
    "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"}],
        "Mail": [{"name": "from", "type": "address"}, {"name": "contents", "type": "string"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "clave", "chainId": CHAIN},
    "message": {"from": TO, "contents": "hello"},
}
WITH_ARRAY = {**MAIL, "types": {**MAIL["types"], "Mail": [*MAIL["types"]["Mail"], {"name": "tags", "type": "uint8[]"}]},
              "message": {**MAIL["message"], "tags": [1, 2]}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("eth")) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def account(stack: Stack) -> str:
    return str(await stack.rpc("account_new"))


async def _failure(stack: Stack, method: str, *params: Any) -> tuple[int, str]:
    with pytest.raises(RpcFailure) as err:
        await stack.rpc(method, *params, transport="http")
    return err.value.code, err.value.message


def _decoded(raw_hex: str) -> dict[str, Any]:
    """The signed transaction's fields as eth-account decodes them, and its sender."""
    raw = bytes.fromhex(raw_hex[2:])
    if raw[0] >= 0xC0:
        nonce, gas_price, gas, to, value, data, v, r, s = rlp.decode(raw)
        fields: dict[str, Any] = {"type": 0, "gasPrice": int.from_bytes(gas_price, "big"), "v": int.from_bytes(v, "big")}
    else:
        fields = dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())
        fields["type"] = raw[0]
    fields["sender"] = Account.recover_transaction(raw).lower()
    return fields


async def test_node_identity(stack: Stack, account: str) -> None:
    assert await stack.rpc("eth_chainId", transport="http") == hex(CHAIN)
    assert await stack.rpc("net_version", transport="http") == str(CHAIN)
    assert await stack.rpc("web3_clientVersion", transport="http") == f"clave/{__version__}"
    assert account in await stack.rpc("eth_requestAccounts", transport="http")


async def test_personal_sign_is_eth_sign_with_the_arguments_swapped(stack: Stack, account: str) -> None:
    message = "0x" + "gm ✓".encode().hex()
    signature = await stack.rpc("personal_sign", message, account, transport="http")
    assert signature == await stack.rpc("eth_sign", account, message, transport="http")
    recovered = Account.recover_message(encode_defunct(hexstr=message), signature=signature)
    assert recovered.lower() == account
    # The same argument errors and refusals as eth_sign, at the swapped positions.
    assert await _failure(stack, "personal_sign", account, message) == (
        -32602, "invalid argument 1: hex string has length 12, want 40 for common.Address")
    assert await _failure(stack, "personal_sign", "0x00", "0x" + "5a" * 20) == (-32000, "unknown account")
    assert (await _failure(stack, "personal_sign", message, account, "secret"))[0] == -32000


@pytest.mark.parametrize("method", ["eth_signTypedData", "eth_signTypedData_v3", "eth_signTypedData_v4"])
async def test_typed_data_methods_agree(stack: Stack, account: str, method: str) -> None:
    for typed in (MAIL, __import__("json").dumps(MAIL)):  # web3.py sends an object, ethers a JSON string
        signature = await stack.rpc(method, account, typed, transport="http")
        recovered = Account.recover_message(encode_typed_data(full_message=MAIL), signature=signature)
        assert recovered.lower() == account
    assert await _failure(stack, method, account, "{x") == (
        -32602, "invalid argument 1: typed data string is not valid JSON")
    assert await _failure(stack, method, "0x" + "5a" * 20, MAIL) == (-32000, "unknown account")


async def test_typed_data_v3_refuses_arrays_and_v1_is_refused(stack: Stack, account: str) -> None:
    signature = await stack.rpc("eth_signTypedData_v4", account, WITH_ARRAY, transport="http")
    assert Account.recover_message(encode_typed_data(full_message=WITH_ARRAY), signature=signature).lower() == account
    assert await _failure(stack, "eth_signTypedData_v3", account, WITH_ARRAY) == (
        -32000, "eth_signTypedData_v3 does not support array types; use eth_signTypedData_v4")
    code, message = await _failure(stack, "eth_signTypedData", [{"type": "string", "name": "m", "value": "x"}], account)
    assert code == -32000 and "legacy (v1)" in message


def _base(account: str, nonce: int) -> dict[str, Any]:
    return {"from": account, "to": TO, "gas": "0x7530", "value": "0x1", "nonce": hex(nonce)}


LEGACY_FEES = {"gasPrice": hex(10**9)}
DYNAMIC_FEES = {"maxFeePerGas": hex(2 * 10**9), "maxPriorityFeePerGas": hex(10**9)}


@pytest.mark.parametrize(("tx_type", "fees"), [
    (0, LEGACY_FEES), ("0x0", LEGACY_FEES), (1, {**LEGACY_FEES, "accessList": ACCESS}), ("0x1", LEGACY_FEES),
    (2, DYNAMIC_FEES), ("0x2", {**DYNAMIC_FEES, "accessList": ACCESS}),
])
async def test_explicit_type_is_honoured(stack: Stack, account: str, tx_type: Any, fees: dict[str, Any]) -> None:
    raw = await stack.rpc("eth_signTransaction", {**_base(account, 3), **fees, "type": tx_type}, transport="http")
    assert isinstance(raw, str)
    tx = _decoded(raw)
    want = tx_type if isinstance(tx_type, int) else int(tx_type, 16)
    assert tx["type"] == want and tx["sender"] == account
    if want == 1:
        # A real EIP-2930 transaction: the access list is signed, not dropped.
        assert [("0x" + bytes(e["address"]).hex(), list(e["storageKeys"])) for e in tx["accessList"]] == (
            [(e["address"].lower(), [int(k, 16) for k in e["storageKeys"]]) for e in fees.get("accessList", [])])
        assert tx["chainId"] == CHAIN and tx["gasPrice"] == 10**9


@pytest.mark.parametrize(("tx_type", "fields", "error"), [
    ("0x2", LEGACY_FEES, "gasPrice cannot be used in a type 2 (EIP-1559) transaction"),
    ("0x1", DYNAMIC_FEES, "maxFeePerGas cannot be used in a type 1 (EIP-2930) transaction"),
    ("0x0", {**LEGACY_FEES, "accessList": ACCESS}, "accessList cannot be used in a type 0 (legacy) transaction"),
    ("0x0", DYNAMIC_FEES, "maxFeePerGas cannot be used in a type 0 (legacy) transaction"),
    ("0x1", {}, "gasPrice not specified for a type 1 (EIP-2930) transaction"),
    ("0x3", DYNAMIC_FEES, "blobVersionedHashes not specified for a type 3 (EIP-4844 blob) transaction"),
    ("0x4", DYNAMIC_FEES, "authorizationList not specified for a type 4 (EIP-7702 set-code) transaction"),
    ("0x2", {**DYNAMIC_FEES, "blobVersionedHashes": ["0x01" + "00" * 31]},
     "blobVersionedHashes cannot be used in a type 2 (EIP-1559) transaction"),
    ("0x7e", LEGACY_FEES, "transaction type '0x7e' not supported (clave signs types 0x0 to 0x4)"),
])
async def test_contradicting_type_is_refused(stack: Stack, account: str, tx_type: str, fields: dict[str, Any],
                                             error: str) -> None:
    assert await _failure(stack, "eth_signTransaction", {**_base(account, 0), **fields, "type": tx_type}) == (-32000, error)


async def test_malformed_type_is_an_argument_error(stack: Stack, account: str) -> None:
    for bad in ("2", "0xzz", True, [2]):
        assert await _failure(stack, "eth_signTransaction", {**_base(account, 0), **LEGACY_FEES, "type": bad}) == (
            -32602, "invalid argument 0: transaction type must be an integer or a 0x-prefixed hex quantity")


async def test_clef_namespace_ignores_type(stack: Stack, account: str) -> None:
    # clef's SendTxArgs has no `type`: account_signTransaction builds from the fields, as clef does.
    from eth_utils import to_checksum_address

    result = await stack.rpc("account_signTransaction", {**_base(to_checksum_address(account), 0), **LEGACY_FEES,
                                                         "type": "0x2"})
    assert result["tx"]["type"] == "0x0" and set(result) == {"raw", "tx"}


@pytest.mark.parametrize("method", ["eth_sendTransaction", "eth_blockNumber", "eth_getTransactionReceipt",
                                    "net_peerCount"])
async def test_node_methods_name_downstream(stack: Stack, method: str) -> None:
    code, message = await _failure(stack, method)
    assert code == -32601
    assert message.startswith(f"the method {method} does not exist/is not available") and "--downstream" in message
    assert await _failure(stack, "no_such_method") == (-32601, "the method no_such_method does not exist/is not available")


async def test_geth_result_shape_on_request(tmp_path_factory: pytest.TempPathFactory) -> None:
    async with running_stack(tmp_path_factory.mktemp("geth-shape"), eth_signtx_result="geth") as geth_like:
        account = await geth_like.rpc("account_new")
        result = await geth_like.rpc("eth_signTransaction", {**_base(account, 0), **LEGACY_FEES, "type": "0x1"},
                                     transport="http")
        assert set(result) == {"raw", "tx"} and result["tx"]["type"] == "0x1"
        assert _decoded(result["raw"])["sender"] == account

