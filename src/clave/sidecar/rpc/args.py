"""Positional arguments decoded with Go's rules, and the result encodings every method table shares.

A decoding error reads `invalid argument N: …` (-32602), as go-ethereum's rpc package reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from clave.core.errors import InvalidParams, MethodNotFound
from clave.core.eth.typed_data import TypedDataDecodeError, typed_data_preimage
from clave.core.gojson import (
    GoJSONError,
    MixedcaseAddress,
    decode_address,
    decode_bytes,
    decode_mixedcase,
    invalid_argument,
)
from clave.sidecar.rpc.dispatch import CallContext

T = TypeVar("T")


def hex_result(data: bytes) -> str:
    return "0x" + data.hex()


def v27(signature: bytes) -> bytes:
    """clef and geth return V as 27/28 for messages; the enclave returns the y parity 0/1."""
    return signature[:64] + bytes([signature[64] + 27])


def arg(params: list[Any], index: int, decode: Callable[[Any], T]) -> T:
    try:
        return decode(params[index])
    except GoJSONError as exc:
        raise invalid_argument(index, exc) from None


def mixed_address(params: list[Any], index: int) -> MixedcaseAddress:
    return arg(params, index, decode_mixedcase)


def address(params: list[Any], index: int) -> bytes:
    return arg(params, index, decode_address)


def data(params: list[Any], index: int) -> bytes:
    return arg(params, index, decode_bytes)


def typed_data(params: list[Any], index: int) -> dict[str, Any]:
    """A typed-data argument, checked as geth decodes and hashes it before anything else.

    Go's json.Unmarshal into apitypes.TypedData fails as an argument error (-32602); encoding errors
    (unknown types, missing fields, …) are plain errors (-32000).
    """
    typed = params[index]
    try:
        typed_data_preimage(typed)
    except TypedDataDecodeError as exc:
        raise InvalidParams(f"invalid argument {index}: {exc.message}") from None
    return typed


def ipc_only(ctx: CallContext, name: str) -> None:
    """Operator methods exist only over IPC; over HTTP they are as unknown as any missing method."""
    if ctx.transport != "ipc":
        raise MethodNotFound(name)
