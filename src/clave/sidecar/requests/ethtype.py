"""An explicit transaction `type` on the `eth_*` namespace, honoured as anvil honours it.

geth's `TransactionArgs` has no `type` field: it ignores one, defaults to type 2 and turns any request
with `gasPrice` into a legacy transaction, dropping an access list. ethers, viem, web3.py and cast all
send `type`, and anvil builds exactly that type. So on `eth_*`, when `type` is present:

* 0x0 legacy: `gasPrice`; no 1559 fees, blob or authorization fields, no (non-empty) access list.
* 0x1 EIP-2930: `gasPrice` and an access list (empty when absent); no 1559, blob or authorization fields.
* 0x2 EIP-1559: `maxFeePerGas`/`maxPriorityFeePerGas`; no `gasPrice`, blob hashes or authorizations.
* 0x3 EIP-4844: blob hashes; no `gasPrice` or authorizations.
* 0x4 EIP-7702: an authorization list; no `gasPrice` or blob hashes.

A field that contradicts the requested type is refused with an error naming both; everything else goes
through geth's own checks (`txargs.ethapi_to_tx`). Without `type`, geth's rules apply unchanged. clef's
`account_*` namespace never reads `type` (clef does not either).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clave.core.errors import InvalidParams, RequestError
from clave.core.shapes import NormalizedTx
from clave.sidecar.requests import txargs

TYPE_NAMES = {0: "legacy", 1: "EIP-2930", 2: "EIP-1559", 3: "EIP-4844 blob", 4: "EIP-7702 set-code"}


def split_type(obj: Any, index: int = 0) -> tuple[Any, int | None]:
    """The request object without its `type` key (matched case-insensitively, as Go matches struct
    fields), and the type: None when absent or null. An int or a 0x-hex quantity; anything else is an
    argument error."""
    if not isinstance(obj, Mapping):
        return obj, None
    keys = [k for k in obj if isinstance(k, str) and k.lower() == "type"]
    if not keys:
        return obj, None
    rest = {k: v for k, v in obj.items() if k not in keys}
    value = obj[keys[-1]]
    if value is None:
        return rest, None
    return rest, _parse_type(value, index)


def _parse_type(value: Any, index: int) -> int:
    tx_type: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        tx_type = value
    elif isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) > 2:
        try:
            tx_type = int(value[2:], 16)
        except ValueError:
            tx_type = None
    if tx_type is None:
        raise InvalidParams(f"invalid argument {index}: transaction type must be an integer or a 0x-prefixed hex quantity")
    if tx_type not in TYPE_NAMES:
        raise RequestError(f"transaction type {value!r} not supported (clave signs types 0x0 to 0x4)")
    return tx_type


def _refuse(tx_type: int, field: str) -> RequestError:
    return RequestError(f"{field} cannot be used in a type {tx_type} ({TYPE_NAMES[tx_type]}) transaction")


def check_type(args: txargs.TransactionArgs, tx_type: int) -> None:
    """Refuse the fields that contradict an explicit `type`, and the missing fee fields it needs."""
    if tx_type in (0, 1):
        for name, value in (("maxFeePerGas", args.max_fee_per_gas),
                            ("maxPriorityFeePerGas", args.max_priority_fee_per_gas),
                            ("maxFeePerBlobGas", args.max_fee_per_blob_gas),
                            ("blobVersionedHashes", args.blob_versioned_hashes),
                            ("authorizationList", args.authorization_list)):
            if value is not None:
                raise _refuse(tx_type, name)
        if tx_type == 0 and args.access_list:
            raise _refuse(0, "accessList")
        if args.gas_price is None:
            raise RequestError(f"gasPrice not specified for a type {tx_type} ({TYPE_NAMES[tx_type]}) transaction")
        return
    if args.gas_price is not None:
        raise _refuse(tx_type, "gasPrice")
    if tx_type != 3:
        for name, value in (("maxFeePerBlobGas", args.max_fee_per_blob_gas),
                            ("blobVersionedHashes", args.blob_versioned_hashes)):
            if value is not None:
                raise _refuse(tx_type, name)
    if tx_type != 4 and args.authorization_list is not None:
        raise _refuse(tx_type, "authorizationList")
    if tx_type == 3 and args.blob_versioned_hashes is None:
        raise RequestError("blobVersionedHashes not specified for a type 3 (EIP-4844 blob) transaction")
    if tx_type == 4 and args.authorization_list is None:
        raise RequestError("authorizationList not specified for a type 4 (EIP-7702 set-code) transaction")


def typed_to_tx(
    args: txargs.TransactionArgs, tx_type: int | None, chain_ids: list[int], *, fee_cap_ether: float
) -> NormalizedTx:
    """geth's checks and build (`ethapi_to_tx`), then the explicit type: only type 1 differs from what
    geth builds from the same (consistent) fields, by keeping the access list."""
    if tx_type is not None:
        check_type(args, tx_type)
    tx = txargs.ethapi_to_tx(args, chain_ids, fee_cap_ether=fee_cap_ether)
    if tx_type == 1:
        tx["type"] = 1
        tx["accessList"] = list(args.access_list or [])
    assert tx_type is None or tx["type"] == tx_type, (tx_type, tx["type"])
    return tx
