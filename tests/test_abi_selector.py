"""clef's calldata check against a caller-supplied selector (`signer/fourbyte/abi.go` verifySelector with
go-ethereum's `abi.ParseSelector`), isolated in `clave.sidecar.requests.abi_selector`. The texts are Go's;
the decoding is eth-abi's. How the check feeds clef's validation messages is in test_txargs.py."""

from __future__ import annotations

import eth_abi
from eth_utils import keccak

from clave.sidecar.requests.abi_selector import AbiMismatch, verify_selector

SAFE_SEND = "0x4401a6e40000000000000000000000000000000000000000000000000000000000000012"


def test_selector_parser_errors():
    def why(selector: str) -> str:
        try:
            verify_selector(selector, bytes.fromhex(SAFE_SEND[2:]))
        except AbiMismatch as exc:
            return str(exc)
        return ""

    assert why("1f()") == "failed to parse selector: failed to parse selector '1f()': invalid token start: 1"
    assert (
        why("f(uint256")
        == "failed to parse selector: failed to parse selector 'f(uint256': expected ')', got ''"
    )
    assert why("f(uint256[)") == (
        "failed to parse selector: failed to parse selector 'f(uint256[)': failed to parse type: "
        "failed to parse array: expected ']', got u"
    )
    assert why("f()x") == "failed to parse selector: failed to parse selector 'f()x': unexpected string 'x'"
    assert why("") == "failed to parse selector: failed to parse selector '': empty token"
    assert why("safeSend(address)") == ""


def test_tuple_selector_round_trip():
    data = keccak(text="f((uint256,address)[],bytes)")[:4] + eth_abi.encode(
        ["(uint256,address)[]", "bytes"], [[(7, "0x" + "11" * 20)], b"\x01\x02"]
    )
    shown = verify_selector("f((uint256,address)[],bytes)", data)
    assert shown == "f((uint256,address)[]: [{7 0x1111111111111111111111111111111111111111}],bytes: [1 2])"



def test_types_go_accepts_but_abi_cannot_decode_are_invalid():
    data = keccak(text="f(uint7)")[:4] + bytes(32)
    try:
        verify_selector("f(uint7)", data)
    except AbiMismatch as exc:
        assert str(exc).startswith("invalid method signature (") and str(exc).endswith(": unsupported arg type: uint7")
    else:
        raise AssertionError("uint7 must not verify")
