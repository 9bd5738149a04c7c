"""The shapes that cross the sidecar/enclave boundary, as typed dicts (they travel as CBOR maps, so they
stay plain dicts at run time; these types say what the keys are).

`NormalizedTx` is the transaction the sidecar builds from clef's or geth's request rules and the enclave
encodes (`clave.core.eth.transactions`) and signs. All integers are Python ints, byte strings `bytes`.
Keys that do not apply to a type are absent or None:

    type                  int 0..4
    chainId               int   (always present; legacy transactions are always EIP-155 protected)
    nonce, gas, value     int
    gasPrice              int          types 0, 1
    maxPriorityFeePerGas  int          types 2, 3, 4
    maxFeePerGas          int          types 2, 3, 4
    maxFeePerBlobGas      int          type 3
    to                    bytes(20) | None (None = contract creation; types 3 and 4 require it)
    data                  bytes
    accessList            list[tuple[bytes(20), list[bytes(32)]]]   types 1..4 (empty list allowed)
    blobVersionedHashes   list[bytes(32)]                           type 3 (non-empty)
    authorizationList     list[Authorization]                       type 4 (non-empty)

The enclave checks every key again (`transactions.check_tx`) before it signs: these types document the
contract, they do not enforce it.
"""

from __future__ import annotations

from typing import Required, TypedDict

AccessList = list[tuple[bytes, list[bytes]]]


class Authorization(TypedDict):
    """One EIP-7702 authorization tuple, already signed by its authority."""

    chainId: int
    address: bytes
    nonce: int
    yParity: int
    r: int
    s: int


class NormalizedTx(TypedDict, total=False):
    type: Required[int]
    chainId: Required[int]
    nonce: Required[int]
    gas: Required[int]
    value: Required[int]
    to: Required[bytes | None]
    data: Required[bytes]
    # None where a request left a fee out that its type needs: the enclave refuses it (check_tx), so the
    # sidecar's parsers need not repeat every per-type rule.
    gasPrice: int | None
    maxPriorityFeePerGas: int | None
    maxFeePerGas: int | None
    maxFeePerBlobGas: int | None
    accessList: AccessList | None
    blobVersionedHashes: list[bytes]
    authorizationList: list[Authorization]


class SignedTx(TypedDict):
    """The enclave's `sign_tx` reply: geth's MarshalBinary of the signed transaction and its parts."""

    raw: bytes
    hash: bytes
    y_parity: int
    r: int
    s: int


class MessageSignature(TypedDict):
    """The reply of the enclave's message signers (`sign_personal`, `sign_typed`, ...)."""

    signature: bytes  # r || s || y parity (0/1)
    digest: bytes
