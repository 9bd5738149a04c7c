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
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.hashing import keccak256

_REFERENCE_TYPE = re.compile(r"[A-Za-z]\w*(\[\d*\])*", re.ASCII)  # Go RE2: \w and \d are ASCII
_HEX = re.compile(r"[0-9a-fA-F]*")
_DEC_INT = re.compile(r"[+-]?[0-9]+")
_HEX_INT = re.compile(r"[+-]?[0-9a-fA-F]+")
_PRIMITIVES = frozenset(
    ["address", "bool", "string", "bytes", "int", "uint"]
    + [f"bytes{n}" for n in range(1, 33)]
    + [f"{p}{n}" for p in ("int", "uint") for n in range(8, 257, 8)]
)
_INT64 = 1 << 63


class _Big(int):
    """A *math.HexOrDecimal256 value (the domain's chainId): exact, printed in decimal by %v."""


class TypedDataDecodeError(RequestError):
    """The JSON value does not decode into geth's apitypes.TypedData (Go's json.Unmarshal fails).

    geth reports these as JSON-RPC argument errors (-32602 `invalid argument N: …`) when the typed data is
    a positional parameter, and as plain errors when it is decoded later (account_signData data/typed).
    """


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
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, _Big):
        return "*math.HexOrDecimal256"
    if isinstance(v, (int, float)):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "[]interface {}"
    return "map[string]interface {}"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _go_quote(s: str) -> str:
    """strconv.Quote (%q)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _json_kind(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _utf8(s: str) -> bytes:
    """Go's JSON decoder turns unpaired UTF-16 surrogates into U+FFFD; Python keeps them."""
    try:
        return s.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s).encode()


def _mismatch(enc_type: str, value: object) -> RequestError:
    return RequestError(f"provided data '{_go_fmt(value)}' doesn't match type '{enc_type}'")


# --- decoding the request: encoding/json into apitypes.TypedData --------------------------------------


def _fold(obj: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """encoding/json matches keys to struct fields case-insensitively; unknown keys are dropped."""
    by_lower = {n.lower(): n for n in names}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in names else by_lower.get(key.lower())
        if name is not None:
            out[name] = value
    return out


def _go_string(value: object, struct: str, field: str) -> str:
    if value is None:
        return ""  # null leaves a Go string empty
    if not isinstance(value, str):
        raise TypedDataDecodeError(
            f"json: cannot unmarshal {_json_kind(value)} into Go struct field {struct}.{field} of type string"
        )
    return value


def _parse_big256(text: str) -> int | None:
    """math.ParseBig256: '' is 0, 0x/0X is hex, else decimal; a sign is allowed; at most 256 bits."""
    if text == "":
        return 0
    if text[:2] in ("0x", "0X"):
        digits, base, pattern = text[2:], 16, _HEX_INT
    else:
        digits, base, pattern = text, 10, _DEC_INT
    if not pattern.fullmatch(digits):
        return None
    value = int(digits, base)
    return None if abs(value).bit_length() > 256 else value


def _hex_or_decimal(value: object) -> _Big:
    """math.HexOrDecimal256.UnmarshalJSON: the raw JSON text, without quotes, through ParseBig256."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    parsed = _parse_big256(text)
    if parsed is None:
        raise TypedDataDecodeError(f"invalid hex or decimal integer {_go_quote(text)}")
    return _Big(parsed)


def _check_json_numbers(value: object) -> None:
    """encoding/json cannot put a number outside float64's range into an interface{}."""
    if isinstance(value, list):
        for item in value:
            _check_json_numbers(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_json_numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            raise TypedDataDecodeError("json: cannot unmarshal number into Go value of type float64")


def _parse_types(value: object) -> dict[str, list[_Field] | None]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypedDataDecodeError(
            f"json: cannot unmarshal {_json_kind(value)} into Go struct field TypedData.types "
            "of type apitypes.Types"
        )
    types: dict[str, list[_Field] | None] = {}
    for key, entries in value.items():
        if entries is None:
            types[key] = None  # the key exists, but geth's `Types[key] != nil` is false
            continue
        if not isinstance(entries, list):
            raise TypedDataDecodeError(
                f"json: cannot unmarshal {_json_kind(entries)} into Go struct field TypedData.types "
                "of type []apitypes.Type"
            )
        fields = []
        for entry in entries:
            if entry is None:
                entry = {}
            if not isinstance(entry, dict):
                raise TypedDataDecodeError(
                    f"json: cannot unmarshal {_json_kind(entry)} into Go struct field TypedData.types "
                    "of type apitypes.Type"
                )
            e = _fold(entry, ("name", "type"))
            fields.append(
                _Field(
                    _go_string(e.get("name"), "Type.types", "name"),
                    _go_string(e.get("type"), "Type.types", "type"),
                )
            )
        types[key] = fields
    return types


_DOMAIN_KEYS = ("name", "version", "chainId", "verifyingContract", "salt")


class _TypedData:
    def __init__(self, typed: object) -> None:
        if not isinstance(typed, dict):
            raise TypedDataDecodeError(
                f"json: cannot unmarshal {_json_kind(typed)} into Go value of type apitypes.TypedData"
            )
        top = _fold(typed, ("types", "primaryType", "domain", "message"))
        self.types = _parse_types(top.get("types"))
        self.primary_type = _go_string(top.get("primaryType"), "TypedData", "primaryType")
        domain = top.get("domain")
        if domain is None:
            domain = {}
        if not isinstance(domain, dict):
            raise TypedDataDecodeError(
                f"json: cannot unmarshal {_json_kind(domain)} into Go struct field TypedData.domain "
                "of type apitypes.TypedDataDomain"
            )
        d = _fold(domain, _DOMAIN_KEYS)
        self.domain: dict[str, Any] = {}
        chain_id = d.get("chainId")
        if chain_id is not None:
            self.domain["chainId"] = _hex_or_decimal(chain_id)
        for key in ("name", "version", "verifyingContract", "salt"):
            text = _go_string(d.get(key), "TypedDataDomain.domain", key)
            if text:  # TypedDataDomain.Map() leaves out empty strings
                self.domain[key] = text
        message = top.get("message")
        if message is None:
            message = {}
        if not isinstance(message, dict):
            raise TypedDataDecodeError(
                f"json: cannot unmarshal {_json_kind(message)} into Go struct field TypedData.message "
                "of type map[string]interface {}"
            )
        _check_json_numbers(message)
        self.message: dict[str, Any] = message

    # -- validation (Types.validate, TypedDataDomain.validate) --

    def validate(self) -> None:
        for key, fields in self.types.items():
            if key == "":
                raise RequestError("empty type key")
            for i, field in enumerate(fields or ()):
                if field.type == "":
                    raise RequestError(f"type {_go_quote(key)}:{i}: empty Type")
                if field.name == "":
                    raise RequestError(f"type {_go_quote(key)}:{i}: empty Name")
                if key == field.type:
                    raise RequestError(f"type {_go_quote(field.type)} cannot reference itself")
                base = field.type.split("[")[0]
                if base in _PRIMITIVES:
                    continue
                if base not in self.types:
                    raise RequestError(f"reference type {_go_quote(field.type)} is undefined")
                if not _REFERENCE_TYPE.fullmatch(field.type):
                    raise RequestError(f"unknown reference type {_go_quote(field.type)}")
        if not self.domain:
            raise RequestError("domain is undefined")

    # -- encodeType --

    def dependencies(self, primary_type: str, found: list[str]) -> list[str]:
        primary_type = primary_type.split("[")[0]
        if primary_type in found or self.types.get(primary_type) is None:
            return found
        found = found + [primary_type]
        for field in self.types[primary_type] or ():
            for dep in self.dependencies(field.type, found):
                if dep not in found:
                    found.append(dep)
        return found

    def encode_type(self, primary_type: str) -> bytes:
        deps = self.dependencies(primary_type, [])
        if deps:
            deps = [primary_type] + sorted(deps[1:])
        out = []
        for dep in deps:
            part = dep + "(" + "".join(f"{f.type} {f.name}," for f in self.types.get(dep) or ())
            out.append(part[:-1] + ")")  # geth truncates the last byte: the "," or, with no fields, "("
        return _utf8("".join(out))

    # -- encodeData --

    def encode_data(self, primary_type: str, data: Mapping[str, Any], depth: int) -> bytes:
        fields = self.types.get(primary_type) or []
        if len(fields) < len(data):
            raise RequestError(f"there is extra data provided in the message ({len(fields)} < {len(data)})")
        out = [keccak256(self.encode_type(primary_type))]
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
    """hexutil.Decode of a string: 0x/0X prefix, even length, hex digits; '' is an error."""
    if not isinstance(value, str) or value[:2] not in ("0x", "0X"):
        return None
    digits = value[2:]
    if len(digits) % 2 or not _HEX.fullmatch(digits):
        return None
    return bytes.fromhex(digits)


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
        b = _parse_big256(value)
        if b is None:
            raise RequestError(f"invalid hex or decimal integer {_go_quote(value)}")
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
    td.validate()  # geth validates at every EncodeData call; once up front gives the same outcome
    return td


def encode_type(typed: Mapping[str, Any], primary_type: str) -> bytes:
    """`Name(type name,...)Dep(...)`: primary first, then dependencies sorted. Not validated, as in geth."""
    return _TypedData(typed).encode_type(primary_type)


def encode_data(typed: Mapping[str, Any], primary_type: str, data: Mapping[str, Any]) -> bytes:
    """typeHash || enc(field1) || ... (geth's EncodeData)."""
    td = _load(typed)
    _check_json_numbers(data)
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
