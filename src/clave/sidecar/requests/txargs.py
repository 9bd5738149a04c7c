"""Transaction requests, as clef and geth understand them, turned into clave's normalized tx dict.

Two request shapes exist and they do not agree:

* clef's `SendTxArgs` (`account_signTransaction`, what geth's `--signer` sends): decoded, then graded
  by `signer/fourbyte/validation.go` (hard errors, then WARNING/CRITICAL/Info messages; any WARNING or
  CRITICAL rejects by default), then built by `SendTxArgs.ToTransaction`, whose type follows the fields
  present (blob hashes → 3, maxFeePerGas → 2, accessList → 1, else 0).
* geth's `TransactionArgs` (`eth_signTransaction`): its own required fields and fee rules
  (`internal/ethapi`), default type 2, and `gasPrice` forcing legacy, so it never builds type 1.

Nothing here signs; the enclave encodes and signs the normalized dict (`enclave.encoding`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from clave.core.errors import RequestError
from clave.core.eth.txjson import decode_access_list, decode_authorization_list
from clave.core.gojson import (
    ZERO_ADDRESS,
    ZERO_MIXEDCASE,
    MixedcaseAddress,
    decode_address,
    decode_big,
    decode_bytes,
    decode_fixed,
    decode_hash,
    decode_mixedcase,
    decode_struct,
    decode_uint8,
    decode_uint64,
    encode_quantity,
    go_quote,
    pointer,
    slice_of,
)
from clave.core.shapes import Authorization, NormalizedTx
from clave.sidecar.requests.abi_selector import AbiMismatch, verify_selector

WARN = "WARNING"
CRIT = "CRITICAL"
INFO = "Info"

SIDECAR_REFUSED = "blob sidecars are not supported by clave; send blobVersionedHashes"
DEFAULT_FEE_CAP_ETHER = 1.0  # geth --rpc.txfeecap
MAX_BLOBS_PER_TX = 6

AccessList = list[tuple[bytes, list[bytes]]]


@dataclass(frozen=True)
class ValidationMessage:
    type: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


# --- shared field decoders ---------------------------------------------------------------------------




def _blob(size: int, go_type: str) -> Callable[[Any], Any]:
    return slice_of(lambda v: decode_fixed(v, size, go_type), f"[]{go_type}")


_BLOB_FIELDS = {
    "maxFeePerBlobGas": pointer(decode_big),
    "blobVersionedHashes": slice_of(decode_hash, "[]common.Hash"),
    "blobs": _blob(131072, "kzg4844.Blob"),
    "commitments": _blob(48, "kzg4844.Commitment"),
    "proofs": _blob(48, "kzg4844.Proof"),
}


def _has_sidecar(args: SendTxArgs | TransactionArgs) -> bool:
    return args.blobs is not None or args.commitments is not None or args.proofs is not None


def _calldata(args: SendTxArgs | TransactionArgs) -> bytes:
    # Both Go types prefer "input" over "data".
    if args.input is not None:
        return args.input
    return args.data if args.data is not None else b""


# --- clef: SendTxArgs ---------------------------------------------------------------------------------


@dataclass
class SendTxArgs:
    """signer/core/apitypes.SendTxArgs. None = the Go pointer/slice was nil."""

    from_: MixedcaseAddress = ZERO_MIXEDCASE
    to: MixedcaseAddress | None = None
    gas: int = 0
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    value: int = 0
    nonce: int = 0
    data: bytes | None = None
    input: bytes | None = None
    access_list: AccessList | None = None
    chain_id: int | None = None
    max_fee_per_blob_gas: int | None = None
    blob_versioned_hashes: list[bytes] | None = None
    blob_version: int = 0
    blobs: list[bytes] | None = None
    commitments: list[bytes] | None = None
    proofs: list[bytes] | None = None


_SEND_TX_FIELDS = {
    "from": decode_mixedcase,
    "to": pointer(decode_mixedcase),
    "gas": decode_uint64,
    "gasPrice": pointer(decode_big),
    "maxFeePerGas": pointer(decode_big),
    "maxPriorityFeePerGas": pointer(decode_big),
    "value": decode_big,
    "nonce": decode_uint64,
    "data": pointer(decode_bytes),
    "input": pointer(decode_bytes),
    "accessList": decode_access_list,
    "chainId": pointer(decode_big),
    "blobVersion": decode_uint8,
    **_BLOB_FIELDS,
}

_ATTR = {
    "from": "from_",
    "gasPrice": "gas_price",
    "maxFeePerGas": "max_fee_per_gas",
    "maxPriorityFeePerGas": "max_priority_fee_per_gas",
    "accessList": "access_list",
    "chainId": "chain_id",
    "maxFeePerBlobGas": "max_fee_per_blob_gas",
    "blobVersionedHashes": "blob_versioned_hashes",
    "blobVersion": "blob_version",
}


def _fill(target: Any, got: dict[str, Any]) -> Any:
    for key, value in got.items():
        name = _ATTR.get(key, key)
        if value is None and not _nullable(target, name):
            continue  # JSON null leaves a non-pointer Go field at its zero value
        setattr(target, name, value)
    return target


def _nullable(target: Any, name: str) -> bool:
    return target.__dataclass_fields__[name].default is None


def parse_send_tx_args(obj: Any) -> SendTxArgs:
    """Decode account_signTransaction's first parameter. Raises GoJSONError (wrap with invalid_argument)."""
    return _fill(SendTxArgs(), decode_struct(obj, _SEND_TX_FIELDS, "SendTxArgs", "apitypes.SendTxArgs"))


def _clef_build_checks(args: SendTxArgs) -> None:
    """The errors clef's SendTxArgs.ToTransaction raises (validation calls it first), plus the cases
    where clef would crash or sign an unusable transaction, which clave refuses with a clear error."""
    if _has_sidecar(args):
        raise RequestError(SIDECAR_REFUSED)
    if args.blob_versioned_hashes is None:
        return
    if args.to is None:
        raise RequestError("transaction recipient must be set for blob transactions")
    # clef dereferences these unchecked (uint256.MustFromBig(nil) panics: "method handler crashed").
    for name, value in (
        ("maxFeePerGas", args.max_fee_per_gas),
        ("maxPriorityFeePerGas", args.max_priority_fee_per_gas),
        ("maxFeePerBlobGas", args.max_fee_per_blob_gas),
    ):
        if value is None:
            raise RequestError(f"{name} not specified")
    if not args.blob_versioned_hashes:
        raise RequestError("need at least 1 blob for a blob transaction")


def clef_validate(args: SendTxArgs, method_selector: str | None = None) -> list[ValidationMessage]:
    """signer/fourbyte ValidateTransaction, minus the embedded 4byte database lookup.

    Hard errors raise RequestError with clef's text; the rest come back as graded messages.
    """
    if args.data is not None and args.input is not None and args.data != args.input:
        raise RequestError('ambiguous request: both "data" and "input" are set and are not identical')
    _clef_build_checks(args)
    messages: list[ValidationMessage] = []
    data = _calldata(args)
    if args.to is None:
        # Contract creation: calldata is code, so no ABI checks and no fee checks.
        if not data:
            if args.value > 0:
                raise RequestError("transaction will create a contract with value but empty code")
            messages.append(ValidationMessage(CRIT, "Transaction will create a contract with empty code"))
        elif len(data) < 40:
            messages.append(
                ValidationMessage(
                    WARN,
                    f"Transaction will create a contract, but the payload is suspiciously small ({len(data)} bytes)",
                )
            )
        if method_selector is not None:
            messages.append(
                ValidationMessage(
                    WARN,
                    "Transaction will create a contract, but method selector supplied, indicating an intent to call a method",
                )
            )
        return messages
    if not args.to.valid_checksum():
        messages.append(ValidationMessage(WARN, "Invalid checksum on recipient address"))
    if args.to.address == ZERO_ADDRESS:
        messages.append(ValidationMessage(CRIT, "Transaction recipient is the zero address"))
    fee = _fee_message(args)
    if fee:
        messages.append(ValidationMessage(CRIT, fee))
    messages.extend(validate_call_data(method_selector, data))
    return messages


def _fee_message(args: SendTxArgs) -> str | None:
    # First match only, in clef's order.
    if args.gas_price is None and args.max_fee_per_gas is None:
        return "Neither 'gasPrice' nor 'maxFeePerGas' specified."
    if args.gas_price is None and args.max_priority_fee_per_gas is None:
        return "Neither 'gasPrice' nor 'maxPriorityFeePerGas' specified."
    if args.gas_price is not None and args.max_fee_per_gas is not None:
        return "Both 'gasPrice' and 'maxFeePerGas' specified."
    if args.gas_price is not None and args.max_priority_fee_per_gas is not None:
        return "Both 'gasPrice' and 'maxPriorityFeePerGas' specified."
    return None


def validate_call_data(method_selector: str | None, data: bytes) -> list[ValidationMessage]:
    """ValidateCallData. Without a selector clef would consult its 4byte database and warn when the
    selector is unknown; clave has no database and stays silent there (geth never sends a selector)."""
    if not data:
        return []
    if len(data) < 4:
        return [ValidationMessage(WARN, "Transaction data is not valid ABI (missing the 4 byte call prefix)")]
    messages = []
    if (len(data) - 4) % 32:
        messages.append(
            ValidationMessage(
                WARN,
                f"Transaction data is not valid ABI (length should be a multiple of 32 (was {len(data) - 4}))",
            )
        )
    if method_selector is None:
        return messages
    try:
        info = verify_selector(method_selector, data)
    except AbiMismatch as exc:
        messages.append(
            ValidationMessage(
                WARN, f"Transaction contains data, but provided ABI signature could not be matched: {exc}"
            )
        )
    else:
        messages.append(
            ValidationMessage(INFO, f"Transaction invokes the following method: {go_quote(info)}")
        )
    return messages


def clef_reject_message(messages: list[ValidationMessage]) -> str | None:
    """clef's reject mode (the default): any WARNING or CRITICAL refuses the request with this text."""
    bad = [m.message for m in messages if m.type in (WARN, CRIT)]
    return "validation failed: " + ",".join(bad) if bad else None


def clef_chain_id(requested: int | None, signer_chain_ids: list[int]) -> int:
    """The chain id clef signs with: the request's, which must be one of ours, else our first."""
    if not signer_chain_ids:
        raise ValueError("no chain id configured")
    if requested is None:
        return signer_chain_ids[0]
    if requested not in signer_chain_ids:
        raise RequestError(f"requested chainid {requested} does not match the configuration of the signer")
    return requested


def clef_tx_type(args: SendTxArgs) -> int:
    if args.blob_versioned_hashes is not None:
        return 3
    if args.max_fee_per_gas is not None:
        return 2
    if args.access_list is not None:
        return 1
    return 0


def clef_to_tx(args: SendTxArgs, signer_chain_ids: list[int]) -> NormalizedTx:
    """SendTxArgs.ToTransaction + the chain id clef signs with, as clave's normalized transaction.

    Legacy transactions get the chain id too: clef signs them EIP-155 with its configured chain id
    (LatestSignerForChainID), and a request naming another chain was already refused.
    """
    _clef_build_checks(args)
    chain_id = clef_chain_id(args.chain_id, signer_chain_ids)
    tx_type = clef_tx_type(args)
    tx: NormalizedTx = {
        "type": tx_type,
        "chainId": chain_id,
        "nonce": args.nonce,
        "gas": args.gas,
        "value": args.value,
        "to": args.to.address if args.to is not None else None,
        "data": _calldata(args),
    }
    if tx_type in (0, 1):
        tx["gasPrice"] = args.gas_price or 0  # nil becomes 0 in types.NewTx
    else:
        tx["maxPriorityFeePerGas"] = args.max_priority_fee_per_gas or 0
        tx["maxFeePerGas"] = args.max_fee_per_gas or 0
    if tx_type >= 1:
        tx["accessList"] = list(args.access_list or [])
    if tx_type == 3:
        tx["maxFeePerBlobGas"] = args.max_fee_per_blob_gas
        tx["blobVersionedHashes"] = list(args.blob_versioned_hashes or [])
    return tx


# --- geth: TransactionArgs (eth_signTransaction) -----------------------------------------------------


@dataclass
class TransactionArgs:
    """internal/ethapi.TransactionArgs. Every field is a Go pointer or slice: None = absent."""

    from_: bytes | None = None
    to: bytes | None = None
    gas: int | None = None
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    value: int | None = None
    nonce: int | None = None
    data: bytes | None = None
    input: bytes | None = None
    access_list: AccessList | None = None
    chain_id: int | None = None
    max_fee_per_blob_gas: int | None = None
    blob_versioned_hashes: list[bytes] | None = None
    blobs: list[bytes] | None = None
    commitments: list[bytes] | None = None
    proofs: list[bytes] | None = None
    authorization_list: list[Authorization] | None = None


_TX_ARGS_FIELDS = {
    "from": pointer(decode_address),
    "to": pointer(decode_address),
    "gas": pointer(decode_uint64),
    "gasPrice": pointer(decode_big),
    "maxFeePerGas": pointer(decode_big),
    "maxPriorityFeePerGas": pointer(decode_big),
    "value": pointer(decode_big),
    "nonce": pointer(decode_uint64),
    "data": pointer(decode_bytes),
    "input": pointer(decode_bytes),
    "accessList": decode_access_list,
    "chainId": pointer(decode_big),
    **_BLOB_FIELDS,
    "authorizationList": decode_authorization_list,
}


def parse_transaction_args(obj: Any) -> TransactionArgs:
    """Decode eth_signTransaction's parameter. Raises GoJSONError (wrap with invalid_argument)."""
    got = decode_struct(obj, _TX_ARGS_FIELDS, "TransactionArgs", "ethapi.TransactionArgs")
    args = TransactionArgs()
    for key, value in got.items():
        setattr(args, {**_ATTR, "authorizationList": "authorization_list"}.get(key, key), value)
    return args


def ethapi_tx_type(args: TransactionArgs) -> int:
    """ToTransaction(DynamicFeeTxType): the default is 2 and a gasPrice always means legacy."""
    if args.gas_price is not None:
        return 0
    if args.authorization_list is not None:
        return 4
    if args.blob_versioned_hashes is not None:
        return 3
    return 2


def _check_fees(args: TransactionArgs, london: bool) -> None:
    # setFeeDefaults, for a request that already carries a complete fee mechanism.
    if args.max_fee_per_blob_gas is not None and args.max_fee_per_blob_gas == 0:
        raise RequestError("maxFeePerBlobGas, if specified, must be non-zero")
    if args.gas_price is not None and (
        args.max_fee_per_gas is not None or args.max_priority_fee_per_gas is not None
    ):
        raise RequestError("both gasPrice and (maxFeePerGas or maxPriorityFeePerGas) specified")
    if args.gas_price is not None and args.authorization_list is not None:
        raise RequestError("both gasPrice and authorizationList specified")
    if args.gas_price is None:
        assert args.max_fee_per_gas is not None and args.max_priority_fee_per_gas is not None
        if args.max_fee_per_gas == 0:
            raise RequestError("maxFeePerGas must be non-zero")
        if args.max_fee_per_gas < args.max_priority_fee_per_gas:
            raise RequestError(
                f"maxFeePerGas ({encode_quantity(args.max_fee_per_gas)}) < "
                f"maxPriorityFeePerGas ({encode_quantity(args.max_priority_fee_per_gas)})"
            )
    elif args.gas_price == 0 and london:
        raise RequestError("gasPrice must be non-zero after london fork")


def check_tx_fee(gas_price: int, gas: int, cap_ether: float) -> None:
    """checkTxFee: the fee in ether as a float64, compared with --rpc.txfeecap (0 = no cap)."""
    if cap_ether == 0:
        return
    fee = float(Fraction(gas_price * gas, 10**18))
    if fee > cap_ether:
        raise RequestError(f"tx fee ({fee:.2f} ether) exceeds the configured cap ({cap_ether:.2f} ether)")


def ethapi_to_tx(
    args: TransactionArgs,
    chain_ids: list[int],
    *,
    fee_cap_ether: float = DEFAULT_FEE_CAP_ETHER,
    london: bool = True,
    max_blobs: int = MAX_BLOBS_PER_TX,
) -> NormalizedTx:
    """geth's eth_signTransaction checks (SignTransaction, setDefaults, checkTxFee) and ToTransaction.

    clave has no chain state, so nothing is estimated or filled from the chain: a request must carry
    what geth's eth_signTransaction requires anyway, plus maxFeePerBlobGas for blob transactions.
    """
    if not chain_ids:
        raise ValueError("no chain id configured")
    if args.gas is None:
        raise RequestError("gas not specified")
    if args.gas_price is None and (args.max_priority_fee_per_gas is None or args.max_fee_per_gas is None):
        raise RequestError("missing gasPrice or maxFeePerGas/maxPriorityFeePerGas")
    if args.nonce is None:
        raise RequestError("nonce not specified")
    if _has_sidecar(args):
        raise RequestError(SIDECAR_REFUSED)
    _check_fees(args, london)
    if args.data is not None and args.input is not None and args.data != args.input:
        raise RequestError(
            'both "data" and "input" are set and not equal. Please use "input" to pass transaction call data'
        )
    hashes = args.blob_versioned_hashes
    if hashes is not None and not hashes:
        raise RequestError("need at least 1 blob for a blob transaction")
    if hashes is not None and len(hashes) > max_blobs:
        raise RequestError(f"too many blobs in transaction (have={len(hashes)}, max={max_blobs})")
    if args.authorization_list is not None and not args.authorization_list:
        raise RequestError("need at least one authorization for a set-code transaction")
    data = _calldata(args)
    if args.to is None:
        if hashes is not None:
            raise RequestError('missing "to" in blob transaction')
        if not data:
            raise RequestError("contract creation without any data provided")
        if args.authorization_list is not None:
            raise RequestError('authorizationList provided for contract creation, but "to" field is missing')
    chain_id = args.chain_id if args.chain_id is not None else chain_ids[0]
    if chain_id not in chain_ids:
        raise RequestError(f"chainId does not match node's (have={chain_id}, want={chain_ids[0]})")

    tx_type = ethapi_tx_type(args)
    tx: NormalizedTx = {
        "type": tx_type,
        "chainId": chain_id,
        "nonce": args.nonce,
        "gas": args.gas,
        "value": args.value or 0,
        "to": args.to,
        "data": data,
    }
    if tx_type == 0:
        tx["gasPrice"] = args.gas_price
    else:
        tx["maxPriorityFeePerGas"] = args.max_priority_fee_per_gas
        tx["maxFeePerGas"] = args.max_fee_per_gas
        tx["accessList"] = list(args.access_list or [])
    if tx_type == 3:
        if args.max_fee_per_blob_gas is None:
            raise RequestError("maxFeePerBlobGas not specified")
        tx["maxFeePerBlobGas"] = args.max_fee_per_blob_gas
        tx["blobVersionedHashes"] = list(hashes or [])
    if tx_type == 4:
        tx["authorizationList"] = [a.copy() for a in args.authorization_list or []]
    fee_per_gas = tx["gasPrice"] if tx_type == 0 else tx["maxFeePerGas"]
    assert fee_per_gas is not None  # the checks above required a complete fee mechanism
    check_tx_fee(fee_per_gas, tx["gas"], fee_cap_ether)
    return tx
