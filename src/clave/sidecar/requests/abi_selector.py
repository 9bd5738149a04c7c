"""clef's check of calldata against a caller-supplied method selector (`signer/fourbyte/abi.go`
verifySelector, with go-ethereum's `abi.ParseSelector`), for the optional second argument of
`account_signTransaction` and `account_signGnosisSafeTx`. geth never sends a selector; other clef clients
may. Decoding is eth-abi's; the selector grammar and the texts are Go's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import eth_abi
from eth_abi.grammar import BasicType, TupleType, parse

from clave.core.eth.hashing import keccak256
from clave.core.gojson import checksum, go_quote


class AbiMismatch(Exception):
    """The calldata does not match the selector; the text is clef's, for its WARNING message."""

    pass


class _SelectorSyntax(Exception):
    pass


def _is_alpha(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _is_digit(c: int) -> bool:
    return 0x30 <= c <= 0x39


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _parse_token(sel: bytes, ident: bool) -> tuple[bytes, bytes]:
    if not sel:
        raise _SelectorSyntax("empty token")
    first = sel[0]
    if not (_is_alpha(first) or (ident and first in b"$_")):
        raise _SelectorSyntax(f"invalid token start: {chr(first)}")
    pos = 1
    while pos < len(sel) and (_is_alpha(sel[pos]) or _is_digit(sel[pos]) or (ident and sel[pos] in b"$_")):
        pos += 1
    return sel[:pos], sel[pos:]


def _parse_elementary(sel: bytes) -> tuple[str, bytes]:
    try:
        token, rest = _parse_token(sel, False)
    except _SelectorSyntax as exc:
        raise _SelectorSyntax(f"failed to parse elementary type: {exc}") from None
    parsed = token
    while rest[:1] == b"[":
        parsed += b"["
        rest = rest[1:]
        while rest and _is_digit(rest[0]):
            parsed += rest[:1]
            rest = rest[1:]
        if rest[:1] != b"]":
            # Go reports the first byte of the whole type here, not the offending one.
            raise _SelectorSyntax(f"failed to parse array: expected ']', got {chr(sel[0])}")
        parsed += b"]"
        rest = rest[1:]
    return _text(parsed), rest


def _parse_type(sel: bytes) -> tuple[Any, bytes]:
    if not sel:
        raise _SelectorSyntax("empty type")
    if sel[:1] == b"(":
        return _parse_composite(sel)
    return _parse_elementary(sel)


def _parse_composite(sel: bytes) -> tuple[list[Any], bytes]:
    if not sel:
        # Go indexes the empty string here and panics ("method handler crashed").
        raise _SelectorSyntax("expected '(', got end of input")
    if sel[:1] != b"(":
        raise _SelectorSyntax(f"expected '(', got {chr(sel[0])}")
    try:
        parsed, rest = _parse_type(sel[1:])
    except _SelectorSyntax as exc:
        raise _SelectorSyntax(f"failed to parse type: {exc}") from None
    result = [parsed]
    while rest and rest[:1] != b")":
        try:
            parsed, rest = _parse_type(rest[1:])  # the separator byte is skipped, whatever it is
        except _SelectorSyntax as exc:
            raise _SelectorSyntax(f"failed to parse type: {exc}") from None
        result.append(parsed)
    if rest[:1] != b")":
        raise _SelectorSyntax(f"expected ')', got '{_text(rest)}'")
    if rest[1:3] == b"[]":
        return [*result, "[]"], rest[3:]
    return result, rest[1:]


@dataclass
class _Arg:
    type: str
    components: list[_Arg] | None = None
    kind: str = ""  # canonical type string (abi.Type.String())
    name: str = ""


@dataclass
class _Method:
    name: str
    inputs: list[_Arg] = field(default_factory=list)

    @property
    def sig(self) -> str:
        return f"{self.name}({','.join(a.kind for a in self.inputs)})"

    def __str__(self) -> str:
        return f"function {self.name}({', '.join(f'{a.kind} {a.name}' for a in self.inputs)}) returns()"


def _assemble(args: list[Any]) -> list[_Arg]:
    out = []
    for index, arg in enumerate(args):
        if isinstance(arg, str):
            out.append(_Arg(arg, name=f"name{index}"))
            continue
        components = _assemble(arg)
        kind = "tuple"
        if components and components[-1].type == "[]":
            components, kind = components[:-1], "tuple[]"
        out.append(_Arg(kind, components, name=f"name{index}"))
    return out


def parse_selector(selector: str) -> _Method:
    """abi.ParseSelector. Raises AbiMismatch with clef's error text."""
    raw = selector.encode()
    try:
        name, rest = _parse_token(raw, True)
        if rest[:2] == b"()":
            args: list[Any] = []
            rest = rest[2:]
        else:
            args, rest = _parse_composite(rest)
    except _SelectorSyntax as exc:
        raise AbiMismatch(
            f"failed to parse selector: failed to parse selector '{selector}': {exc}"
        ) from None
    if rest:
        raise AbiMismatch(
            f"failed to parse selector: failed to parse selector '{selector}': unexpected string '{_text(rest)}'"
        )
    return _Method(_text(name), _assemble(args))


_TYPE_RE = re.compile(r"([a-zA-Z]+)(([0-9]+)(x([0-9]+))?)?")


def _resolve(arg: _Arg) -> str:
    """abi.NewType's checks; returns the canonical type string or raises ValueError with Go's text."""
    t = arg.type
    if t.count("[") != t.count("]"):
        raise ValueError("invalid arg type in abi")
    if "[" in t:
        cut = t.rindex("[")
        inner = _resolve(_Arg(t[:cut], arg.components))
        sizes = re.findall(r"[0-9]+", t[cut:])
        if len(sizes) > 1:
            raise ValueError("invalid formatting of array type")
        return inner + t[cut:]
    match = _TYPE_RE.search(t)
    if match is None:
        raise ValueError(f"invalid type '{t}'")
    size = 0
    if match.group(3):
        try:
            size = int(match.group(2))
        except ValueError:
            raise ValueError(
                f'abi: error parsing variable size: strconv.Atoi: parsing "{match.group(2)}": invalid syntax'
            ) from None
    elif match.group(0) in ("uint", "int"):
        raise ValueError(f"unsupported arg type: {t}")
    base = match.group(1)
    if base == "bytes" and size > 32:
        raise ValueError(f"unsupported arg type: {t}")
    if base == "tuple":
        return "(" + ",".join(_resolve(c) for c in arg.components or []) + ")"
    if base not in ("int", "uint", "bool", "address", "string", "bytes", "function"):
        raise ValueError(f"unsupported arg type: {t}")
    return t


def _abi_json(method: _Method) -> str:
    # json.Marshal([]abi.SelectorMarshaling{…}); ArgumentMarshaling has no json tags.
    def arg(a: _Arg) -> str:
        comps = "null" if a.components is None else "[" + ",".join(arg(c) for c in a.components) + "]"
        return f'{{"Name":"{a.name}","Type":"{a.type}","InternalType":"{a.type}","Components":{comps},"Indexed":false}}'

    return (
        f'[{{"name":"{method.name}","type":"function","inputs":[{",".join(arg(a) for a in method.inputs)}]}}]'
    )


def verify_selector(selector: str, calldata: bytes) -> str:
    """Check calldata against a caller-supplied selector; returns the decoded call as clef prints it."""
    method = parse_selector(selector)
    argdata = calldata[4:]
    if len(argdata) % 32:
        raise AbiMismatch(f"invalid call data; length should be a multiple of 32 bytes (was {len(argdata)})")
    try:
        for a in method.inputs:
            a.kind = _resolve(a)
            # Go's abi package lets some types through that eth_abi cannot decode (uint7): invalid here.
            if not eth_abi.is_encodable_type(a.kind):
                raise ValueError(f"unsupported arg type: {a.kind}")
    except Exception as exc:  # ValueError from _resolve, eth_abi's ABITypeError
        raise AbiMismatch(f"invalid method signature ({go_quote(_abi_json(method))}): {exc}") from None
    if keccak256(method.sig.encode())[:4] != calldata[:4]:
        raise AbiMismatch(f"no method with id: 0x{calldata[:4].hex()}")
    types = [a.kind for a in method.inputs]
    try:
        values = eth_abi.decode(types, argdata, strict=False)
    except Exception as exc:
        raise AbiMismatch(
            f"signature {go_quote(str(method))} matches, but arguments mismatch: {exc}"
        ) from None
    encoded = eth_abi.encode(types, values)
    if encoded != argdata:
        raise AbiMismatch(
            "WARNING: Supplied data is stuffed with extra data. "
            f"\nWant {argdata.hex()}\nHave {encoded.hex()}\nfor method {method.sig}"
        )
    shown = ",".join(
        f"{a.kind}: {_go_value(parse(a.kind), v)}" for a, v in zip(method.inputs, values, strict=True)
    )
    return f"{method.name}({shown})"


def _go_value(abi_type: Any, value: Any) -> str:
    # How Go's %v prints the values abi.UnpackValues returns.
    if abi_type.arrlist:
        item = abi_type.item_type
        return "[" + " ".join(_go_value(item, v) for v in value) + "]"
    if isinstance(abi_type, TupleType):
        return "{" + " ".join(_go_value(t, v) for t, v in zip(abi_type.components, value, strict=True)) + "}"
    assert isinstance(abi_type, BasicType)
    if abi_type.base == "address":
        return checksum(bytes.fromhex(value[2:]))
    if abi_type.base == "bool":
        return "true" if value else "false"
    if isinstance(value, bytes):
        return "[" + " ".join(str(b) for b in value) + "]"
    return str(value)
