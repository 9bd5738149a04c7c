"""Go encoding/json + hexutil decoding: what geth accepts, and its exact error texts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clave.core.errors import INVALID_PARAMS, RequestError
from clave.core.gojson import (
    GoJSONError,
    MixedcaseAddress,
    decode_address,
    decode_big,
    decode_big_int,
    decode_bytes,
    decode_decimal256,
    decode_hash,
    decode_hex_or_decimal256,
    decode_mixedcase,
    decode_struct,
    decode_uint8,
    decode_uint64,
    encode_bytes,
    encode_quantity,
    field,
    go_quote,
    go_sharp_x,
    go_type_name,
    hexutil_decode,
    invalid_argument,
    json_kind,
    loads,
    map_of,
    parse_big256,
    pointer,
    slice_of,
)

EIP55 = "0x8A8eAFb1cf62BfBeb1741769DAE1a9dd47996192"


def _err(decoder, value) -> str:
    with pytest.raises(GoJSONError) as info:
        decoder(value)
    return info.value.message


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0x0", 0),
        ("0x1", 1),
        ("0X1f", 31),
        ("0xdeadBEEF", 0xDEADBEEF),
        ("", 0),
        ("0x" + "f" * 64, 2**256 - 1),
    ],
)
def test_big_accepts(text, want):
    assert decode_big(text) == want


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0x", 'hex string "0x"'),
        ("0x01", "hex number with leading zero digits"),
        ("0x0g", "hex number with leading zero digits"),  # the leading-zero check comes first
        ("1", "hex string without 0x prefix"),
        ("x1", "hex string without 0x prefix"),
        ("0xg", "invalid hex string"),
        ("0x1" + "0" * 64, "hex number > 256 bits"),
        (" 0x1", "hex string without 0x prefix"),
    ],
)
def test_big_rejects_with_hexutil_text(value, why):
    assert _err(decode_big, value) == f"json: cannot unmarshal {why} into Go value of type *hexutil.Big"


@pytest.mark.parametrize("value", [1, 1.5, True, None, [], {}])
def test_big_non_string(value):
    assert _err(decode_big, value) == "json: cannot unmarshal non-string into Go value of type *hexutil.Big"


def test_uint64_limits():
    assert decode_uint64("0x" + "f" * 16) == 2**64 - 1
    assert _err(decode_uint64, "0x1" + "0" * 16) == (
        "json: cannot unmarshal hex number > 64 bits into Go value of type hexutil.Uint64"
    )
    assert (
        _err(decode_uint64, 21000) == "json: cannot unmarshal non-string into Go value of type hexutil.Uint64"
    )
    assert decode_uint64("") == 0


def test_bytes():
    assert decode_bytes("0x") == b""
    assert decode_bytes("") == b""
    assert decode_bytes("0xABcd") == b"\xab\xcd"
    assert (
        _err(decode_bytes, "0x1")
        == "json: cannot unmarshal hex string of odd length into Go value of type hexutil.Bytes"
    )
    assert (
        _err(decode_bytes, "0xzz")
        == "json: cannot unmarshal invalid hex string into Go value of type hexutil.Bytes"
    )
    assert _err(decode_bytes, "abcd") == (
        "json: cannot unmarshal hex string without 0x prefix into Go value of type hexutil.Bytes"
    )
    # hexutil checks the length before the digits
    assert "odd length" in _err(decode_bytes, "0xzzz")


def test_fixed_size_length_error_is_plain():
    # UnmarshalFixedText's length error is not a decError, so Go prints it bare.
    assert _err(decode_address, "0x") == "hex string has length 0, want 40 for common.Address"
    assert _err(decode_address, "0x1234") == "hex string has length 4, want 40 for common.Address"
    assert _err(decode_hash, "0x" + "00" * 20) == "hex string has length 40, want 64 for common.Hash"
    assert _err(decode_address, "0x" + "g" * 40) == (
        "json: cannot unmarshal invalid hex string into Go value of type common.Address"
    )
    assert _err(decode_address, "0x" + "0" * 39) == (
        "json: cannot unmarshal hex string of odd length into Go value of type common.Address"
    )
    assert (
        _err(decode_address, None) == "json: cannot unmarshal non-string into Go value of type common.Address"
    )
    assert decode_hash("0x" + "ab" * 32) == b"\xab" * 32


def test_hexutil_decode_is_stricter_than_the_json_unmarshaler():
    with pytest.raises(ValueError, match="^empty hex string$"):
        hexutil_decode("")
    assert hexutil_decode("0x") == b""
    with pytest.raises(ValueError, match="^invalid hex string$"):
        hexutil_decode("0xabz")  # a bad digit is reported before the odd length
    with pytest.raises(ValueError, match="^hex string of odd length$"):
        hexutil_decode("0xabc")


def test_mixedcase_address():
    good = decode_mixedcase(EIP55)
    assert good.valid_checksum()
    assert good.hex == EIP55.lower()
    assert str(good) == f"{EIP55} [chksum ok]"
    lower = decode_mixedcase(EIP55.lower())
    assert not lower.valid_checksum()
    assert lower.address == good.address
    assert str(lower).endswith("[chksum INVALID]")
    upper_prefix = decode_mixedcase("0X" + EIP55[2:])
    assert not upper_prefix.valid_checksum()  # the 0x prefix is part of the comparison
    assert upper_prefix.to_json() == EIP55  # MarshalJSON normalises the prefix only
    assert MixedcaseAddress(bytes(20), "").to_json() == "0x"
    assert MixedcaseAddress.from_address(good.address).valid_checksum()


def test_field_is_case_insensitive_and_last_wins():
    obj = loads('{"gas":"0x1","GAS":"0x2","unknown":1}')
    assert field(obj, "gas") == "0x2"
    obj = loads('{"GAS":"0x2","gas":"0x3","GAS":"0x4"}')
    assert field(obj, "gas") == "0x4"  # document order of the last occurrence, as Go assigns
    assert field({"gasPrice": None}, "gasPrice") is None
    assert field({}, "gas") is None
    assert field("not an object", "gas") is None
    # Go folds U+017F (long s) onto S and U+212A (Kelvin) onto K.
    assert field({"maxFeePerGa\u017f": "0x1"}, "maxFeePerGas") == "0x1"
    assert field({"\u212aey": 1}, "key") == 1
    assert field({"gaß": 1}, "gass") is None


FIELDS = {"gas": decode_uint64, "blobVersion": decode_uint8, "to": pointer(decode_address)}


def test_struct_context_and_hard_errors():
    with pytest.raises(GoJSONError) as info:
        decode_struct({"gas": "5208"}, FIELDS, "SendTxArgs", "apitypes.SendTxArgs")
    assert info.value.message == (
        "json: cannot unmarshal hex string without 0x prefix into Go struct field SendTxArgs.gas of type hexutil.Uint64"
    )
    # a plain type mismatch is remembered, but an unmarshaler's error later on wins
    with pytest.raises(GoJSONError) as info:
        decode_struct({"blobVersion": "1", "gas": 1}, FIELDS, "SendTxArgs", "apitypes.SendTxArgs")
    assert "SendTxArgs.gas of type hexutil.Uint64" in info.value.message
    with pytest.raises(GoJSONError) as info:
        decode_struct({"blobVersion": "1", "gas": "0x1"}, FIELDS, "SendTxArgs", "apitypes.SendTxArgs")
    assert info.value.message == (
        "json: cannot unmarshal string into Go struct field SendTxArgs.blobVersion of type uint8"
    )
    with pytest.raises(GoJSONError) as info:
        decode_struct({"blobVersion": 256}, FIELDS, "SendTxArgs", "apitypes.SendTxArgs")
    assert "cannot unmarshal number 256 into" in info.value.message
    with pytest.raises(GoJSONError) as info:
        decode_struct("0x1", FIELDS, "SendTxArgs", "apitypes.SendTxArgs")
    assert info.value.message == "json: cannot unmarshal string into Go value of type apitypes.SendTxArgs"
    assert decode_struct(None, FIELDS, "SendTxArgs", "apitypes.SendTxArgs") == {}
    assert decode_struct({"TO": None, "x": 1}, FIELDS, "S", "p.S") == {"to": None}


def test_invalid_argument_wrapping():
    err = invalid_argument(0, GoJSONError("hex string has length 0, want 40 for common.Address"))
    assert err.code == INVALID_PARAMS
    assert err.message == "invalid argument 0: hex string has length 0, want 40 for common.Address"


def test_math_types():
    assert decode_decimal256("20000000000000000") == 20000000000000000
    assert decode_decimal256("0x10") == 16
    assert decode_decimal256("") == 0
    assert decode_decimal256("-5") == -5  # big.Int.SetString takes a sign
    assert decode_decimal256(None) is None
    assert _err(decode_decimal256, "12a") == 'invalid hex or decimal integer "12a"'
    assert _err(decode_decimal256, 5) == "json: cannot unmarshal number into Go value of type math.Decimal256"
    assert decode_hex_or_decimal256(4) == 4
    assert decode_hex_or_decimal256("4") == 4
    assert decode_hex_or_decimal256("0x4") == 4
    assert _err(decode_hex_or_decimal256, True) == 'invalid hex or decimal integer "true"'
    assert decode_big_int(27845) == 27845
    assert decode_big_int(None) is None
    assert _err(decode_big_int, "27845") == 'math/big: cannot unmarshal "\\"27845\\"" into a *big.Int'
    assert _err(decode_big_int, 1.5) == 'math/big: cannot unmarshal "1.5" into a *big.Int'
    assert parse_big256("0x" + "f" * 65) is None
    assert parse_big256("0x") is None


def test_go_formatting_helpers():
    assert go_quote('a"b\\c\n\x00é') == '"a\\"b\\\\c\\n\\x00é"'
    assert go_sharp_x(b"") == ""
    assert go_sharp_x(b"\x01") == "0x01"
    assert encode_quantity(0) == "0x0"
    assert encode_quantity(21000) == "0x5208"
    assert encode_bytes(b"") == "0x"
    with pytest.raises(ValueError):
        encode_quantity(-1)


@given(st.integers(min_value=0, max_value=2**256 - 1))
def test_quantity_round_trip(n):
    assert decode_big(encode_quantity(n)) == n


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_uint64_round_trip(n):
    assert decode_uint64(encode_quantity(n)) == n


@given(st.binary(max_size=64))
def test_bytes_round_trip(b):
    assert decode_bytes(encode_bytes(b)) == b


@given(st.integers(min_value=0, max_value=2**255))
def test_padded_quantities_are_refused(n):
    with pytest.raises(GoJSONError, match="leading zero digits"):
        decode_big("0x0" + hex(n)[2:])


@given(st.text(max_size=80))
def test_arbitrary_strings_only_raise_go_errors(text):
    for decoder in (decode_big, decode_uint64, decode_bytes, decode_address):
        try:
            decoder(text)
        except GoJSONError as exc:
            assert exc.message


def test_lengths_are_counted_in_utf8_bytes_like_go():
    # "é" is two bytes: 38 digits + "é" is 40 bytes, the right length with a bad digit
    assert _err(decode_address, "0x" + "0" * 38 + "é") == (
        "json: cannot unmarshal invalid hex string into Go value of type common.Address"
    )
    assert _err(decode_address, "0x" + "0" * 39 + "é") == (
        "json: cannot unmarshal hex string of odd length into Go value of type common.Address"
    )
    assert (
        _err(decode_bytes, "0xé")
        == "json: cannot unmarshal invalid hex string into Go value of type hexutil.Bytes"
    )


@given(st.binary(min_size=20, max_size=20))
def test_checksum_matches_eth_utils(address: bytes) -> None:
    from eth_utils import to_checksum_address

    from clave.core.gojson import checksum

    assert checksum(address) == to_checksum_address(address)


def test_decode_struct_with_short_lived_field_tables() -> None:
    """Field tables built per call must never be mistaken for one another: CPython hands a freed dict's
    id to the next dict, so a cache keyed by id alone mixes them up (it once lost `chainId`)."""
    from clave.core.gojson import decode_struct, decode_uint64, pointer

    def decode_with_fresh_table(names: list[str]) -> dict[str, int]:
        table = {name: pointer(decode_uint64) for name in names}
        return decode_struct({name: "0x1" for name in names}, table, "S", "T")

    for _ in range(50):
        assert decode_with_fresh_table(["address", "storageKeys"]) == {"address": 1, "storageKeys": 1}
        assert decode_with_fresh_table(["chainId", "nonce", "r", "s"]) == {"chainId": 1, "nonce": 1, "r": 1, "s": 1}


@pytest.mark.parametrize(
    "value, kind, go_type",
    [
        ("x", "string", "string"),
        (1, "number", "float64"),
        (1.5, "number", "float64"),
        (True, "bool", "bool"),
        ([], "array", "[]interface {}"),
        ({}, "object", "map[string]interface {}"),
        (None, "null", "<nil>"),
    ],
)
def test_json_kind_and_go_type_name(value, kind, go_type) -> None:
    # encoding/json's UnmarshalTypeError names the JSON kind; %T names the Go type it decoded to.
    assert json_kind(value) == kind
    assert go_type_name(value) == go_type


def test_go_json_error_is_a_request_error() -> None:
    exc = GoJSONError(value="number", go_type="string", hard=False)
    assert isinstance(exc, RequestError)
    assert exc.message == str(exc) == "json: cannot unmarshal number into Go value of type string"
    plain = GoJSONError("missing required field 'address' for AccessTuple")
    assert plain.message == str(plain) == "missing required field 'address' for AccessTuple"


def test_slices_and_maps() -> None:
    strings = slice_of(decode_uint64, "[]hexutil.Uint64")
    assert strings(None) is None and strings([]) == [] and strings(["0x1"]) == [1]
    assert _err(strings, {}) == "json: cannot unmarshal object into Go value of type []hexutil.Uint64"
    table = map_of(decode_uint64, "map[string]hexutil.Uint64")
    assert table(None) is None and table({"a": "0x2"}) == {"a": 2}
    assert _err(table, []) == "json: cannot unmarshal array into Go value of type map[string]hexutil.Uint64"
