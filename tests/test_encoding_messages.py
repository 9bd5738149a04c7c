"""account_signData preimages: text/plain (EIP-191 0x45), data/validator (0x00), clique headers (0x02)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rlp as pyrlp
from coincurve import PrivateKey, PublicKey
from eth_account.messages import encode_defunct, encode_intended_validator
from eth_utils import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from clave.core.errors import RequestError
from clave.core.eth.clique import clique_seal_preimage
from clave.core.eth.hashing import keccak256
from clave.core.eth.messages import personal_message, validator_message
from tests.vectors import available, vector

EXTAPI = "clef/extapi_vectors.json"


def _extapi_cases(method: str) -> list[dict[str, Any]]:
    if not available(EXTAPI):
        return []
    cases = json.loads(vector(EXTAPI).read_text())["cases"]
    return [c for c in cases if c.get("request", {}).get("method") == method]


def _skip_if_absent(case: object) -> dict[str, Any]:
    if case is None:
        vector(EXTAPI)  # skips, or fails in CI, naming where it looked
    assert isinstance(case, dict)
    return case


def _signature_65(preimage: bytes, key: bytes) -> bytes:
    sig = PrivateKey(key).sign_recoverable(preimage, hasher=keccak256)
    return sig[:64] + bytes((sig[64] + 27,))  # clef/geth return V as 27/28


def _message_data(case: dict[str, Any]) -> bytes:
    return bytes.fromhex(case["request"]["params"][-1][2:])


@pytest.mark.parametrize(
    "case",
    [c for c in _extapi_cases("eth_sign") + _extapi_cases("account_signData") if "key" in c] or [None],
    ids=lambda c: c["name"][:50] if c else "absent",
)
def test_personal_message_signatures(case: dict[str, Any] | None) -> None:
    case = _skip_if_absent(case)
    preimage = personal_message(_message_data(case))
    assert "0x" + _signature_65(preimage, bytes.fromhex(case["key"])).hex() == case["expect_result"]


@pytest.mark.parametrize(
    "case",
    [c for c in _extapi_cases("account_signData") if "expect_signer" in c] or [None],
    ids=lambda c: c["name"][:50] if c else "absent",
)
def test_personal_message_recovers_published_signer(case: dict[str, Any] | None) -> None:
    case = _skip_if_absent(case)
    sig = bytearray(bytes.fromhex(case["expect_result"][2:]))
    sig[64] -= 27
    pub = PublicKey.from_signature_and_message(
        bytes(sig), personal_message(_message_data(case)), hasher=keccak256
    )
    signer = keccak256(pub.format(compressed=False)[1:])[12:]
    assert to_checksum_address(signer) == case["expect_signer"]


@given(st.binary(max_size=2000))
def test_personal_message_matches_eth_account(data: bytes) -> None:
    m = encode_defunct(primitive=data)
    assert personal_message(data) == b"\x19" + m.version + m.header + m.body


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=1, max_size=500))
def test_validator_message_matches_eth_account(validator: bytes, data: bytes) -> None:
    m = encode_intended_validator(to_checksum_address(validator), primitive=data)
    assert validator_message(validator, data) == b"\x19" + m.version + m.header + m.body


@pytest.mark.parametrize(
    "validator, data, message",
    [
        (b"\x01" * 19, b"x", "validator address must be 20 bytes"),
        ("0x" + "01" * 20, b"x", "validator address must be 20 bytes"),
        (b"\x01" * 20, b"", "message is undefined"),
        (b"\x01" * 20, "x", "message must be bytes"),
    ],
)
def test_validator_message_rejects(validator: Any, data: Any, message: str) -> None:
    with pytest.raises(RequestError) as e:
        validator_message(validator, data)
    assert e.value.message == message


def test_personal_message_rejects_non_bytes() -> None:
    with pytest.raises(RequestError):
        personal_message("hello")  # type: ignore[arg-type]


# --- clique ------------------------------------------------------------------------------------------


def header_fields(extra: bytes, base_fee: int | None = None, more: int = 0) -> list[Any]:
    fields: list[Any] = [
        b"\x01" * 32,  # parentHash
        b"\x1d" * 32,  # uncleHash
        b"\x00" * 20,  # coinbase
        b"\x02" * 32,  # root
        b"\x03" * 32,  # txHash
        b"\x04" * 32,  # receiptHash
        b"\x00" * 256,  # bloom
        2,  # difficulty
        1234,  # number
        8_000_000,  # gasLimit
        0,  # gasUsed
        1_700_000_000,  # time
        extra,
        b"\x00" * 32,  # mixDigest
        b"\x00" * 8,  # nonce
    ]
    if base_fee is not None:
        fields.append(base_fee)
    fields += [b"\x05" * 32, 0, 0, b"\x06" * 32][:more]
    return fields


@given(
    vanity=st.binary(max_size=100),
    sealed=st.booleans(),
    base_fee=st.none() | st.integers(0, 2**256 - 1),
)
def test_clique_seal_preimage(vanity: bytes, sealed: bool, base_fee: int | None) -> None:
    """Against an independent build with pyrlp: extra without its 65-byte seal, baseFee kept."""
    extra = vanity + (b"\x07" * 65 if sealed else b"")
    # clef always appends 65 zero bytes to extra; clique then drops the last 65 bytes: extra as sent.
    expected_extra = extra
    expected = pyrlp.encode(header_fields(expected_extra, base_fee))
    assert clique_seal_preimage(pyrlp.encode(header_fields(extra, base_fee))) == expected


def test_clique_signature_recovers_sealer() -> None:
    key = PrivateKey(b"\x42" * 32)
    unsealed = pyrlp.encode(header_fields(b"\x00" * 32))
    sig = key.sign_recoverable(clique_seal_preimage(unsealed), hasher=keccak256)
    sealed = pyrlp.encode(header_fields(b"\x00" * 32 + sig))
    # A verifier strips the seal from the sealed header, hashes what was signed and recovers the sealer.
    stripped = pyrlp.encode(header_fields(b"\x00" * 32))
    assert sealed != stripped
    pub = PublicKey.from_signature_and_message(sig, clique_seal_preimage(stripped), hasher=keccak256)
    assert pub.format() == key.public_key.format()


@pytest.mark.parametrize(
    "header, message",
    [
        (pyrlp.encode(header_fields(b"", 7, more=1)), "unexpected withdrawal hash value in clique"),
        (pyrlp.encode(header_fields(b"", 7, more=4)), "unexpected withdrawal hash value in clique"),
        (pyrlp.encode(header_fields(b"")[:14]), "rlp: too few elements for types.Header"),
        (
            pyrlp.encode(header_fields(b"", 1, more=4) + [b"\x08" * 32, b"\x09" * 32, 5, 6]),
            "rlp: input list has too many elements for types.Header",
        ),
        (pyrlp.encode(b"not a list"), "rlp: expected input list for types.Header"),
        (pyrlp.encode(header_fields(b"")) + b"\x00", "rlp: input contains more than one value"),
        (pyrlp.encode(header_fields(b"")[:-1])[:-3], "rlp: value size exceeds available input length"),
        (
            pyrlp.encode([b"\x01" * 31] + header_fields(b"")[1:]),
            "rlp: input string too short for common.Hash, decoding into (types.Header).ParentHash",
        ),
        (
            pyrlp.encode(header_fields(b"")[:7] + [b"\x00\x02"] + header_fields(b"")[8:]),
            "rlp: non-canonical integer (leading zero bytes) for *big.Int, decoding into (types.Header).Difficulty",
        ),
        (
            pyrlp.encode(header_fields(b"")[:9] + [b"\x01" * 9] + header_fields(b"")[10:]),
            "rlp: input string too long for uint64, decoding into (types.Header).GasLimit",
        ),
        (
            pyrlp.encode(header_fields(b"")[:12] + [[b"x"]] + header_fields(b"")[13:]),
            "rlp: expected input string or byte for []uint8, decoding into (types.Header).Extra",
        ),
        (b"\xf9\x00\x05" + b"\x80" * 5, "rlp: non-canonical size information"),
    ],
)
def test_clique_rejects(header: bytes, message: str) -> None:
    with pytest.raises(RequestError) as e:
        clique_seal_preimage(header)
    assert e.value.message == message
