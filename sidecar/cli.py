"""The `clave` command line. The library raises; only this module prints and exits."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_DATADIR,
    DEFAULT_HTTP_ADDR,
    DEFAULT_HTTP_PORT,
    SidecarConfig,
    parse_chain_ids,
    parse_pcr,
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datadir", default=str(DEFAULT_DATADIR), help="data directory (default ~/.clave)")
    parser.add_argument("--ipcpath", default=None, help="IPC socket path (default <datadir>/clave.ipc)")


def _add_server(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--http.addr", dest="http_addr", default=DEFAULT_HTTP_ADDR)
    parser.add_argument("--http.port", dest="http_port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--nohttp", action="store_true", help="serve IPC only")
    parser.add_argument("--chainid", default="1", help="chain id(s) to sign for, comma separated (default 1)")
    parser.add_argument("--http.vhosts", dest="http_vhosts", default="localhost", help="comma-separated Host names accepted")
    parser.add_argument("--http.corsdomain", dest="http_corsdomain", default="", help="comma-separated CORS origins")
    parser.add_argument("--http.auth-token-file", dest="http_auth_token_file", default=None,
                        help="require 'Authorization: Bearer <token>' with the token in this file")
    parser.add_argument("--rpc.txfeecap", dest="txfeecap", type=float, default=1.0,
                        help="eth_signTransaction fee cap in ether (0 = no cap)")
    parser.add_argument("--pcr", action="append", default=[], metavar="N=HEX", help="pin an enclave PCR value")
    parser.add_argument("--log.json", dest="log_json", action="store_true", help="log JSON lines")


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    datadir = Path(os.path.expanduser(args.datadir)).absolute()
    try:
        chain_ids = parse_chain_ids(args.chainid)
        pcrs = dict(parse_pcr(p) for p in args.pcr)
    except ValueError as exc:
        raise SystemExit(f"clave: {exc}") from None
    return SidecarConfig(
        datadir=datadir,
        http_addr=args.http_addr,
        http_port=args.http_port,
        http_enabled=not args.nohttp,
        ipcpath=Path(os.path.expanduser(args.ipcpath)).absolute() if args.ipcpath else None,
        chain_ids=chain_ids,
        vhosts=_split(args.http_vhosts),
        cors_domains=_split(args.http_corsdomain),
        auth_token_file=Path(args.http_auth_token_file) if args.http_auth_token_file else None,
        pcrs=pcrs,
        log_json=args.log_json,
        tx_fee_cap_wei=int(args.txfeecap * 10**18),
    )


def cmd_up(args: argparse.Namespace) -> int:
    from .local import up
    from .logs import setup_logging

    config = config_from_args(args)
    setup_logging(config.log_json)
    return up(config)


# -- account commands -------------------------------------------------------------------------------


def _ipc_path(args: argparse.Namespace) -> Path:
    if args.ipcpath:
        return Path(os.path.expanduser(args.ipcpath)).absolute()
    return Path(os.path.expanduser(args.datadir)).absolute() / "clave.ipc"


def _read_password(path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"clave: {path}: cannot read password file: {exc.strerror}") from None
    lines = text.splitlines()
    # geth reads the first line of --password files and trims the line ending only.
    return lines[0] if lines else ""


def _attested_public_key(client: Any, args: argparse.Namespace) -> bytes:
    """Ask the enclave for a fresh attestation and check it here, so secrets go only to a genuine enclave."""
    from .attestation import PcrPolicy, load_root, verify_attestation

    datadir = Path(os.path.expanduser(args.datadir)).absolute()
    root_path = Path(args.attestation_root) if args.attestation_root else datadir / "nsm" / "root.pem"
    if not root_path.exists():
        raise SystemExit(f"clave: {root_path}: no attestation root; pass --attestation-root PEM")
    root = load_root(root_path.read_bytes())
    nonce = os.urandom(32)
    document = bytes.fromhex(client.call("clave_attest", "0x" + nonce.hex())[2:])
    pcrs = dict(parse_pcr(p) for p in args.pcr)
    verified = verify_attestation(
        document, root=root, now_ms=int(time.time() * 1000), pcr_policy=PcrPolicy(expected=pcrs, allow_debug=not pcrs),
        expected_nonce=nonce, max_age_ms=5 * 60 * 1000,
    )
    if verified.public_key is None:
        raise SystemExit("clave: the enclave's attestation carries no public key")
    return verified.public_key


def _with_client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .ipc_client import IpcClient

    try:
        return IpcClient(_ipc_path(args))
    except ConnectionError as exc:
        raise SystemExit(f"clave: {exc}") from None


def cmd_account_new(args: argparse.Namespace) -> int:
    with _with_client(args) as client:
        addresses = client.call("clave_newAccount", {"count": args.count, "exportable": args.exportable})
    for address in addresses:
        print(f"Public address of the key:   {address}")
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    with _with_client(args) as client:
        accounts = client.call("clave_listAccounts")
    for i, account in enumerate(accounts):
        export = "exportable" if account["exportable"] else "not exportable"
        print(f"Account #{i}: {{{account['address'][2:]}}} origin={account['origin']} {export}")
    return 0


def cmd_account_import(args: argparse.Namespace) -> int:
    from enclave.envelope import seal_to

    from .ipc_client import RpcCallError
    from .keystore_scan import scan

    password = _read_password(args.password_file)
    source = Path(args.path)
    if not source.exists():
        raise SystemExit(f"clave: {source}: no such file or directory")
    failures = imported = 0
    with _with_client(args) as client:
        public_key = _attested_public_key(client, args)
        for candidate in scan(source):
            if candidate.skipped:
                continue
            if candidate.problem is not None or candidate.text is None:
                print(f"clave: {candidate.path}: skipped: {candidate.problem}", file=sys.stderr)
                failures += 1
                continue
            envelope = seal_to(public_key, {"keyfile": candidate.text, "password": password})
            try:
                address = client.call("clave_importKeyfile", "0x" + envelope.hex(), bool(args.exportable))
            except RpcCallError as exc:
                print(f"clave: {candidate.path}: {exc.message}", file=sys.stderr)
                failures += 1
                continue
            imported += 1
            print(f"Imported {address} from {candidate.path}")
    print(f"{imported} imported, {failures} failed", file=sys.stderr)
    return 1 if failures or not imported else 0


def cmd_account_export(args: argparse.Namespace) -> int:
    from enclave.envelope import seal_to

    from .ipc_client import RpcCallError

    password = _read_password(args.password_file)
    if not password:
        raise SystemExit(f"clave: {args.password_file}: the export password is empty")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"clave: {out}: already exists; refusing to overwrite")
    with _with_client(args) as client:
        public_key = _attested_public_key(client, args)
        envelope = seal_to(public_key, {"password": password})
        try:
            keyfile = client.call("clave_exportKeyfile", args.address, "0x" + envelope.hex())
        except RpcCallError as exc:
            raise SystemExit(f"clave: export {args.address}: {exc.message}") from None
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(keyfile)
    os.replace(tmp, out)
    print(f"Exported {args.address} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clave", description="Ethereum signer whose keys live in an AWS Nitro Enclave")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local enclave, KMS emulator and sidecar")
    _add_server(up)
    up.set_defaults(func=cmd_up)

    account = sub.add_parser("account", help="manage accounts of a running clave")
    acc = account.add_subparsers(dest="account_command", required=True)

    def account_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = acc.add_parser(name, help=help_)
        _add_common(p)
        p.add_argument("--attestation-root", default=None, help="PEM of the attestation root to trust")
        p.add_argument("--pcr", action="append", default=[], metavar="N=HEX", help="require this PCR value")
        return p

    new = account_parser("new", "generate a key inside the enclave")
    new.add_argument("--exportable", action="store_true", help="allow exporting this key later")
    new.add_argument("--count", type=int, default=1)
    new.set_defaults(func=cmd_account_new)
    lst = account_parser("list", "list accounts")
    lst.set_defaults(func=cmd_account_list)
    imp = account_parser("import", "import a V3 keyfile or a keystore directory")
    imp.add_argument("path")
    imp.add_argument("--password-file", required=True)
    imp.add_argument("--exportable", action="store_true")
    imp.set_defaults(func=cmd_account_import)
    exp = account_parser("export", "export an exportable account as a V3 keyfile")
    exp.add_argument("address")
    exp.add_argument("--password-file", required=True)
    exp.add_argument("--out", required=True)
    exp.set_defaults(func=cmd_account_export)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # the library raises typed errors; show the message, not a traceback
        from enclave.errors import ClaveError

        if isinstance(exc, ClaveError):
            print(f"clave: {exc.message}", file=sys.stderr)
            code = 1
        else:
            raise
    sys.exit(code)


if __name__ == "__main__":
    main()
