"""EIP-712 typed data exactly as go-ethereum encodes it (`signer/core/apitypes/types.go`).

geth is stricter than most encoders, and a drop-in for clef must refuse what clef refuses:
  - the domain has only name, version, chainId, verifyingContract and salt (other keys are dropped, so
    declaring them in EIP712Domain fails); an all-empty domain is "domain is undefined";
  - a message field that is missing is an error, not zero; more keys than fields is an error;
  - JSON numbers are float64 in geth: integral and within int64, else an error;
  - integers also come as decimal or 0x strings; the size check is on bit length only (geth quirk:
    int8 accepts 255), negatives are two's complement over 256 bits;
  - bytes and bytesN take 0x hex strings only; bytesN must have exactly N bytes.
geth quirks are kept on purpose (a type with no fields encodes as "Name)"; primaryType EIP712Domain still
appends hashStruct(message)), because the digest must be the one geth would sign.

Input is the object `json.loads` produced. Error texts are geth's, including Go's %v formatting.

Bounded work: geth recomputes encodeType for every struct it hashes (cubic in the number of types) and has
no limits; clef signs whatever it is given. Here encodeType and typeHash are computed once per type per
document, and a document beyond the limits below is refused before any hashing (`TypedDataLimitError`,
a plain -32000 error, as geth's own encoding errors). The enclave runs this same code, so the same limits
hold there.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.hashing import keccak256
from clave.core.gojson import (
    GoJSONError,
    decode_hex_or_decimal256,
    decode_string,
    decode_struct,
    go_quote,
    go_type_name,
    hexutil_decode,
    json_kind,
    map_of,
    parse_big256,
    pointer,
    slice_of,
)

_REFERENCE_TYPE = re.compile(r"[A-Za-z]\w*(\[\d*\])*", re.ASCII)  # Go RE2: \w and \d are ASCII
_HEX = re.compile(r"[0-9a-fA-F]*")
_DEC_INT = re.compile(r"[+-]?[0-9]+")
_PRIMITIVES = frozenset(
    ["address", "bool", "string", "bytes", "int", "uint"]
    + [f"bytes{n}" for n in range(1, 33)]
    + [f"{p}{n}" for p in ("int", "uint") for n in range(8, 257, 8)]
)
_INT64 = 1 << 63

# Limits, generous for real typed data. The largest documents in use are Seaport's: a bulk order is
# `BulkOrder(OrderComponents[2]...[2] tree)` with up to 24 array levels above OrderComponents, OfferItem
# and ConsiderationItem (6 types, ~30 fields in all, depth ~27); Permit2's PermitBatchTransferFrom,
# Safe transactions and DAO votes have under 10 types and depth under 4. Nothing we know of comes near
# these, while each keeps one request's work to milliseconds (a 1,300-type document took 12 s before).
MAX_TYPES = 256  # entries in `types`, EIP712Domain included
MAX_FIELDS = 2048  # fields over all types: bounds every encodeType string (memoized per type)
MAX_DEPTH = 64  # struct and array levels below the primary type (geth's encodeData depth)
MAX_ARRAY = 1024  # elements in one array (Seaport's bulk-order arrays have 2)
MAX_VALUES = 65536  # values encoded in one document (fields of every struct and array element)
MAX_JSON_DEPTH = 128  # nesting of the message as JSON, checked before anything walks it recursively


class _Big(int):
    """A *math.HexOrDecimal256 value (the domain's chainId): exact, printed in decimal by %v."""


class TypedDataDecodeError(RequestError):
    """The JSON value does not decode into geth's apitypes.TypedData (Go's json.Unmarshal fails).

    geth reports these as JSON-RPC argument errors (-32602 `invalid argument N: …`) when the typed data is
    a positional parameter, and as plain errors when it is decoded later (account_signData data/typed).
    """


class TypedDataLimitError(RequestError):
    """The document is beyond one of clave's limits (MAX_TYPES, …): refused before any hashing, -32000."""


@dataclass(frozen=True)
class _Field:
    name: str
    type: str


# --- Go formatting, so error messages match geth's ----------------------------------------------------


def _go_float(f: float) -> str:
    """fmt's %v for a float64 (strconv 'g', shortest, exponent when < -4 or >= 6)."""
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    sign, digits_t, exponent = decimal.Decimal(repr(f)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digits_t)).rstrip("0") or "0"
    exponent += len(digits_t) - len(digits)
    point = len(digits) + exponent  # position of the decimal point after the first `point` digits
    exp10 = point - 1
    neg = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mant}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return neg + digits + "0" * (point - len(digits))
    return f"{neg}{digits[:point]}.{digits[point:]}"


def _go_fmt(v: object) -> str:
    """fmt's %v for the values encoding/json puts in a map[string]interface{}."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, _Big):
        return str(int(v))
    if isinstance(v, (int, float)):
        return _go_float(float(v))
    if isinstance(v, list):
        return "[" + " ".join(_go_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_fmt(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def _go_typename(v: object) -> str:
    """fmt's %T of a message value: what encoding/json put in the interface{}, or the domain's chainId."""
    return "*math.HexOrDecimal256" if isinstance(v, _Big) else go_type_name(v)


def _utf8(s: str) -> bytes:
    """Go's JSON decoder turns unpaired UTF-16 surrogates into U+FFFD; Python keeps them."""
    try:
        return s.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s).encode()


def _mismatch(enc_type: str, value: object) -> RequestError:
    return RequestError(f"provided data '{_go_fmt(value)}' doesn't match type '{enc_type}'")


# --- decoding the request: encoding/json into apitypes.TypedData --------------------------------------


def _hex_or_decimal(value: object) -> _Big:
    """The domain's chainId, a *math.HexOrDecimal256, kept as `_Big` so that %v and %T print it as Go does."""
    return _Big(decode_hex_or_decimal256(value))


def _check_json_numbers(value: object, depth: int = 0) -> None:
    """encoding/json cannot put a number outside float64's range into an interface{} (a soft error).

    Also refuses a message nested deeper than MAX_JSON_DEPTH, so nothing after this recurses too deep."""
    if isinstance(value, list | dict):
        if depth >= MAX_JSON_DEPTH:
            raise TypedDataLimitError(f"typed data nested deeper than {MAX_JSON_DEPTH} levels")
        for item in value if isinstance(value, list) else value.values():
            _check_json_numbers(item, depth + 1)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            raise GoJSONError("json: cannot unmarshal number into Go value of type float64", hard=False)


def _message(value: object) -> dict[str, Any] | None:
    """apitypes.TypedDataMessage, a map[string]interface{}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise GoJSONError(value=json_kind(value), go_type="map[string]interface {}", hard=False)
    _check_json_numbers(value)
    return value


_TYPE_FIELDS = {"name": decode_string, "type": decode_string}


def _type_entry(value: object) -> _Field:
    """apitypes.Type; a null entry is an empty Type, as Go leaves a struct untouched by null."""
    fields = decode_struct(value, _TYPE_FIELDS, "Type", "apitypes.Type")
    return _Field(fields.get("name") or "", fields.get("type") or "")


_DOMAIN_FIELDS = {
    "name": decode_string,
    "version": decode_string,
    "chainId": pointer(_hex_or_decimal),
    "verifyingContract": decode_string,
    "salt": decode_string,
}


def _domain(value: object) -> dict[str, Any]:
    return decode_struct(value, _DOMAIN_FIELDS, "TypedDataDomain", "apitypes.TypedDataDomain")


_TYPED_DATA_FIELDS = {
    "types": map_of(slice_of(_type_entry, "[]apitypes.Type"), "apitypes.Types"),
    "primaryType": decode_string,
    "domain": _domain,
    "message": _message,
}


def _check_type_count(count: int) -> None:
    if count > MAX_TYPES:
        raise TypedDataLimitError(f"typed data has {count} types, more than the {MAX_TYPES} allowed")


class _TypedData:
    def __init__(self, typed: object) -> None:
        # encoding/json into apitypes.TypedData: keys matched case-insensitively, document order, type
        # mismatches reported after the rest was decoded; null anywhere leaves the zero value.
        if isinstance(typed, dict):  # the type count first, before decoding a bomb's types
            for key, value in typed.items():
                if isinstance(key, str) and key.lower() == "types" and isinstance(value, dict):
                    _check_type_count(len(value))
        try:
            top = decode_struct(typed, _TYPED_DATA_FIELDS, "TypedData", "apitypes.TypedData")
        except GoJSONError as exc:
            raise TypedDataDecodeError(exc.message) from None
        # A key whose list is null exists, but geth's `Types[key] != nil` is false: kept as None.
        self.types: dict[str, list[_Field] | None] = top.get("types") or {}
        self.primary_type: str = top.get("primaryType") or ""
        domain = top.get("domain") or {}
        self.domain: dict[str, Any] = {}
        if domain.get("chainId") is not None:
            self.domain["chainId"] = domain["chainId"]
        for key in ("name", "version", "verifyingContract", "salt"):
            if domain.get(key):  # TypedDataDomain.Map() leaves out empty strings
                self.domain[key] = domain[key]
        self.message: dict[str, Any] = top.get("message") or {}
        self._type_hashes: dict[str, bytes] = {}
        self._values = 0  # values encoded so far, against MAX_VALUES

    # -- limits, before any hashing --

    def check_limits(self) -> None:
        _check_type_count(len(self.types))
        fields = sum(len(f or ()) for f in self.types.values())
        if fields > MAX_FIELDS:
            raise TypedDataLimitError(f"typed data has {fields} fields, more than the {MAX_FIELDS} allowed")

    def _count(self, n: int) -> None:
        self._values += n
        if self._values > MAX_VALUES:
            raise TypedDataLimitError(f"typed data has more than {MAX_VALUES} values")

    # -- validation (Types.validate, TypedDataDomain.validate) --

    def validate(self) -> None:
        for key, fields in self.types.items():
            if key == "":
                raise RequestError("empty type key")
            for i, field in enumerate(fields or ()):
                if field.type == "":
                    raise RequestError(f"type {go_quote(key)}:{i}: empty Type")
                if field.name == "":
                    raise RequestError(f"type {go_quote(key)}:{i}: empty Name")
                if key == field.type:
                    raise RequestError(f"type {go_quote(field.type)} cannot reference itself")
                base = field.type.split("[")[0]
                if base in _PRIMITIVES:
                    continue
                if base not in self.types:
                    raise RequestError(f"reference type {go_quote(field.type)} is undefined")
                if not _REFERENCE_TYPE.fullmatch(field.type):
                    raise RequestError(f"unknown reference type {go_quote(field.type)}")
        if not self.domain:
            raise RequestError("domain is undefined")

    # -- encodeType --

    def dependencies(self, primary_type: str) -> list[str]:
        """The types reachable from primary_type (itself first), as geth's recursive dependencies() finds
        them; iterative and linear in the fields, since only the first element's position matters."""
        primary_type = primary_type.split("[")[0]
        if self.types.get(primary_type) is None:
            return []
        found = [primary_type]
        seen = {primary_type}
        i = 0
        while i < len(found):
            for field in self.types[found[i]] or ():
                dep = field.type.split("[")[0]
                if dep not in seen and self.types.get(dep) is not None:
                    seen.add(dep)
                    found.append(dep)
            i += 1
        return found

    def type_hash(self, primary_type: str) -> bytes:
        """keccak256(encodeType), once per type per document (geth recomputes it for every struct)."""
        cached = self._type_hashes.get(primary_type)
        if cached is None:
            cached = self._type_hashes[primary_type] = keccak256(self.encode_type(primary_type))
        return cached

    def encode_type(self, primary_type: str) -> bytes:
        deps = self.dependencies(primary_type)
        if deps:
            deps = [primary_type] + sorted(deps[1:])
        out = []
        for dep in deps:
            part = dep + "(" + "".join(f"{f.type} {f.name}," for f in self.types.get(dep) or ())
            out.append(part[:-1] + ")")  # geth truncates the last byte: the "," or, with no fields, "("
        return _utf8("".join(out))

    # -- encodeData --

    def encode_data(self, primary_type: str, data: Mapping[str, Any], depth: int) -> bytes:
        if depth > MAX_DEPTH:
            raise TypedDataLimitError(f"typed data nested deeper than {MAX_DEPTH} structs and arrays")
        fields = self.types.get(primary_type) or []
        if len(fields) < len(data):
            raise RequestError(f"there is extra data provided in the message ({len(fields)} < {len(data)})")
        self._count(len(fields))
        out = [self.type_hash(primary_type)]
        for field in fields:
            enc_type, value = field.type, data.get(field.name)
            if enc_type.endswith("]"):
                out.append(self._encode_array(value, enc_type, depth))
            elif self.types.get(enc_type) is not None:
                if not isinstance(value, dict):
                    raise _mismatch(enc_type, value)
                out.append(keccak256(self.encode_data(enc_type, value, depth + 1)))
            else:
                out.append(_encode_primitive(enc_type, value))
        return b"".join(out)

    def _encode_array(self, value: object, enc_type: str, depth: int) -> bytes:
        if not isinstance(value, list):
            raise _mismatch(enc_type, value)
        if depth > MAX_DEPTH:
            raise TypedDataLimitError(f"typed data nested deeper than {MAX_DEPTH} structs and arrays")
        if len(value) > MAX_ARRAY:
            raise TypedDataLimitError(f"typed data array of {len(value)} elements, more than the {MAX_ARRAY} allowed")
        self._count(len(value))
        parsed = enc_type.split("[")[0]
        out = []
        for item in value:
            if isinstance(item, list):
                out.append(self._encode_array(item, parsed, depth + 1))
            elif item is None:
                raise _mismatch(parsed, item)  # geth panics on a null element (reflect on nil)
            elif self.types.get(parsed) is not None:
                if not isinstance(item, dict):
                    raise _mismatch(parsed, item)
                out.append(keccak256(self.encode_data(parsed, item, depth + 1)))
            else:
                out.append(_encode_primitive(parsed, item))
        return keccak256(b"".join(out))

    def hash_struct(self, primary_type: str, data: Mapping[str, Any]) -> bytes:
        return keccak256(self.encode_data(primary_type, data, 1))


# --- primitives (EncodePrimitiveValue) ----------------------------------------------------------------


def _go_atoi(text: str) -> int | None:
    if not _DEC_INT.fullmatch(text):
        return None
    value = int(text)
    return value if -_INT64 <= value < _INT64 else None


def _parse_bytes(value: object) -> bytes | None:
    """geth's parseBytes of a string: hexutil.Decode, any error meaning "no bytes"."""
    if not isinstance(value, str):
        return None
    try:
        return hexutil_decode(value)
    except ValueError:
        return None


def _parse_integer(enc_type: str, value: object) -> int:
    signed = enc_type.startswith("int")
    if enc_type in ("int", "uint"):
        length = 256
    else:
        suffix = enc_type[4:] if enc_type.startswith("uint") else enc_type[3:]
        size = _go_atoi(suffix)
        if size is None:
            raise RequestError(f"invalid size on integer: {suffix}")
        length = size
    b: int | None = None
    if isinstance(value, _Big):
        b = int(value)
    elif isinstance(value, str):
        b = parse_big256(value)
        if b is None:
            raise RequestError(f"invalid hex or decimal integer {go_quote(value)}")
    elif isinstance(value, float):
        if not (value.is_integer() and -_INT64 <= value < _INT64):
            raise RequestError(f"invalid float value {_go_float(value)} for type {enc_type}")
        b = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        # geth sees a float64. Outside int64 it errors; inside but above 2**53 geth would silently round,
        # which could sign a value the caller did not send, so that is refused too.
        if not (-_INT64 <= value < _INT64 and float(value) == value):
            raise RequestError(f"invalid float value {_go_float(float(value))} for type {enc_type}")
        b = value
    if b is None:
        raise RequestError(
            f"invalid integer value {_go_fmt(value)}/{_go_typename(value)} for type {enc_type}"
        )
    if abs(b).bit_length() > length:
        raise RequestError(f"integer larger than '{enc_type}'")
    if not signed and b < 0:
        raise RequestError(f"invalid negative value for unsigned type {enc_type}")
    return b


def _encode_primitive(enc_type: str, value: object) -> bytes:
    if enc_type == "address":
        if isinstance(value, str):
            digits = value[2:] if value[:2] in ("0x", "0X") else value
            if len(digits) == 40 and _HEX.fullmatch(digits):
                return bytes(12) + bytes.fromhex(digits)
        raise _mismatch(enc_type, value)
    if enc_type == "bool":
        if not isinstance(value, bool):
            raise _mismatch(enc_type, value)
        return (1 if value else 0).to_bytes(32, "big")
    if enc_type == "string":
        if not isinstance(value, str):
            raise _mismatch(enc_type, value)
        return keccak256(_utf8(value))
    if enc_type == "bytes":
        raw = _parse_bytes(value)
        if raw is None:
            raise _mismatch(enc_type, value)
        return keccak256(raw)
    if enc_type.startswith("bytes"):
        suffix = enc_type[5:]
        size = _go_atoi(suffix)
        if size is None:
            raise RequestError(f"invalid size on bytes: {suffix}")
        if size < 0 or size > 32:
            raise RequestError(f"invalid size on bytes: {size}")
        raw = _parse_bytes(value)
        if raw is None or len(raw) != size:
            raise _mismatch(enc_type, value)
        return raw + bytes(32 - size)
    if enc_type.startswith(("int", "uint")):
        return (_parse_integer(enc_type, value) % (1 << 256)).to_bytes(32, "big")
    raise RequestError(f"unrecognized type '{enc_type}'")


# --- public API -------------------------------------------------------------------------------------


def _load(typed: object) -> _TypedData:
    td = _TypedData(typed)
    td.check_limits()
    td.validate()  # geth validates at every EncodeData call; once up front gives the same outcome
    return td


def encode_type(typed: Mapping[str, Any], primary_type: str) -> bytes:
    """`Name(type name,...)Dep(...)`: primary first, then dependencies sorted. Not validated, as in geth."""
    td = _TypedData(typed)
    td.check_limits()
    return td.encode_type(primary_type)


def encode_data(typed: Mapping[str, Any], primary_type: str, data: Mapping[str, Any]) -> bytes:
    """typeHash || enc(field1) || ... (geth's EncodeData)."""
    td = _load(typed)
    try:
        _check_json_numbers(data)
    except GoJSONError as exc:
        raise TypedDataDecodeError(exc.message) from None
    return td.encode_data(primary_type, data, 1)


def hash_struct(typed: Mapping[str, Any], primary_type: str, data: Mapping[str, Any]) -> bytes:
    return keccak256(encode_data(typed, primary_type, data))


def domain_separator(typed: Mapping[str, Any]) -> bytes:
    td = _load(typed)
    return td.hash_struct("EIP712Domain", td.domain)


def typed_data_preimage(typed: Mapping[str, Any]) -> bytes:
    """0x19 0x01 || domainSeparator || hashStruct(primaryType, message), as clef's signTypedData."""
    td = _load(typed)
    return (
        b"\x19\x01" + td.hash_struct("EIP712Domain", td.domain) + td.hash_struct(td.primary_type, td.message)
    )
