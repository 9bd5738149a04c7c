"""clef's external API 6.1.0 (`account_*`), what geth, go-opera and sonic call through `--signer`.

Each handler decodes its arguments with Go's rules, applies clef's request rules (`txargs`, `signdata`,
`gnosis`), and asks the enclave to encode and sign. Nothing here signs.
"""

from __future__ import annotations

from typing import Any

from clave.core.errors import InvalidParams, RequestError
from clave.core.eth.clique import clique_seal_preimage
from clave.core.eth.hashing import keccak256
from clave.core.eth.messages import validator_message
from clave.core.eth.typed_data import typed_data_preimage
from clave.core.gojson import checksum
from clave.sidecar.requests import gnosis, signdata, txargs
from clave.sidecar.rpc import args
from clave.sidecar.rpc.args import hex_result, v27
from clave.sidecar.rpc.dispatch import CallContext, Method
from clave.sidecar.rpc.signing import SigningCalls

EXTERNAL_API_VERSION = "6.1.0"
ACCOUNT_NEW_OVER_HTTP = (
    "account_new over HTTP needs --http.auth-token-file (a bearer token); "
    "create accounts over IPC instead (clave account new)"
)


def gnosis_plan(safe_tx: gnosis.GnosisSafeTx, chain_ids: list[int]) -> gnosis.GnosisPlan:
    """clef retries a mismatched safeTxHash with its one chain id; clave tries each configured chain id in
    order, and reports the mismatch against the first, as clef would with that one."""
    def digest_of(typed: dict[str, Any]) -> bytes:
        return keccak256(typed_data_preimage(typed))

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


def check_sign_data_payload(request: signdata.SignDataRequest) -> None:
    """clef builds the signing hash before it looks the account up (no account enumeration through error
    texts), so a bad payload fails with the encoder's error even for an unknown account. The enclave
    encodes again, from the same input, before it signs."""
    if request.op == "typed":
        typed_data_preimage(request.typed_data)
    elif request.op == "validator":
        assert request.validator is not None
        validator_message(request.validator, request.data)
    elif request.op == "clique":
        clique_seal_preimage(request.data)


def clef_methods(sign: SigningCalls, chain_ids: list[int], *, http_account_new: bool = False) -> dict[str, Method]:
    """`http_account_new`: whether `account_new` may be called over HTTP (only when the HTTP endpoint
    requires a bearer token); over IPC it always may."""
    signer = sign.signer

    def reject_if_invalid(messages: list[txargs.ValidationMessage]) -> None:
        rejection = txargs.clef_reject_message(messages)
        if rejection is not None:
            raise sign.refuse("validation", rejection)

    async def account_version(params: list[Any], ctx: CallContext) -> str:
        return EXTERNAL_API_VERSION

    async def account_list(params: list[Any], ctx: CallContext) -> list[str]:
        return [hex_result(a) for a in await signer.addresses()]

    async def account_new(params: list[Any], ctx: CallContext) -> str:
        if ctx.transport == "http" and not http_account_new:
            # Without a token, anything on the host that reaches the port could fill the store with keys.
            raise RequestError(ACCOUNT_NEW_OVER_HTTP)
        (address,) = await signer.new_accounts(1, exportable=False)
        return hex_result(address)

    async def account_sign_transaction(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        send_args = args.arg(params, 0, txargs.parse_send_tx_args)
        selector = None
        if len(params) > 1:
            if not isinstance(params[1], str):
                raise InvalidParams("invalid argument 1: json: cannot unmarshal non-string into Go value of type string")
            selector = params[1]
        reject_if_invalid(txargs.clef_validate(send_args, selector))
        tx = txargs.clef_to_tx(send_args, chain_ids)
        return await sign.transaction(send_args.from_.address, tx)

    async def account_sign_data(params: list[Any], ctx: CallContext) -> str:
        if not isinstance(params[0], str):
            raise InvalidParams("invalid argument 0: json: cannot unmarshal non-string into Go value of type string")
        address = args.mixed_address(params, 1).address
        request = signdata.parse_sign_data(params[0], params[2])
        check_sign_data_payload(request)
        if request.op == "typed":
            signature = await sign.message("typed", "sign_typed", address, typed_data=request.typed_data)
        elif request.op == "validator":
            signature = await sign.message(
                "validator", "sign_validator", address, validator=request.validator, data=request.data
            )
        elif request.op == "clique":
            signature = await sign.message("clique", "sign_clique", address, header=request.data)
            return hex_result(signature)  # clique seals carry V 0/1
        else:
            signature = await sign.message("personal", "sign_personal", address, data=request.data)
        return hex_result(v27(signature))

    async def account_sign_typed_data(params: list[Any], ctx: CallContext) -> str:
        address = args.mixed_address(params, 0).address
        typed = args.typed_data(params, 1)
        signature = await sign.message("typed", "sign_typed", address, typed_data=typed)
        return hex_result(v27(signature))

    async def account_ec_recover(params: list[Any], ctx: CallContext) -> str:
        return hex_result(signdata.ec_recover(args.data(params, 0), args.data(params, 1)))

    async def account_sign_gnosis_safe_tx(params: list[Any], ctx: CallContext) -> dict[str, Any]:
        address = args.mixed_address(params, 0).address
        safe_tx = args.arg(params, 1, gnosis.parse_gnosis_tx)
        selector = params[2] if len(params) > 2 and isinstance(params[2], str) else None
        reject_if_invalid(txargs.clef_validate(gnosis.gnosis_validation_args(safe_tx), selector))
        plan = gnosis_plan(safe_tx, chain_ids)
        signature = await sign.message("gnosis", "sign_typed", address, typed_data=plan.typed_data)
        return gnosis.gnosis_result(plan.tx, v27(signature), plan.digest, checksum(address))

    return {
        "account_version": Method(account_version),
        "account_list": Method(account_list),
        "account_new": Method(account_new),
        "account_signTransaction": Method(account_sign_transaction, 1, 2),
        "account_signData": Method(account_sign_data, 3, 3),
        "account_signTypedData": Method(account_sign_typed_data, 2, 2),
        "account_ecRecover": Method(account_ec_recover, 2, 2),
        "account_signGnosisSafeTx": Method(account_sign_gnosis_safe_tx, 2, 3),
    }
