"""Clique (PoA) seal preimage for clef's `application/x-clique-header` content type.

clef (signer/core/signed_data.go, eb429a062a) decodes the RLP `types.Header`; if `extra` is shorter than
the 65-byte seal it appends 65 zero bytes (it assumes the seal was already cut off); then it signs
`clique.SealHash(header)` = keccak256 of `CliqueRLP(header)` (consensus/clique/clique.go
`encodeSigHeader`): the 15 classic fields with the last 65 bytes of `extra` removed, plus `baseFee` when
present. Headers carrying post-Shanghai fields make geth panic ("unexpected withdrawal hash value in
clique"); here that is a RequestError with the same text.
"""

from __future__ import annotations

from clave.core.errors import RequestError
from clave.core.eth import rlp

_SEAL = 65  # crypto.SignatureLength

# types.Header in RLP order: (field, kind). The first 15 are mandatory; the rest are rlp:"optional".
_HEADER = (
    ("ParentHash", "hash"),
    ("UncleHash", "hash"),
    ("Coinbase", "address"),
    ("Root", "hash"),
    ("TxHash", "hash"),
    ("ReceiptHash", "hash"),
    ("Bloom", "bloom"),
    ("Difficulty", "big"),
    ("Number", "big"),
    ("GasLimit", "uint64"),
    ("GasUsed", "uint64"),
    ("Time", "uint64"),
    ("Extra", "bytes"),
    ("MixDigest", "hash"),
    ("Nonce", "nonce"),
    ("BaseFee", "big"),
    ("WithdrawalsHash", "hash"),
    ("BlobGasUsed", "uint64"),
    ("ExcessBlobGas", "uint64"),
    ("ParentBeaconRoot", "hash"),
    ("RequestsHash", "hash"),
    ("BlockAccessListHash", "hash"),
    ("SlotNumber", "uint64"),
)
_MANDATORY = 15
_EXTRA, _BASE_FEE = 12, 15
_SIZES = {"hash": 32, "address": 20, "bloom": 256, "nonce": 8}
_GO_TYPES = {
    "hash": "common.Hash",
    "address": "common.Address",
    "bloom": "types.Bloom",
    "nonce": "types.BlockNonce",
    "big": "*big.Int",
    "uint64": "uint64",
    "bytes": "[]uint8",
}


def _field_error(msg: str, index: int) -> RequestError:
    name, kind = _HEADER[index]
    return RequestError(f"rlp: {msg} for {_GO_TYPES[kind]}, decoding into (types.Header).{name}")


def _check_field(item: rlp.Item, index: int) -> None:
    """go-ethereum's rlp decoding rules for one header field (canonical ints, exact array sizes)."""
    kind = _HEADER[index][1]
    if isinstance(item, list):
        raise _field_error("expected input string or byte", index)
    if kind in _SIZES:
        if len(item) < _SIZES[kind]:
            raise _field_error("input string too short", index)
        if len(item) > _SIZES[kind]:
            raise _field_error("input string too long", index)
    elif kind in ("big", "uint64"):
        if item[:1] == b"\x00":
            raise _field_error("non-canonical integer (leading zero bytes)", index)
        if kind == "uint64" and len(item) > 8:
            raise _field_error("input string too long", index)


def _decode_header(header_rlp: bytes) -> list[bytes]:
    try:
        fields = rlp.decode(header_rlp)
    except rlp.RLPError as e:
        raise RequestError(str(e)) from None
    if not isinstance(fields, list):
        raise RequestError("rlp: expected input list for types.Header")
    for i, item in enumerate(fields):  # in order, as geth's decoder meets them
        if i == len(_HEADER):
            raise RequestError("rlp: input list has too many elements for types.Header")
        _check_field(item, i)
    if len(fields) < _MANDATORY:
        raise RequestError("rlp: too few elements for types.Header")
    return fields  # type: ignore[return-value]  # _check_field rejected nested lists


def clique_seal_preimage(header_rlp: bytes) -> bytes:
    """CliqueRLP of the header clef would build from `header_rlp`; its keccak256 is what gets signed."""
    if type(header_rlp) is not bytes:
        raise RequestError("clique header must be bytes")
    fields = _decode_header(header_rlp)
    if len(fields) > _BASE_FEE + 1:
        raise RequestError("unexpected withdrawal hash value in clique")
    # clef (signed_data.go at eb429a062a) always appends 65 zero bytes of room for the seal, and clique's
    # SealHash drops the last 65 bytes of extra again: the hash covers `extra` exactly as sent.
    return rlp.wrap_list(b"".join(rlp.encode_bytes(f) for f in fields))
