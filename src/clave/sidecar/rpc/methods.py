"""The JSON-RPC method table: clef's `account_*` (extapi 6.1.0), geth's node-style `eth_*`, and the
operator-only `clave_*` management calls (IPC only).

Each handler decodes its arguments with Go's rules (`gojson`), applies clef's or geth's request rules
(`txargs`, `signdata`, `gnosis`), and asks the enclave to encode and sign. Nothing here signs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from clave.core.errors import InvalidParams, RequestError
from clave.core.eth.clique import clique_seal_preimage
from clave.core.eth.hashing import keccak256 as keccak
from clave.core.eth.messages import validator_message
from clave.core.eth.txjson import geth_tx_json
from clave.core.eth.typed_data import TypedDataDecodeError, typed_data_preimage
from clave.core.gojson import (
    GoJSONError,
    MixedcaseAddress,
    checksum,
    decode_address,
    decode_bytes,
    decode_mixedcase,
    invalid_argument,
)
from clave.sidecar.config import SidecarConfig
from clave.sidecar.observe.metrics import Metrics
from clave.sidecar.requests import gnosis, signdata, txargs
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.rpc.opera import validator_methods
from clave.sidecar.signing.signer import Signer

EXTERNAL_API_VERSION = "6.1.0"


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _addr(address: bytes) -> str:
    return "0x" + address.hex()


T = TypeVar("T")


def _arg(params: list[Any], index: int, decode: Callable[[Any], T]) -> T:
    """Decode positional argument `index` with Go's rules; errors read `invalid argument N: …` (-32602)."""
    try:
        return decode(params[index])
    except GoJSONError as exc:
        raise invalid_argument(index, exc) from None


def _mixed(params: list[Any], index: int) -> MixedcaseAddress:
    return _arg(params, index, decode_mixedcase)


def _plain_address(params: list[Any], index: int) -> bytes:
    return _arg(params, index, decode_address)


def _data(params: list[Any], index: int) -> bytes:
    return _arg(params, index, decode_bytes)


def _v27(signature: bytes) -> bytes:
    return signature[:64] + bytes([signature[64] + 27])


def _typed_argument(params: list[Any], index: int) -> dict[str, Any]:
    """A typed-data positional argument, checked as geth decodes and hashes it before anything else.

    Go's json.Unmarshal into apitypes.TypedData fails as an argument error (-32602); encoding errors
    (unknown types, missing fields, …) are plain errors (-32000).
    """
    typed = params[index]
    if not isinstance(typed, dict):
        raise InvalidParams(
            f"invalid argument {index}: json: cannot unmarshal "
            f"{_go_json_kind(typed)} into Go value of type apitypes.TypedData"
        )
    try:
        typed_data_preimage(typed)
    except TypedDataDecodeError as exc:
        raise InvalidParams(f"invalid argument {index}: {exc.message}") from None
    return typed


def _gnosis_plan(safe_tx: gnosis.GnosisSafeTx, chain_ids: list[int]) -> gnosis.GnosisPlan:
    """clef retries a mismatched safeTxHash with its one chain id; clave tries each configured chain id in
    order, and reports the mismatch against the first, as clef would with that one."""
    def digest_of(typed: dict[str, Any]) -> bytes:
        return keccak(typed_data_preimage(typed))

    first_error: RequestError | None = None
    for chain_id in chain_ids:
        try:
            return gnosis.gnosis_prepare(safe_tx, chain_id, digest_of)
        except RequestError as exc:
            if safe_tx.chain_id is not None or not exc.message.startswith("mismatched safeTxHash"):
                raise
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def build_methods(signer: Signer, config: SidecarConfig, metrics: Metrics) -> dict[str, Method]:
    chain_ids = config.chain_ids

    async def sign_message(kind: str, method: str, address: bytes, **params: Any) -> tuple[bytes, bytes]:
        signature, digest = await signer.sign(method, address, **params)
        metrics.signatures.labels(kind).inc()
        return signature, digest

    async def sign_tx(address: bytes, tx: dict[str, Any]) -> dict[str, Any]:
        result = await signer.sign_tx(address, tx)
        metrics.signatures.labels(f"tx{tx['type']}").inc()
        return {
            "raw": _hex(result["raw"]),
            "tx": geth_tx_json(tx, result["y_parity"], result["r"], result["s"], result["hash"], checked=True),
        }

    def refuse(reason: str, message: str) -> RequestError:
        metrics.refusals.labels(reason).inc()
        return RequestError(message)

    # -- clef external API -------------------------------------------------------------------------

    async def account_version(params: list[Any], ctx: CallContext) -> str:
        return EXTERNAL_API_VERSION

    async def account_list(params: list[Any], ctx: CallContext) -> list[str]:
        return [_addr(a) for a in await signer.addresses()]

    async def account_new(params: list[Any], ctx: CallContext) -> str:
        (address,) = await signer.new_accounts(1, exportable=False)
        return _addr(address)

    async def account_sign_transaction(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        args = _arg(params, 0, txargs.parse_send_tx_args)
        selector = None
        if len(params) > 1:
            if not isinstance(params[1], str):
                raise InvalidParams("invalid argument 1: json: cannot unmarshal non-string into Go value of type string")
            selector = params[1]
        messages = txargs.clef_validate(args, selector)
        rejection = txargs.clef_reject_message(messages)
        if rejection is not None:
            raise refuse("validation", rejection)
        tx = txargs.clef_to_tx(args, chain_ids)
        return await sign_tx(args.from_.address, tx)

    async def account_sign_data(params: list[Any], ctx: CallContext) -> str:
        if not isinstance(params[0], str):
            raise InvalidParams("invalid argument 0: json: cannot unmarshal non-string into Go value of type string")
        address = _mixed(params, 1)
        request = signdata.parse_sign_data(params[0], params[2])
        # clef builds the signing hash before it looks the account up (no account enumeration through
        # error texts), so a bad payload fails with the encoder's error even for an unknown account.
        # The enclave encodes again, from the same input, before it signs.
        if request.op == "typed":
            typed_data_preimage(request.typed_data)
        elif request.op == "validator":
            assert request.validator is not None
            validator_message(request.validator, request.data)
        elif request.op == "clique":
            clique_seal_preimage(request.data)
        if request.op == "typed":
            signature, _ = await sign_message("typed", "sign_typed", address.address, typed_data=request.typed_data)
        elif request.op == "validator":
            signature, _ = await sign_message(
                "validator", "sign_validator", address.address, validator=request.validator, data=request.data
            )
        elif request.op == "clique":
            signature, _ = await sign_message("clique", "sign_clique", address.address, header=request.data)
            return _hex(signature)  # clique seals carry V 0/1
        else:
            signature, _ = await sign_message("personal", "sign_personal", address.address, data=request.data)
        return _hex(_v27(signature))

    async def account_sign_typed_data(params: list[Any], ctx: CallContext) -> str:
        address = _mixed(params, 0)
        typed = _typed_argument(params, 1)
        signature, _ = await sign_message("typed", "sign_typed", address.address, typed_data=typed)
        return _hex(_v27(signature))

    async def account_ec_recover(params: list[Any], ctx: CallContext) -> str:
        return _addr(signdata.ec_recover(_data(params, 0), _data(params, 1)))

    async def account_sign_gnosis_safe_tx(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        address = _mixed(params, 0)
        safe_tx = _arg(params, 1, gnosis.parse_gnosis_tx)
        selector = params[2] if len(params) > 2 and isinstance(params[2], str) else None
        messages = txargs.clef_validate(gnosis.gnosis_validation_args(safe_tx), selector)
        rejection = txargs.clef_reject_message(messages)
        if rejection is not None:
            raise refuse("validation", rejection)
        plan = _gnosis_plan(safe_tx, chain_ids)
        signature, _ = await sign_message("gnosis", "sign_typed", address.address, typed_data=plan.typed_data)
        return gnosis.gnosis_result(plan.tx, _v27(signature), plan.digest, checksum(address.address))

    async def rpc_modules(params: list[Any], ctx: CallContext) -> dict[str, str]:
        # go-ethereum's rpc server answers this for every server; clef listed {"account", "rpc"}.
        modules = {"account": "1.0", "eth": "1.0", "rpc": "1.0"}
        if ctx.transport == "ipc":
            modules["clave"] = "1.0"
        return dict(sorted(modules.items()))

    # -- node-style eth_* --------------------------------------------------------------------------

    async def eth_accounts(params: list[Any], ctx: CallContext) -> list[str]:
        return [_addr(a) for a in await signer.addresses()]

    async def eth_sign(params: list[Any], ctx: CallContext) -> str:
        address, data = _plain_address(params, 0), _data(params, 1)
        signature, _ = await sign_message("personal", "sign_personal", address, data=data)
        return _hex(_v27(signature))

    async def eth_sign_transaction(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        args = _arg(params, 0, txargs.parse_transaction_args)
        tx = txargs.ethapi_to_tx(args, chain_ids, fee_cap_ether=config.tx_fee_cap_wei / 10**18)
        # geth signs for args.from(), the zero address when `from` is missing: "unknown account".
        return await sign_tx(args.from_ if args.from_ is not None else bytes(20), tx)

    async def eth_sign_typed_data_v4(params: list[Any], ctx: CallContext) -> str:
        address = _plain_address(params, 0)
        typed = params[1]
        if isinstance(typed, str):
            try:
                typed = json.loads(typed)
            except ValueError:
                raise InvalidParams("invalid argument 1: typed data string is not valid JSON") from None
        if not isinstance(typed, dict):
            raise InvalidParams("invalid argument 1: typed data must be an object or a JSON string")
        typed = _typed_argument([params[0], typed], 1)
        signature, _ = await sign_message("typed", "sign_typed", address, typed_data=typed)
        return _hex(_v27(signature))

    # -- operator-only management (IPC) ------------------------------------------------------------

    def ipc_only(ctx: CallContext, name: str) -> None:
        if ctx.transport != "ipc":
            raise RequestError(f"the method {name} does not exist/is not available", code=-32601)

    async def clave_attest(params: list[Any], ctx: CallContext) -> str:
        ipc_only(ctx, "clave_attest")
        nonce = _data(params, 0)
        if len(nonce) < 16:
            raise InvalidParams("invalid argument 0: nonce must be at least 16 bytes")
        result = await signer.client.call("attest", {"nonce": nonce}, timeout=30)
        return _hex(result["document"])

    async def clave_list_accounts(params: list[Any], ctx: CallContext) -> list[dict[str, Any]]:
        ipc_only(ctx, "clave_listAccounts")
        return [
            {"address": _addr(a.address), "origin": a.origin, "exportable": a.exportable, "created": a.created}
            for a in await signer.accounts()
        ]

    async def clave_new_account(params: list[Any], ctx: CallContext) -> list[str]:
        ipc_only(ctx, "clave_newAccount")
        options = params[0] if params else {}
        if not isinstance(options, dict):
            raise InvalidParams("invalid argument 0: expected an object")
        count = options.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidParams("invalid argument 0: count must be a positive integer")
        addresses = await signer.new_accounts(count, exportable=bool(options.get("exportable", False)))
        return [_addr(a) for a in addresses]

    async def clave_import_keyfile(params: list[Any], ctx: CallContext) -> str:
        ipc_only(ctx, "clave_importKeyfile")
        envelope = _data(params, 0)
        exportable = bool(params[1]) if len(params) > 1 else False
        return _addr(await signer.import_keyfile(envelope, exportable))

    async def clave_export_keyfile(params: list[Any], ctx: CallContext) -> str:
        ipc_only(ctx, "clave_exportKeyfile")
        address = _plain_address(params, 0)
        return await signer.export_keyfile(address, _data(params, 1))

    return {
        "account_version": Method(account_version),
        "account_list": Method(account_list),
        "account_new": Method(account_new),
        "account_signTransaction": Method(account_sign_transaction, 1, 2),
        "account_signData": Method(account_sign_data, 3, 3),
        "account_signTypedData": Method(account_sign_typed_data, 2, 2),
        "account_ecRecover": Method(account_ec_recover, 2, 2),
        "account_signGnosisSafeTx": Method(account_sign_gnosis_safe_tx, 2, 3),
        "rpc_modules": Method(rpc_modules),
        "eth_accounts": Method(eth_accounts),
        "eth_sign": Method(eth_sign, 2, 2),
        "eth_signTransaction": Method(eth_sign_transaction, 1, 1),
        "eth_signTypedData_v4": Method(eth_sign_typed_data_v4, 2, 2),
        "clave_attest": Method(clave_attest, 1, 1),
        "clave_listAccounts": Method(clave_list_accounts),
        "clave_newAccount": Method(clave_new_account, 0, 1),
        "clave_importKeyfile": Method(clave_import_keyfile, 1, 2),
        "clave_exportKeyfile": Method(clave_export_keyfile, 2, 2),
        **validator_methods(signer),
    }


def _go_json_kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    return "value"
