"""Go `encoding/json` + go-ethereum `hexutil` decoding rules, so requests fail (or pass) exactly as in geth.

clef and geth decode every RPC parameter with Go's JSON decoder into typed structs. A drop-in has to
reproduce what that accepts (keys matched case-insensitively, unknown keys ignored, `null` leaving a
pointer field nil) and the error texts it produces, because callers match on them:
`invalid argument 0: json: cannot unmarshal hex string without 0x prefix into Go struct field
SendTxArgs.gas of type hexutil.Uint64`.

Decoders take the value Python's `json` produced and raise `GoJSONError`; `decode_struct` adds the
`Go struct field S.f` context and follows Go's rule that a custom unmarshaler's error stops decoding at
once ("hard") while a plain type mismatch is remembered and reported after the rest was decoded ("soft").
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clave.core.errors import InvalidParams, RequestError
from clave.core.eth.hashing import keccak256 as keccak

# hexutil's decError texts (common/hexutil/hexutil.go).
ERR_EMPTY_STRING = "empty hex string"
ERR_SYNTAX = "invalid hex string"
ERR_MISSING_PREFIX = "hex string without 0x prefix"
ERR_ODD_LENGTH = "hex string of odd length"
ERR_EMPTY_NUMBER = 'hex string "0x"'
ERR_LEADING_ZERO = "hex number with leading zero digits"
ERR_UINT64_RANGE = "hex number > 64 bits"
ERR_BIG256_RANGE = "hex number > 256 bits"

# reflect.Type.String() of the types whose names appear in Go's error messages.
T_BIG = "*hexutil.Big"
T_UINT64 = "hexutil.Uint64"
T_BYTES = "hexutil.Bytes"
T_ADDRESS = "common.Address"
T_HASH = "common.Hash"
T_U256 = "*uint256.Int"

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
ZERO_ADDRESS = bytes(20)


class GoJSONError(RequestError):
    """A Go JSON decoding error.

    With `value` set it is a `*json.UnmarshalTypeError` (its text gains `Go struct field S.f` context
    when it happens inside a struct); otherwise `message` is printed verbatim, as Go prints errors
    returned by custom unmarshalers that are not type errors. `hard` follows Go's decoder: a custom
    unmarshaler's error stops decoding at once, a plain type mismatch is remembered ("soft").

    A RequestError (-32000, as clef reports a value it decoded late); positional arguments wrap it
    with `invalid_argument` (-32602).
    """

    def __init__(self, message: str = "", *, value: str | None = None, go_type: str = "", hard: bool = True):
        self.value = value
        self.go_type = go_type
        self.hard = hard
        self.struct = ""
        self.field = ""
        super().__init__(message)

    def add_context(self, struct: str, field: str) -> GoJSONError:
        # Go keeps one field stack for the whole decode and names the innermost struct; `nested`
        # clears `struct` so that, as Go's addErrorContext does for errors coming out of a custom
        # UnmarshalJSON, the outer struct's name replaces it.
        if self.value is not None:
            self.field = f"{field}.{self.field}" if self.field else field
            if not self.struct:
                self.struct = struct
        return self

    @property
    def message(self) -> str:  # type: ignore[override]
        if self.value is None:
            return self.plain
        if self.struct or self.field:
            return (
                f"json: cannot unmarshal {self.value} into Go struct field "
                f"{self.struct}.{self.field} of type {self.go_type}"
            )
        return f"json: cannot unmarshal {self.value} into Go value of type {self.go_type}"

    @message.setter
    def message(self, text: str) -> None:
        self.plain = text

    def __str__(self) -> str:
        return self.message


def invalid_argument(index: int, err: GoJSONError | str) -> InvalidParams:
    """go-ethereum's rpc wraps every positional decode error like this (-32602)."""
    return InvalidParams(f"invalid argument {index}: {err}")


def loads(text: str | bytes) -> Any:
    """`json.loads` that keeps, for keys repeated in an object, the position of the *last* occurrence.

    Go assigns object members in document order, so the last of `"gas"` and `"GAS"` wins; plain
    `json.loads` would keep the first key's position and break that rule for exact duplicates.
    """

    if isinstance(text, bytes):
        text = text.decode("utf-8")  # json.loads would also accept UTF-16/32; JSON-RPC bodies are UTF-8
    check_depth(text)
    try:
        return _DECODER.decode(text)
    except RecursionError:  # not reached below MAX_JSON_DEPTH; kept so a deep text is never a crash
        raise JSONDepthError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


# Nesting allowed in a JSON text. Go's encoding/json stops at 10,000; Python's C decoder dies of
# RecursionError near 1,000, cbor2 refuses 400 levels between the sidecar and the enclave, and the code that
# walks values recursively (typed data, %v formatting) needs headroom under both. No request needs more
# than a few dozen (a batch of typed data at EIP-712's depth limit is under 70).
MAX_JSON_DEPTH = 128


class JSONDepthError(ValueError):
    """A JSON text nested deeper than MAX_JSON_DEPTH: refused as unparseable before it is decoded."""


_NOT_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[^\[\]{}"]+', re.DOTALL)
_BRACKET_DELTA = [0] * 256
_BRACKET_DELTA[ord("[")] = _BRACKET_DELTA[ord("{")] = 1
_BRACKET_DELTA[ord("]")] = _BRACKET_DELTA[ord("}")] = -1


def check_depth(text: str) -> None:
    """Raise JSONDepthError when brackets outside strings nest deeper than MAX_JSON_DEPTH.

    Linear and mostly in C; a text with fewer brackets than the limit (most requests) is not scanned."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    brackets = _NOT_BRACKETS.sub("", text).encode()
    if brackets and max(itertools.accumulate(map(_BRACKET_DELTA.__getitem__, brackets))) > MAX_JSON_DEPTH:
        raise JSONDepthError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _last_key_wins(items: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(items) == len({key for key, _ in items}):
        return dict(items)  # no duplicate keys: the common case, built in C
    out: dict[str, Any] = {}
    for key, value in items:
        out.pop(key, None)
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    # Python's decoder accepts NaN, Infinity and -Infinity; Go's rejects them as invalid JSON.
    raise ValueError(f"invalid JSON literal {name}")


_DECODER = json.JSONDecoder(object_pairs_hook=_last_key_wins, parse_constant=_no_constants)


# What Python's json module returns for each JSON value kind → fmt's %T of that value once Go's decoder has
# put it in an interface{}.
_GO_INTERFACE_TYPES = {
    "null": "<nil>",
    "bool": "bool",
    "string": "string",
    "number": "float64",
    "array": "[]interface {}",
    "object": "map[string]interface {}",
}


def json_kind(value: Any) -> str:
    """The word Go's encoding/json uses for a JSON value in `json: cannot unmarshal <kind> into …`.

    decode.go names the kind of the JSON value, whatever the target: "string", "number", "bool",
    "array", "object" (a number that does not fit an integer kind reads "number <literal>", see
    `decode_uint`). It has no error for null (null into a non-pointer leaves it untouched), so decoders
    handle None before they get here; "null" is the word of literalStore's TextUnmarshaler branch, which
    current Go no longer reaches. go-ethereum's own unmarshalers have their own words instead (hexutil:
    "non-string" and its decError texts).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def go_type_name(value: Any) -> str:
    """Go's %T of a JSON value decoded into interface{} (`wrong type float64`, `…/map[string]interface {}`).

    Not the same word as `json_kind`: %T names the Go type the decoder chose (numbers are float64)."""
    return _GO_INTERFACE_TYPES[json_kind(value)]


def go_number_text(value: int | float) -> str:
    # Go quotes the literal; Python only has the parsed value, which prints the same for integers.
    return str(value) if isinstance(value, int) else repr(value)


def _fold(name: str) -> str:
    # Go's foldName: ASCII upper-cased, and the two non-ASCII runes whose simple-fold orbit contains
    # an ASCII letter (U+017F long s, U+212A Kelvin sign) folded onto it. Field names are ASCII, so
    # every other rune can never match and is kept as is.
    if name.isascii():
        return name.upper()  # the common case, at C speed: this runs for every key of every request
    out = []
    for ch in name:
        if ch == "\u017f":
            out.append("S")
        elif ch == "\u212a":
            out.append("K")
        elif ch < "\x80":
            out.append(ch.upper())
        else:
            out.append(ch)
    return "".join(out)


def field(obj: Any, name: str) -> Any:
    """The value Go would decode into struct field `name`: the last key, in document order, that
    matches case-insensitively; None when absent or JSON null."""
    if not isinstance(obj, Mapping):
        return None
    target = _fold(name)
    found = None
    for key, value in obj.items():
        if _fold(key) == target:
            found = value
    return found


FieldDecoder = Callable[[Any], Any]
# Folded field names per field table (normally module-level constants), by identity.
_FOLDED: dict[int, tuple[Mapping[str, Any], dict[str, str]]] = {}


def decode_struct(obj: Any, fields: Mapping[str, FieldDecoder], struct: str, go_type: str) -> dict[str, Any]:
    """Decode a JSON object into the named fields as Go decodes into a struct.

    Returns only the fields whose key appeared (value as the decoder returned it, None for a null
    pointer). A JSON null for the whole struct leaves it zero; any other non-object is a type error.
    """
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise GoJSONError(value=json_kind(obj), go_type=go_type, hard=False)
    cached = _FOLDED.get(id(fields))
    if cached is not None and cached[0] is fields:
        folded = cached[1]
    else:
        folded = {_fold(name): name for name in fields}
        if len(_FOLDED) < 256:  # field tables are module constants; never let a stray table grow this
            # The table itself is kept alive with its folding, so its id can never be reused by another.
            _FOLDED[id(fields)] = (fields, folded)
    out: dict[str, Any] = {}
    saved: GoJSONError | None = None
    for key, value in obj.items():
        name = folded.get(_fold(key))
        if name is None:
            continue  # unknown keys are ignored
        try:
            out[name] = fields[name](value)
        except GoJSONError as exc:
            exc.add_context(struct, name)
            if exc.hard:
                raise
            if saved is None:
                saved = exc
    if saved is not None:
        raise saved
    return out


def nested(decoder: FieldDecoder) -> FieldDecoder:
    """A struct decoded by its own UnmarshalJSON (gencodec types): any inner error stops the outer decode."""

    def run(value: Any) -> Any:
        try:
            return decoder(value)
        except GoJSONError as exc:
            exc.hard = True
            exc.struct = ""
            raise

    return run


def pointer(decoder: FieldDecoder) -> FieldDecoder:
    """A pointer field: JSON null sets it to nil (None)."""

    def run(value: Any) -> Any:
        return None if value is None else decoder(value)

    return run


def _container(value: Any, kind: type, go_type: str) -> bool:
    """Whether a slice or map field holds something: False for null (nil), True for a JSON value of the
    container's `kind`; anything else is a soft type error."""
    if value is None:
        return False
    if not isinstance(value, kind):
        raise GoJSONError(value=json_kind(value), go_type=go_type, hard=False)
    return True


def slice_of(decoder: FieldDecoder, go_type: str) -> FieldDecoder:
    """A Go slice: null → nil (None), `[]` → empty (not None), anything but an array → soft type error."""

    def run(value: Any) -> Any:
        return [decoder(item) for item in value] if _container(value, list, go_type) else None

    return run


def map_of(decoder: FieldDecoder, go_type: str) -> FieldDecoder:
    """A Go map with string keys: null → nil (None), anything but an object → soft type error."""

    def run(value: Any) -> Any:
        return {key: decoder(item) for key, item in value.items()} if _container(value, dict, go_type) else None

    return run


# --- hexutil -----------------------------------------------------------------------------------------


def _type_error(text: str, go_type: str) -> GoJSONError:
    # hexutil.wrapTypeError: decErrors become UnmarshalTypeErrors whose Value is the error text.
    return GoJSONError(value=text, go_type=go_type, hard=True)


def _non_string(go_type: str) -> GoJSONError:
    return GoJSONError(value="non-string", go_type=go_type, hard=True)


def _go_bytes(text: str) -> str:
    # Go measures and indexes strings in UTF-8 bytes; one char per byte keeps lengths and the
    # "odd length" / "has length %d" checks identical for non-ASCII input.
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


_HEX_RUN = re.compile(r"[0-9a-fA-F]*")  # the regex engine checks a run of digits far faster than a loop


def _check_number_text(text: str) -> str:
    if text == "":
        return ""  # empty strings are allowed and mean zero
    if not (len(text) >= 2 and text[0] == "0" and text[1] in "xX"):
        raise ValueError(ERR_MISSING_PREFIX)
    digits = text[2:]
    if digits == "":
        raise ValueError(ERR_EMPTY_NUMBER)
    if len(digits) > 1 and digits[0] == "0":
        raise ValueError(ERR_LEADING_ZERO)
    return digits


def _parse_hex_quantity(text: str, max_digits: int, range_error: str) -> int:
    digits = _check_number_text(text)
    if len(digits) > max_digits:
        raise ValueError(range_error)
    if not _HEX_RUN.fullmatch(digits):
        raise ValueError(ERR_SYNTAX)
    return int(digits, 16) if digits else 0


def _decode_quantity(value: Any, go_type: str, max_digits: int, range_error: str) -> int:
    """The UnmarshalJSON of hexutil's quantities: a JSON string, then hexutil's decErrors as type errors."""
    if not isinstance(value, str):
        raise _non_string(go_type)
    try:
        return _parse_hex_quantity(_go_bytes(value), max_digits, range_error)
    except ValueError as exc:
        raise _type_error(str(exc), go_type) from None


def decode_big(value: Any, go_type: str = T_BIG) -> int:
    """hexutil.Big (≤256 bits); `go_type` lets hexutil.U256 reuse it (same rules, `*uint256.Int`)."""
    return _decode_quantity(value, go_type, 64, ERR_BIG256_RANGE)


def decode_u256(value: Any) -> int:
    return decode_big(value, T_U256)


def decode_uint64(value: Any) -> int:
    return _decode_quantity(value, T_UINT64, 16, ERR_UINT64_RANGE)


def _check_text(text: str) -> str:
    if text == "":
        return ""
    if len(text) >= 2 and text[0] == "0" and text[1] in "xX":
        text = text[2:]
    else:
        raise ValueError(ERR_MISSING_PREFIX)
    if len(text) % 2:
        raise ValueError(ERR_ODD_LENGTH)
    return text


def _unhex(digits: str) -> bytes:
    if not _HEX_RUN.fullmatch(digits):
        raise ValueError(ERR_SYNTAX)
    return bytes.fromhex(digits)


def decode_bytes(value: Any) -> bytes:
    """hexutil.Bytes: `0x`-prefixed, even length; `""` and `"0x"` are empty."""
    if not isinstance(value, str):
        raise _non_string(T_BYTES)
    try:
        return _unhex(_check_text(_go_bytes(value)))
    except ValueError as exc:
        raise _type_error(str(exc), T_BYTES) from None


def decode_fixed(value: Any, size: int, go_type: str) -> bytes:
    """hexutil.UnmarshalFixedJSON: the length error is a plain error (no `json: …` prefix)."""
    if not isinstance(value, str):
        raise _non_string(go_type)
    try:
        digits = _check_text(_go_bytes(value))
    except ValueError as exc:
        raise _type_error(str(exc), go_type) from None
    if len(digits) // 2 != size:
        raise GoJSONError(f"hex string has length {len(digits)}, want {size * 2} for {go_type}")
    try:
        return _unhex(digits)
    except ValueError as exc:
        raise _type_error(str(exc), go_type) from None


def decode_address(value: Any) -> bytes:
    return decode_fixed(value, 20, T_ADDRESS)


def decode_hash(value: Any) -> bytes:
    return decode_fixed(value, 32, T_HASH)


def hexutil_decode(text: str) -> bytes:
    """hexutil.Decode (not the JSON unmarshaler): `""` is an error here, `"0x"` is empty."""
    if text == "":
        raise ValueError(ERR_EMPTY_STRING)
    if not (len(text) >= 2 and text[0] == "0" and text[1] in "xX"):
        raise ValueError(ERR_MISSING_PREFIX)
    digits = text[2:]
    if any(c not in _HEX_DIGITS for c in digits):
        raise ValueError(ERR_SYNTAX)  # encoding/hex reports a bad byte before an odd length
    if len(digits) % 2:
        raise ValueError(ERR_ODD_LENGTH)
    return bytes.fromhex(digits)


# --- common.MixedcaseAddress ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)  # recipients repeat (contracts), and this runs for every `to`
def checksum(address: bytes) -> str:
    """EIP-55 form, as `common.Address.Hex()`.

    Written out instead of eth_utils.to_checksum_address because that one costs ~25 µs (type dispatch,
    validation) and runs for every `to` of every transaction; tests compare the two on random addresses.
    """
    lower = address.hex()
    digest = keccak(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(lower, digest[:40], strict=True))


@dataclass(frozen=True)
class MixedcaseAddress:
    """common.MixedcaseAddress: the address plus the exact string the caller sent."""

    address: bytes
    original: str = ""

    def valid_checksum(self) -> bool:
        return self.original == checksum(self.address)

    @property
    def hex(self) -> str:
        return "0x" + self.address.hex()

    def to_json(self) -> str:
        # MarshalJSON re-emits the original, with the prefix normalised to lower-case `0x`.
        if self.original[:2] in ("0x", "0X"):
            return "0x" + self.original[2:]
        return "0x" + self.original

    def __str__(self) -> str:
        return f"{self.original} [chksum {'ok' if self.valid_checksum() else 'INVALID'}]"

    @classmethod
    def from_address(cls, address: bytes) -> MixedcaseAddress:
        return cls(address, checksum(address))


ZERO_MIXEDCASE = MixedcaseAddress(ZERO_ADDRESS, "")


def decode_mixedcase(value: Any) -> MixedcaseAddress:
    return MixedcaseAddress(decode_fixed(value, 20, T_ADDRESS), value)


# --- plain Go kinds ------------------------------------------------------------------------------------


def decode_string(value: Any, go_type: str = "string") -> str | None:
    """A Go string: null leaves it unchanged (None), a non-string is a soft type error."""
    if value is None or isinstance(value, str):
        return value
    raise GoJSONError(value=json_kind(value), go_type=go_type, hard=False)


def decode_uint(value: Any, bits: int, go_type: str) -> int | None:
    """A Go unsigned integer kind from a JSON number; null leaves it unchanged (None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GoJSONError(value=json_kind(value), go_type=go_type, hard=False)
    if isinstance(value, float) or not 0 <= value < 1 << bits:
        raise GoJSONError(value=f"number {go_number_text(value)}", go_type=go_type, hard=False)
    return value


def decode_uint8(value: Any) -> int | None:
    return decode_uint(value, 8, "uint8")


# --- common/math and math/big -------------------------------------------------------------------------


def parse_big256(text: str) -> int | None:
    """common/math.ParseBig256: decimal or 0x-hex, optional sign (big.Int.SetString), ≤256 bits."""
    if text == "":
        return 0
    if text[:2] in ("0x", "0X"):
        digits, base = text[2:], 16
    else:
        digits, base = text, 10
    sign = 1
    if digits[:1] in ("+", "-"):
        sign = -1 if digits[0] == "-" else 1
        digits = digits[1:]
    allowed = _HEX_DIGITS if base == 16 else frozenset("0123456789")
    if digits == "" or any(c not in allowed for c in digits):
        return None
    number = int(digits, base)
    if number.bit_length() > 256:
        return None
    return sign * number


def go_quote(text: str) -> str:
    """Go's %q of a string (strconv.Quote)."""
    out = ['"']
    escapes = {
        '"': '\\"',
        "\\": "\\\\",
        "\a": "\\a",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\v": "\\v",
    }
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _raw_json(value: Any) -> str:
    # The raw JSON text Go would quote; Python re-serialises it compactly.
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decode_decimal256(value: Any, go_type: str = "math.Decimal256") -> int | None:
    """common/math.Decimal256 (a TextUnmarshaler): only strings; null leaves it zero (None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise GoJSONError(value=json_kind(value), go_type=go_type, hard=False)
    number = parse_big256(value)
    if number is None:
        raise GoJSONError(f"invalid hex or decimal integer {go_quote(value)}")
    return number


def decode_hex_or_decimal256(value: Any) -> int:
    """common/math.HexOrDecimal256.UnmarshalJSON: strips quotes if present, then ParseBig256."""
    text = value if isinstance(value, str) else _raw_json(value)
    number = parse_big256(text)
    if number is None:
        raise GoJSONError(f"invalid hex or decimal integer {go_quote(text)}")
    return number


def decode_big_int(value: Any) -> int | None:
    """math/big.Int.UnmarshalJSON: a JSON integer literal (base-0 syntax); null leaves it unchanged."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise GoJSONError(f"math/big: cannot unmarshal {go_quote(_raw_json(value))} into a *big.Int")


# --- encoding -----------------------------------------------------------------------------------------


def encode_quantity(value: int) -> str:
    """hexutil.EncodeBig / Uint64: minimal hex, `0x0` for zero."""
    if value < 0:
        raise ValueError("negative quantity")
    return hex(value)


def encode_bytes(value: bytes) -> str:
    return "0x" + value.hex()


def go_sharp_x(value: bytes) -> str:
    """Go's %#x of a byte slice: `0x…`, and nothing at all for an empty slice."""
    return "0x" + value.hex() if value else ""
