"""account_signData input handling: which enclave operation a (content type, data) pair asks for.

clef (`signer/core/signed_data.go`) picks the signing format from the media type:

  data/validator               → EIP-191 v0: 0x19 0x00 ‖ validator address ‖ message
  application/x-clique-header  → clique seal hash of the RLP header (V 0/1)
  data/typed                   → EIP-712, the data being the hex of the typed data's JSON text
  anything else (text/plain)   → EIP-191 personal message

This module only decodes and checks the request, with clef's error texts; the enclave builds the
preimage and signs it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.messages import text_hash
from clave.core.eth.secp256k1 import recover_address
from clave.core.gojson import (
    go_quote,
    go_type_name,
    hexutil_decode,
    loads,
)

MIME_VALIDATOR = "data/validator"
MIME_CLIQUE = "application/x-clique-header"
MIME_TYPED = "data/typed"
MIME_TEXT = "text/plain"


@dataclass(frozen=True)
class SignDataRequest:
    """What to ask the enclave for.

    op "personal":  data = the message bytes (EIP-191 personal prefix applied by the enclave)
    op "validator": validator = 20-byte address, data = application data
    op "typed":     typed_data = the JSON value the hex decoded to, for enclave.encoding.typed_data
    op "clique":    data = header RLP as sent (the enclave appends the 65-byte seal space)
    """

    op: str
    media_type: str
    data: bytes = b""
    validator: bytes | None = None
    typed_data: Any = None

    @property
    def legacy_v(self) -> bool:
        """clef returns V as 27/28, except for clique headers (0/1)."""
        return self.op != "clique"

    def as_tuple(self) -> tuple[Any, ...]:
        if self.op == "validator":
            return ("validator", self.validator, self.data)
        if self.op == "typed":
            return ("typed", self.typed_data)
        return (self.op, self.data)


# --- mime.ParseMediaType ---------------------------------------------------------------------------------

_TSPECIALS = '()<>@,;:\\"/[]?='


def _is_token_char(ch: str) -> bool:
    return "\x20" < ch < "\x7f" and ch not in _TSPECIALS


def _consume_token(text: str) -> tuple[str, str]:
    for pos, ch in enumerate(text):
        if not _is_token_char(ch):
            return text[:pos], text[pos:]
    return text, ""


def _consume_value(text: str) -> tuple[str, str]:
    if not text:
        return "", text
    if text[0] != '"':
        return _consume_token(text)
    out: list[str] = []
    pos = 1
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            return "".join(out), text[pos + 1 :]
        if ch == "\\" and pos + 1 < len(text) and text[pos + 1] in _TSPECIALS:
            out.append(text[pos + 1])
            pos += 2
            continue
        if ch in "\r\n":
            return "", text
        out.append(ch)
        pos += 1
    return "", text  # no closing quote


def _go_space(ch: str) -> bool:
    # unicode.IsSpace: the Latin-1 set below, plus the White_Space runes above U+00FF.
    if ch <= "\xff":
        return ch in "\t\n\v\f\r \x85\xa0"
    return unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def _lstrip(text: str) -> str:
    pos = 0
    while pos < len(text) and _go_space(text[pos]):
        pos += 1
    return text[pos:]


def _strip(text: str) -> str:
    end = len(text)
    while end and _go_space(text[end - 1]):
        end -= 1
    return _lstrip(text[:end])


def _consume_param(text: str) -> tuple[str, str, str]:
    rest = _lstrip(text)
    if not rest.startswith(";"):
        return "", "", text
    rest = _lstrip(rest[1:])
    key, rest = _consume_token(rest)
    key = key.lower()
    if not key:
        return "", "", text
    rest = _lstrip(rest)
    if not rest.startswith("="):
        return "", "", text
    rest = _lstrip(rest[1:])
    value, after = _consume_value(rest)
    if value == "" and after == rest:
        return "", "", text
    return key, value, after


def parse_media_type(content_type: str) -> str:
    """Go's mime.ParseMediaType, keeping only the (lower-cased) media type; errors as Go words them."""
    base = content_type.split(";", 1)[0]
    media = _strip(base.lower())
    kind, rest = _consume_token(media)
    if not kind:
        raise RequestError("mime: no media type")
    if rest:
        if not rest.startswith("/"):
            raise RequestError("mime: expected slash after first token")
        sub, rest = _consume_token(rest[1:])
        if not sub:
            raise RequestError("mime: expected token after slash")
        if rest:
            raise RequestError("mime: unexpected content after media subtype")
    params: dict[str | None, dict[str, str]] = {}
    text = content_type[len(base) :]
    while text:
        text = _lstrip(text)
        if not text:
            break
        key, value, rest = _consume_param(text)
        if not key:
            if _strip(rest) == ";":
                break  # a trailing semicolon is fine
            raise RequestError("mime: invalid media parameter")
        # RFC 2231 pieces ("name*0") are checked for duplicates per base name, like Go does.
        bucket = params.setdefault(key.split("*", 1)[0] if "*" in key else None, {})
        if key in bucket and bucket[key] != value:
            raise RequestError("mime: duplicate parameter name")
        bucket[key] = value
        text = rest
    return media


# --- data decoding -----------------------------------------------------------------------------------


def _from_hex(data: Any) -> bytes:
    if not isinstance(data, str):
        raise ValueError(f"wrong type {go_type_name(data)}")
    return hexutil_decode(data)


def _validator(data: Any) -> tuple[bytes, bytes]:
    if not isinstance(data, dict):
        raise RequestError("validator input is not a map[string]interface{}")
    # A Go map lookup: exact key, no case folding.
    try:
        address = _from_hex(data.get("address"))
    except ValueError as exc:
        raise RequestError(f"validator address error: {exc}") from None
    if not address:
        raise RequestError("validator address is undefined")
    try:
        message = _from_hex(data.get("message"))
    except ValueError as exc:
        raise RequestError(f"message error: {exc}") from None
    if not message:
        raise RequestError("message is undefined")
    # common.BytesToAddress keeps the last 20 bytes, left-padding shorter input.
    return address[-20:].rjust(20, b"\0"), message


_PY_TO_GO_CONTEXT = (
    # json.JSONDecodeError.msg prefix → the context encoding/json's scanner names (scanner.go).
    ("Extra data", "after top-level value"),
    ("Expecting value", "looking for beginning of value"),
    ("Expecting property name", "looking for beginning of object key string"),
    ("Expecting ':' delimiter", "after object key"),
    ("Invalid control character", "in string literal"),
)


def _innermost_open(text: str, end: int) -> str:
    """The bracket ('{' or '[') still open at `end`, skipping strings."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:end]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_json_syntax_error(text: str, exc: json.JSONDecodeError) -> str:
    """Go's json.Unmarshal wording (`invalid character 'x' <context>`); Go's message has no position."""
    if not text.strip() or exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input"
    pos = exc.pos
    if exc.msg.startswith("Invalid \\escape"):
        pos, context = pos + 1, "in string escape code"  # Python points at the backslash, Go past it
    elif exc.msg.startswith("Expecting ',' delimiter"):
        context = "after object key:value pair" if _innermost_open(text, pos) == "{" else "after array element"
    else:
        context = next((go for py, go in _PY_TO_GO_CONTEXT if exc.msg.startswith(py)), "in JSON input")
    ch = text[pos] if pos < len(text) else ""
    if not ch:
        return "unexpected end of JSON input"
    quoted = "'\\''" if ch == "'" else "'" + go_quote(ch)[1:-1].replace('\\"', '"') + "'"
    return f"invalid character {quoted} {context}"


def _constant_error(text: str) -> str:
    """Go's error for the NaN / Infinity literals Python's decoder knows and Go's does not."""
    match = re.search(r"-?(NaN|Infinity)", text)
    if match is None:
        return "invalid character in JSON input"
    if match.group(0).startswith("-"):
        return f"invalid character '{match.group(1)[0]}' in numeric literal"
    return f"invalid character '{match.group(1)[0]}' looking for beginning of value"


def _typed(data: Any) -> Any:
    try:
        raw = _from_hex(data)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    text = raw.decode("utf-8", "replace")
    try:
        obj = loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(_go_json_syntax_error(text, exc)) from None
    except ValueError:  # NaN / Infinity, which Go's decoder does not accept
        raise RequestError(_constant_error(text)) from None
    # Decoding into apitypes.TypedData (case-insensitive keys, domain fields, Go's number rules) is
    # the enclave's typed-data encoder's job, as it is for account_signTypedData's object.
    return obj


def parse_sign_data(content_type: str, data: Any) -> SignDataRequest:
    """account_signData's content type and data → the enclave operation, or RequestError as clef says it."""
    media = parse_media_type(content_type)
    if media == MIME_VALIDATOR:
        validator, message = _validator(data)
        return SignDataRequest("validator", media, message, validator=validator)
    if media == MIME_TYPED:
        return SignDataRequest("typed", media, typed_data=_typed(data))
    try:
        raw = _from_hex(data)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return SignDataRequest("clique" if media == MIME_CLIQUE else "personal", media, raw)


# --- account_ecRecover --------------------------------------------------------------------------------


def ec_recover_check(sig: bytes) -> bytes:
    """clef's checks on an ecRecover signature; returns it with V moved from 27/28 to 0/1."""
    if len(sig) != 65:
        raise RequestError("signature must be 65 bytes long")
    if sig[64] not in (27, 28):
        raise RequestError("invalid Ethereum signature (V is not 27 or 28)")
    return sig[:64] + bytes([sig[64] - 27])


def ec_recover(data: bytes, sig: bytes) -> bytes:
    """account_ecRecover: the 20-byte address that signed `data` as a personal message."""
    normalized = ec_recover_check(sig)
    try:
        return recover_address(text_hash(data), normalized)
    except Exception:  # coincurve raises ValueError/Exception for unrecoverable signatures
        raise RequestError("recovery failed") from None
