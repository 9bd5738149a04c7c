"""`clave policy show|check|sign|apply`, `clave freeze`, `clave unfreeze`: the custody policy of a running
clave. Admin keys are V3 keyfiles decrypted here, in the CLI; the enclave checks every signature."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clave.cli.client import add_common_options, connect, parse_admins, read_password
from clave.core.policy import authority
from clave.core.policy.schema import PolicyError, canonical_json, parse_policy


def _line_of(text: str, path: str) -> int | None:
    """The line (1-based) of a field path like `rules[2].value_max` in a YAML/JSON text, if PyYAML can tell."""
    try:
        import yaml
    except ImportError:
        return None
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    import re

    parts = [p for p in re.findall(r"[^.\[\]]+|\[\d+\]", path) if p != "policy"]
    for part in parts:
        if node is None:
            break
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            index = int(part[1:-1])
            node = node.value[index] if index < len(node.value) else None
        elif isinstance(node, yaml.MappingNode):
            key = part.strip("'\"")
            match = [(k, v) for k, v in node.value if k.value == key]
            if not match:
                return int(node.start_mark.line) + 1
            node = match[0][1] if part is not parts[-1] else match[0][0]
        else:
            break
    return int(node.start_mark.line) + 1 if node is not None else None


def load_document(path: str) -> tuple[bytes, Any]:
    """(canonical JSON bytes, parsed document) of a policy file, JSON or YAML; SystemExit naming the file,
    the line and the field on error."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"clave: {path}: {exc.strerror}") from None
    document: Any
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise SystemExit(f"clave: {path}: YAML needs PyYAML; write the policy as JSON") from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise SystemExit(f"clave: {path}{where}: not YAML: {getattr(exc, 'problem', exc)}") from None
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"clave: {path}:{exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from None
    try:
        parse_policy(document)
    except PolicyError as exc:
        line = _line_of(text, exc.message.split(":", 1)[0])
        raise SystemExit(f"clave: {path}{f':{line}' if line else ''}: {exc.message}") from None
    return canonical_json(document), document


def _admin(args: argparse.Namespace) -> Any:
    """The admin key from its V3 keyfile, decrypted here in the CLI (never sent anywhere)."""
    from eth_account import Account

    try:
        data = json.loads(Path(args.keyfile).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"clave: {args.keyfile}: cannot read the admin keyfile: {exc}") from None
    try:
        return Account.from_key(Account.decrypt(data, read_password(args.password_file)))
    except ValueError as exc:
        raise SystemExit(f"clave: {args.keyfile}: cannot decrypt the admin keyfile: {exc}") from None


def _status(args: argparse.Namespace) -> dict[str, Any]:
    with connect(args) as client:
        return client.call("clave_policyStatus")  # type: ignore[no-any-return]


def _set_and_sequence(args: argparse.Namespace) -> tuple[bytes, int]:
    """The admin set id and the next sequence number: given, or read from the running clave."""
    if args.admin_set_id and args.sequence:
        return bytes.fromhex(args.admin_set_id.removeprefix("0x")), int(args.sequence)
    status = _status(args)
    if not status.get("admin_set_id"):
        raise SystemExit("clave: this clave has no admin set: no custody policy can be applied (README \"Custody policy\")")
    set_id = bytes.fromhex((args.admin_set_id or status["admin_set_id"]).removeprefix("0x"))
    return set_id, int(args.sequence or status["sequence"] + 1)


def _sign(admin: Any, action: str, set_id: bytes, sequence: int, document_hash: bytes | None = None) -> str:
    typed = authority.typed_message(action, set_id, sequence, document_hash)
    return "0x" + bytes(admin.sign_typed_data(full_message=typed).signature).hex()


def _call(args: argparse.Namespace, method: str, *params: Any) -> int:
    from clave.sidecar.transports.ipc_client import RpcCallError

    with connect(args) as client:
        try:
            result = client.call(method, *params)
        except RpcCallError as exc:
            raise SystemExit(f"clave: {exc.message}") from None
    result.pop("policy", None)
    print(json.dumps(result, indent=2))
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    status = _status(args)
    if args.document:
        print(status.get("policy") or "")
        return 0
    document = status.pop("policy", None)
    status["rules"] = len(json.loads(document)["rules"]) if document else None
    print(json.dumps(status, indent=2))
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    canonical, document = load_document(args.file)
    print(json.dumps({"policy_hash": "0x" + authority.policy_hash(canonical).hex(), "rules": len(document["rules"])}))
    return 0


def cmd_policy_sign(args: argparse.Namespace) -> int:
    canonical, _ = load_document(args.file)
    set_id, sequence = _set_and_sequence(args)
    signature = _sign(_admin(args), "PolicyUpdate", set_id, sequence, authority.policy_hash(canonical))
    print(json.dumps({"signature": signature, "sequence": sequence, "admin_set_id": "0x" + set_id.hex(),
                      "policy_hash": "0x" + authority.policy_hash(canonical).hex()}))
    return 0


def _signature_args(values: list[str]) -> list[str]:
    """--signature takes a 0x signature or the JSON line `clave policy sign` prints."""
    out = []
    for value in values:
        value = value.strip()
        out.append(json.loads(value)["signature"] if value.startswith("{") else value)
    return out


def cmd_policy_apply(args: argparse.Namespace) -> int:
    canonical, _ = load_document(args.file)
    sequence = int(args.sequence) if args.sequence else int(_status(args)["sequence"]) + 1
    return _call(args, "clave_policyApply", "0x" + canonical.hex(), sequence, _signature_args(args.signature))


def cmd_freeze(args: argparse.Namespace) -> int:
    set_id, sequence = _set_and_sequence(args)
    return _call(args, "clave_freeze", sequence, [_sign(_admin(args), "Freeze", set_id, sequence)])


def cmd_audit_ack(args: argparse.Namespace) -> int:
    set_id, sequence = _set_and_sequence(args)
    return _call(args, "clave_auditAck", sequence, [_sign(_admin(args), "AuditAck", set_id, sequence)])


def cmd_approvals_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        for item in client.call("clave_approvals"):
            print(json.dumps(item))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from clave.sidecar.transports.ipc_client import RpcCallError

    with connect(args) as client:
        status = client.call("clave_policyStatus")
        pending = [p for p in client.call("clave_approvals") if p["id"] == args.id.removeprefix("0x")[:16]]
        if not pending:
            raise SystemExit(f"clave: no request {args.id} waits for approval (clave approvals list)")
        request = bytes.fromhex(pending[0]["request"][2:])
        set_id = bytes.fromhex(status["admin_set_id"][2:])
        typed = authority.approval_message(set_id, request)
        signature = "0x" + bytes(_admin(args).sign_typed_data(full_message=typed).signature).hex()
        try:
            print(json.dumps(client.call("clave_approve", pending[0]["id"], signature)))
        except RpcCallError as exc:
            raise SystemExit(f"clave: {exc.message}") from None
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from clave.sidecar.transports.ipc_client import RpcCallError

    with connect(args) as client:
        try:
            print(json.dumps(client.call("clave_reject", args.id)))
        except RpcCallError as exc:
            raise SystemExit(f"clave: {exc.message}") from None
    return 0


def cmd_unfreeze_sign(args: argparse.Namespace) -> int:
    set_id, sequence = _set_and_sequence(args)
    print(json.dumps({"signature": _sign(_admin(args), "Unfreeze", set_id, sequence), "sequence": sequence}))
    return 0


def cmd_unfreeze(args: argparse.Namespace) -> int:
    sequence = int(args.sequence) if args.sequence else int(_status(args)["sequence"]) + 1
    return _call(args, "clave_unfreeze", sequence, _signature_args(args.signature))


def _signing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keyfile", required=True, help="V3 keyfile of an admin key")
    parser.add_argument("--password-file", required=True, help="password of the admin keyfile")
    _offline_options(parser)


def _offline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sequence", type=int, default=None,
                        help="sequence number to sign for (default: the running clave's current one + 1)")
    parser.add_argument("--admin-set-id", default=None,
                        help="0x admin set id (with --sequence, sign without reaching clave: an offline machine)")


def _new_admins(args: argparse.Namespace) -> tuple[list[str], int, bytes]:
    admins = parse_admins(args.admin)
    if not admins or not 1 <= args.admin_threshold <= len(admins):
        raise SystemExit("clave: admin change: pass --admin 0xADDR[,0xADDR] and --admin-threshold 1..N")
    return ["0x" + a.hex() for a in admins], args.admin_threshold, authority.admin_set_id(admins, args.admin_threshold)


def cmd_admin_change(args: argparse.Namespace) -> int:
    """With --keyfile: one current admin's signature for the change (printed). With --signature (K of
    them): apply it."""
    admins, threshold, new_set_id = _new_admins(args)
    if args.keyfile:
        if not args.password_file:
            raise SystemExit("clave: admin change: --keyfile needs --password-file")
        set_id, sequence = _set_and_sequence(args)
        typed = authority.admin_change_message(set_id, new_set_id, sequence)
        signature = "0x" + bytes(_admin(args).sign_typed_data(full_message=typed).signature).hex()
        print(json.dumps({"signature": signature, "sequence": sequence, "new_admin_set_id": "0x" + new_set_id.hex()}))
        return 0
    if not args.signature:
        raise SystemExit("clave: admin change: sign with --keyfile, or apply with --signature (K times)")
    sequence = int(args.sequence) if args.sequence else int(_status(args)["sequence"]) + 1
    return _call(args, "clave_adminsChange", admins, threshold, sequence, _signature_args(args.signature))


def add_admin_change(adm: Any) -> None:
    change = adm.add_parser("change", help="a new admin set and K: K current admins sign, then apply")
    add_common_options(change)
    change.add_argument("--admin", required=True, metavar="0xADDR[,0xADDR]", help="the new admin set")
    change.add_argument("--admin-threshold", dest="admin_threshold", type=int, required=True, metavar="K", help="K of the new admin set")
    change.add_argument("--keyfile", default=None, help="sign: V3 keyfile of a current admin")
    change.add_argument("--password-file", default=None, help="sign: password of that keyfile")
    change.add_argument("--signature", action="append", default=[], help="apply: a current admin's signature")
    _offline_options(change)
    change.set_defaults(func=cmd_admin_change)


def add_audit_ack(aud: Any) -> None:
    ack = aud.add_parser("ack", help="accept a gap in the audit log (one admin): signing resumes under the policy")
    add_common_options(ack)
    _signing_options(ack)
    ack.set_defaults(func=cmd_audit_ack)


def add_policy_commands(sub: Any) -> None:
    policy = sub.add_parser("policy", help="the custody policy the enclave enforces (README \"Custody policy\")")
    pol = policy.add_subparsers(dest="policy_command", required=True)
    show = pol.add_parser("show", help="the policy in force, its hash, sequence, freeze state and denials by rule")
    add_common_options(show)
    show.add_argument("--document", action="store_true", help="print the policy document itself")
    show.set_defaults(func=cmd_policy_show)
    check = pol.add_parser("check", help="validate a policy file (JSON or YAML) and print its hash")
    add_common_options(check)  # accepted for uniformity; the check needs no running clave
    check.add_argument("file", help="a policy document (JSON or YAML)")
    check.set_defaults(func=cmd_policy_check)
    sign = pol.add_parser("sign", help="an admin's EIP-712 signature for applying a policy file")
    add_common_options(sign)
    sign.add_argument("file", help="the policy document to sign (JSON or YAML)")
    _signing_options(sign)
    sign.set_defaults(func=cmd_policy_sign)
    apply = pol.add_parser("apply", help="apply a policy file with K admin signatures")
    add_common_options(apply)
    apply.add_argument("file", help="the policy document the signatures are over")
    apply.add_argument("--signature", action="append", required=True, help="an admin's signature (repeat K times)")
    apply.add_argument("--sequence", type=int, default=None, help="the sequence number the signatures name (default: the enclave's next)")
    apply.set_defaults(func=cmd_policy_apply)

    approvals = sub.add_parser("approvals", help="requests a custody rule holds for admin approval")
    apr = approvals.add_subparsers(dest="approvals_command", required=True)
    alist = apr.add_parser("list", help="the requests waiting, one JSON line each")
    add_common_options(alist)
    alist.set_defaults(func=cmd_approvals_list)
    approve = sub.add_parser("approve", help="approve a held request (an admin's EIP-712 signature over it)")
    add_common_options(approve)
    approve.add_argument("id", help="the request id from `clave approvals list`")
    approve.add_argument("--keyfile", required=True, help="V3 keyfile of an admin key")
    approve.add_argument("--password-file", required=True, help="password of the admin keyfile")
    approve.set_defaults(func=cmd_approve)
    reject = sub.add_parser("reject", help="reject a held request: its caller gets `request denied`")
    add_common_options(reject)
    reject.add_argument("id", help="the request id from `clave approvals list`")
    reject.set_defaults(func=cmd_reject)

    freeze = sub.add_parser("freeze", help="stop all signing now (any one admin)")
    add_common_options(freeze)
    _signing_options(freeze)
    freeze.set_defaults(func=cmd_freeze)
    unfreeze = sub.add_parser("unfreeze", help="resume signing (K admin signatures: `clave unfreeze sign` each)")
    add_common_options(unfreeze)
    unfreeze.add_argument("--signature", action="append", default=[], help="an admin's unfreeze signature")
    unfreeze.add_argument("--sequence", type=int, default=None, help="the sequence number the signatures name (default: the enclave's next)")
    unfreeze.set_defaults(func=cmd_unfreeze, unfreeze_command=None)
    unf = unfreeze.add_subparsers(dest="unfreeze_command")
    usign = unf.add_parser("sign", help="an admin's signature for unfreezing")
    add_common_options(usign)
    _signing_options(usign)
    usign.set_defaults(func=cmd_unfreeze_sign)
