"""account_signGnosisSafeTx: decoding, validation args, EIP-712 digest, clef's chain-id quirk, output."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from eth_utils import keccak

from clave.core.errors import RequestError
from clave.core.eth.typed_data import typed_data_preimage
from clave.core.gojson import GoJSONError, loads
from clave.sidecar.requests.gnosis import (
    gnosis_prepare,
    gnosis_result,
    gnosis_typed_data,
    gnosis_validation_args,
    parse_gnosis_tx,
)
from clave.sidecar.requests.txargs import clef_reject_message, clef_validate

# signer/core/signed_data_test.go TestGnosisCustomData / TestGnosisCustomDataWithChainId
GNOSIS_TX = """{
  "safe": "0x25a6c4BBd32B2424A9c99aEB0584Ad12045382B3", "to": "0x9eE457023bB3De16D51A003a247BaEaD7fce313D",
  "value": "20000000000000000", "data": null, "operation": 0,
  "gasToken": "0x0000000000000000000000000000000000000000", "safeTxGas": 27845, "baseGas": 0, "gasPrice": "0",
  "refundReceiver": "0x0000000000000000000000000000000000000000", "nonce": 3, "executionDate": null,
  "submissionDate": "2020-09-15T21:59:23.815748Z", "modified": "2020-09-15T21:59:23.815748Z", "blockNumber": null,
  "transactionHash": null, "safeTxHash": "0x28bae2bd58d894a1d9b69e5e9fde3570c4b98a6fc5499aefb54fb830137e831f",
  "executor": null, "isExecuted": false, "isSuccessful": null, "ethGasPrice": null, "gasUsed": null, "fee": null,
  "origin": null, "dataDecoded": null, "confirmationsRequired": null,
  "confirmations": [{"owner": "0xAd2e180019FCa9e55CADe76E4487F126Fd08DA34", "signatureType": "EOA",
                     "signature": "0x5e562065a0cb15d766dac0cd49eb6d196a41183af302c4ecad45f1a81958d7797753f04424a9b0aa1cb0448e4ec8e189540fbcdda7530ef9b9d95dfc2d36cb521b"}],
  "signatures": null
}"""
GNOSIS_TX_CHAIN = """{
  "safe": "0x111dAE35D176A9607053e0c46e91F36AFbC1dc57", "to": "0x5592EC0cfb4dbc12D3aB100b257153436a1f0FEa",
  "value": "0",
  "data": "0xa9059cbb00000000000000000000000099d580d3a7fe7bd183b2464517b2cd7ce5a8f15a0000000000000000000000000000000000000000000000000de0b6b3a7640000",
  "operation": 0, "gasToken": "0x0000000000000000000000000000000000000000", "safeTxGas": 0, "baseGas": 0,
  "gasPrice": "0", "refundReceiver": "0x0000000000000000000000000000000000000000", "nonce": 15,
  "executionDate": "2022-01-10T20:00:12Z", "blockNumber": 9968802,
  "safeTxHash": "0x6619dab5401503f2735256e12b898e69eb701d6a7e0d07abf1be4bb8aebfba29",
  "executor": "0xbc2BB26a6d821e69A38016f3858561a1D80d4182", "isExecuted": true, "ethGasPrice": "2500000009",
  "gasUsed": 82902, "fee": "207255000746118", "chainId": "4", "origin": null,
  "dataDecoded": {"method": "transfer", "parameters": [{"name": "to", "type": "address", "value": "0x99D580d3a7FE7BD183b2464517B2cD7ce5A8F15A"}]},
  "confirmationsRequired": 1,
  "signatures": "0x5ca34641bcdee06e7b99143bfe34778195ca41022bd35837b96c204c7786be9d6dfa6dba43b53cd92da45ac728899e1561b232d28f38ba82df45f164caba38be1b"
}"""
SIGNER = "0xfd1c4226bfD1c436672092F4eCbfC270145b7256"


def digest_of(typed: dict[str, Any]) -> bytes:
    return keccak(typed_data_preimage(typed))


def _prepare(text: str, chain_id: int = 1, **changes: Any):
    obj = loads(text)
    obj.update(changes)
    return gnosis_prepare(parse_gnosis_tx(obj), chain_id, digest_of)


def test_digest_without_chain_id():
    plan = _prepare(GNOSIS_TX)
    assert "0x" + plan.digest.hex() == "0x28bae2bd58d894a1d9b69e5e9fde3570c4b98a6fc5499aefb54fb830137e831f"
    assert plan.tx.chain_id is None
    assert [t["name"] for t in plan.typed_data["types"]["EIP712Domain"]] == ["verifyingContract"]


def test_digest_with_chain_id():
    plan = _prepare(GNOSIS_TX_CHAIN)
    assert "0x" + plan.digest.hex() == "0x6619dab5401503f2735256e12b898e69eb701d6a7e0d07abf1be4bb8aebfba29"
    assert [t["name"] for t in plan.typed_data["types"]["EIP712Domain"]] == ["chainId", "verifyingContract"]
    assert plan.typed_data["domain"]["chainId"] == 4


def test_missing_chain_id_is_retried_with_the_signer_chain():
    obj = loads(GNOSIS_TX_CHAIN)
    del obj["chainId"]
    plan = gnosis_prepare(parse_gnosis_tx(obj), 4, digest_of)
    assert plan.tx.chain_id == 4  # filled in, so it shows up in the result, as in clef
    assert "0x" + plan.digest.hex() == "0x6619dab5401503f2735256e12b898e69eb701d6a7e0d07abf1be4bb8aebfba29"
    with pytest.raises(RequestError) as info:
        gnosis_prepare(parse_gnosis_tx(obj), 1, digest_of)
    have = digest_of(gnosis_typed_data(parse_gnosis_tx(obj), 1)).hex()
    assert info.value.message == (
        f"mismatched safeTxHash; have 0x{have} want 0x6619dab5401503f2735256e12b898e69eb701d6a7e0d07abf1be4bb8aebfba29"
    )


def test_supplied_chain_id_and_wrong_hash_is_not_an_error():
    # clef quirk: with a chainId present, a mismatch is ignored and the computed digest is signed
    wrong = "0x" + "11" * 32
    plan = _prepare(GNOSIS_TX_CHAIN, safeTxHash=wrong)
    assert "0x" + plan.digest.hex() == "0x6619dab5401503f2735256e12b898e69eb701d6a7e0d07abf1be4bb8aebfba29"
    assert plan.tx.safe_tx_hash.hex() == "11" * 32


def test_result_shape_and_order():
    plan = _prepare(GNOSIS_TX_CHAIN)
    out = gnosis_result(plan.tx, b"\x01" * 65, plan.digest, SIGNER.lower())
    assert list(out) == [
        "signature",
        "contractTransactionHash",
        "sender",
        "safe",
        "to",
        "value",
        "gasPrice",
        "data",
        "operation",
        "gasToken",
        "refundReceiver",
        "baseGas",
        "safeTxGas",
        "nonce",
        "safeTxHash",
        "chainId",
    ]
    assert out["sender"] == SIGNER
    assert (
        out["contractTransactionHash"] == "0x6619dab5401503f2735256e12b898e69eb701d6a7e0d07abf1be4bb8aebfba29"
    )
    assert (out["safe"], out["value"], out["nonce"], out["chainId"]) == (
        "0x111dAE35D176A9607053e0c46e91F36AFbC1dc57",
        "0",
        15,
        "0x4",
    )
    assert out["gasToken"] == "0x" + "00" * 20
    json.dumps(out)
    plain = gnosis_result(_prepare(GNOSIS_TX).tx, b"\x01" * 65, b"\x02" * 32, bytes.fromhex(SIGNER[2:]))
    assert "chainId" not in plain and plain["data"] is None and plain["safeTxGas"] == 27845


def test_validation_args():
    args = gnosis_validation_args(parse_gnosis_tx(loads(GNOSIS_TX)))
    assert (args.from_.original, args.gas, args.gas_price, args.value, args.nonce) == (
        "0x25a6c4BBd32B2424A9c99aEB0584Ad12045382B3",
        27845,
        0,
        20000000000000000,
        3,
    )
    assert clef_validate(args) == []
    chain_args = gnosis_validation_args(parse_gnosis_tx(loads(GNOSIS_TX_CHAIN)))
    assert chain_args.chain_id == 4
    assert clef_reject_message(clef_validate(chain_args)) is None
    lower = loads(GNOSIS_TX)
    lower["to"] = lower["to"].lower()
    assert clef_reject_message(clef_validate(gnosis_validation_args(parse_gnosis_tx(lower)))) == (
        "validation failed: Invalid checksum on recipient address"
    )


def test_nonce_and_gas_take_the_low_64_bits_like_go():
    obj = loads(GNOSIS_TX)
    obj["nonce"] = 2**64 + 3
    tx = parse_gnosis_tx(obj)
    assert gnosis_validation_args(tx).nonce == 3
    assert gnosis_typed_data(tx, None)["message"]["nonce"] == "3"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            {"value": 5},
            "json: cannot unmarshal number into Go struct field GnosisSafeTx.value of type math.Decimal256",
        ),
        ({"gasPrice": "1.5"}, 'invalid hex or decimal integer "1.5"'),
        ({"safeTxGas": "27845"}, 'math/big: cannot unmarshal "\\"27845\\"" into a *big.Int'),
        (
            {"operation": 256},
            "json: cannot unmarshal number 256 into Go struct field GnosisSafeTx.operation of type uint8",
        ),
        ({"safe": "0x"}, "hex string has length 0, want 40 for common.Address"),
        (
            {"gasToken": None},
            "json: cannot unmarshal non-string into Go struct field GnosisSafeTx.gasToken of type common.Address",
        ),
        ({"safeTxHash": "0x00"}, "hex string has length 2, want 64 for common.Hash"),
        ({"chainId": "x"}, 'invalid hex or decimal integer "x"'),
        (
            {"sender": None},
            "json: cannot unmarshal non-string into Go struct field GnosisSafeTx.sender of type common.Address",
        ),
    ],
)
def test_decode_errors(change, error):
    obj = copy.deepcopy(loads(GNOSIS_TX))
    obj.update(change)
    with pytest.raises(GoJSONError) as info:
        parse_gnosis_tx(obj)
    assert info.value.message == error


def test_nulls_and_unknown_keys():
    obj = loads(GNOSIS_TX)
    obj.update({"value": None, "operation": None, "baseGas": None, "chainId": None, "SAFETXGAS": 1})
    tx = parse_gnosis_tx(obj)
    assert (tx.value, tx.operation, tx.base_gas, tx.chain_id, tx.safe_tx_gas) == (0, 0, 0, None, 1)
    assert parse_gnosis_tx(loads(GNOSIS_TX_CHAIN)).chain_id == 4
    assert parse_gnosis_tx({"chainId": 4}).chain_id == 4
    assert parse_gnosis_tx({"chainId": "0x4"}).chain_id == 4
