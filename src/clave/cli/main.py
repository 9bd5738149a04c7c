"""The `clave` command line. The library raises; only this module prints and exits."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from clave.cli import validate
from clave.cli.audit import add_audit_commands
from clave.cli.backup import add_backup_commands
from clave.cli.client import (
    add_client_options,
    add_common_options,
    attested_public_key,
    connect,
    parse_admins,
    pinned_commitment,
    read_password,
    store_meta,
)
from clave.cli.opera import add_validator_commands
from clave.cli.policy import add_admin_change, add_policy_commands
from clave.sidecar.config import (
    DEFAULT_DATADIR,
    DEFAULT_HTTP_ADDR,
    DEFAULT_HTTP_PORT,
    SidecarConfig,
    parse_chain_ids,
    parse_pcr,
)
from clave.sidecar.secretfiles import write_new_private


def _add_server(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser)
    parser.add_argument("--http.addr", dest="http_addr", default=DEFAULT_HTTP_ADDR,
                        help=f"address the HTTP server listens on (default {DEFAULT_HTTP_ADDR}; beyond the loopback, "
                        "use --http.auth-token-file)")
    parser.add_argument("--http.port", dest="http_port", type=validate.port, default=DEFAULT_HTTP_PORT,
                        help=f"HTTP port, 1-65535 (default {DEFAULT_HTTP_PORT})")
    parser.add_argument("--nohttp", action="store_true", help="serve IPC only")
    parser.add_argument("--chainid", default="1", type=validate.chain_ids, help="chain id(s) to sign for, comma separated (default 1)")
    parser.add_argument("--http.vhosts", dest="http_vhosts", default="localhost", help="comma-separated Host names accepted")
    parser.add_argument("--http.corsdomain", dest="http_corsdomain", default="", help="comma-separated CORS origins")
    parser.add_argument("--http.auth-token-file", dest="http_auth_token_file", default=None, type=validate.token_file,
                        help="require 'Authorization: Bearer <token>' with the token in this file")
    parser.add_argument("--rpc.txfeecap", dest="txfeecap", type=validate.non_negative_float, default=1.0,
                        help="eth_signTransaction fee cap in ether (0 = no cap)")
    parser.add_argument("--pcr", action="append", default=[], metavar="N=HEX", type=validate.pcr_pin,
                        help="pin an enclave PCR value: the enclave must attest it (repeatable)")
    parser.add_argument("--log.json", dest="log_json", action="store_true", help="log JSON lines")
    parser.add_argument("--http.workers", dest="http_workers", type=_workers, default=1,
                        help="processes serving HTTP on the same port (default 1; one per core for throughput)")
    parser.add_argument("--http.read-timeout", dest="http_read_timeout", type=_seconds, default=30.0,
                        help="seconds a client has to send a request's headers, and then its body (default 30)")
    parser.add_argument("--eth.signtx-result", dest="eth_signtx_result", choices=("raw", "geth"), default="raw",
                        help="eth_signTransaction's result: a bare 0x raw transaction (default; ethers, viem, cast) "
                        "or geth's {raw, tx} object (web3.py)")
    parser.add_argument("--downstream", default=None, metavar="URL",
                        help="proxy mode: forward every non-signing method to this node (http, https, ws, wss) "
                        "and send eth_sendTransaction through it")
    parser.add_argument("--downstream.auth-header-file", dest="downstream_auth_file", default=None, metavar="FILE",
                        help="a file with one 'Name: value' HTTP header sent to the --downstream node")
    parser.add_argument("--admin", default="", metavar="0xADDR[,0xADDR]",
                        help="a new datadir's admin set: the keys whose signature authorizes a keyfile export")
    parser.add_argument("--admin-threshold", dest="admin_threshold", type=int, default=1, metavar="K",
                        help="admin signatures a custody-policy change or an unfreeze needs (default 1)")


def check_threshold(threshold: int, admins: list[bytes]) -> int:
    if admins and not 1 <= threshold <= len(admins):
        raise SystemExit(f"clave: --admin-threshold {threshold}: expected 1..{len(admins)} (the number of admins)")
    if not admins and threshold != 1:
        raise SystemExit("clave: --admin-threshold needs --admin")
    return threshold


def _workers(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


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
        http_workers=args.http_workers,
        http_read_timeout=args.http_read_timeout,
        admins=parse_admins(args.admin),
        eth_signtx_result=args.eth_signtx_result,
        downstream=_downstream(args),
        downstream_auth_file=Path(args.downstream_auth_file) if args.downstream_auth_file else None,
        admin_threshold=check_threshold(args.admin_threshold, parse_admins(args.admin)),
    )


def _downstream(args: argparse.Namespace) -> str | None:
    url = args.downstream
    if url is None:
        if args.downstream_auth_file:
            raise SystemExit("clave: --downstream.auth-header-file needs --downstream URL")
        return None
    if not url.startswith(("http://", "https://", "ws://", "wss://")):
        raise SystemExit(f"clave: --downstream {url}: expected an http(s):// or ws(s):// URL")
    if args.http_workers > 1:
        # The nonce tracker for eth_sendTransaction lives in one process.
        raise SystemExit("clave: --downstream needs --http.workers 1 (concurrent sends share one nonce tracker)")
    return str(url)


def cmd_up(args: argparse.Namespace) -> int:
    from clave.sidecar.datadir import datadir_lock
    from clave.sidecar.observe.logs import setup_logging

    config = config_from_args(args)
    os.umask(0o077)  # what it creates in the datadir (store, logs, metrics, sockets) is for this user only
    setup_logging(config.log_json)
    with datadir_lock(config.datadir):
        config.export_metrics_dir()
        from clave.dev.local import up  # imported only now, as in cmd_serve

        return up(config, accept_new_enclave=args.accept_new_enclave)


def cmd_serve(args: argparse.Namespace) -> int:
    from clave.sidecar.datadir import datadir_lock
    from clave.sidecar.observe.logs import setup_logging

    config = config_from_args(args)
    config.enclave = args.enclave
    config.kms_key_id = args.kms_key_id
    config.kms_region = args.kms_region
    config.kms_endpoint = args.kms_endpoint
    config.kms_ca = Path(args.kms_ca) if args.kms_ca else None
    config.kms_proxy = args.kms_proxy
    config.attestation_root = Path(args.attestation_root) if args.attestation_root else None
    config.attestation_root_fingerprint = args.attestation_root_fingerprint
    config.allow_debug_enclave = args.allow_debug_enclave
    os.umask(0o077)  # as systemd's UMask=0077 in clave.service, for runs outside it
    setup_logging(config.log_json)
    with datadir_lock(config.datadir):
        config.export_metrics_dir()
        # Imported only now: prometheus_client reads the metrics directory when it is first imported.
        from clave.sidecar.serve import serve

        return serve(config)


def cmd_enclave(args: argparse.Namespace) -> int:
    if args.nsm == "software":
        if not args.nsm_state or not args.kms_ca:
            raise SystemExit("clave: --nsm software needs --nsm-state DIR and --kms-ca FILE (the KMS emulator's dev CA)")
        from clave.dev.enclave import main as local_enclave_main

        local_enclave_main(["--listen", args.listen, "--nsm-state", args.nsm_state, "--kms-ca", args.kms_ca])
    else:
        if args.kms_ca:
            raise SystemExit("clave: --kms-ca is for --nsm software; the image trusts only Amazon's roots for KMS")
        from clave.enclave.runner import main as enclave_main

        enclave_main(["--listen", args.listen])
    return 0


def cmd_kms_emulator(args: argparse.Namespace) -> int:
    if args.make_tls:  # the local enclave unit's ExecStartPre: the dev CA it trusts, before the emulator runs
        from clave.dev.kmsemu.tls import ensure_tls

        print(ensure_tls(Path(args.datadir)))
        return 0
    if not args.root:
        raise SystemExit("clave: kms-emulator needs --root PEM (the software NSM's root.pem)")
    from clave.dev.kmsemu.__main__ import main as kms_main

    kms_main(["--datadir", args.datadir, "--host", args.host, "--port", str(args.port), "--root", args.root])
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    from clave.sidecar.trust.attestation import describe

    if args.attest_command == "verify":
        return cmd_attest_verify(args)
    with connect(args) as client:
        nonce = bytes.fromhex(args.nonce.removeprefix("0x")) if args.nonce else os.urandom(32)
        document = bytes.fromhex(client.call("clave_attest", "0x" + nonce.hex())[2:])
    result: dict[str, Any] = {"nonce": nonce.hex()}
    try:
        verified = _verify_document(document, args, nonce=nonce, at_ms=int(time.time() * 1000))
        result.update(verified=True, document=describe(verified))
        result.update(_master_commitment(verified, args))
        result.update(_kms_key(verified, args))
        result.update(_custody(verified))
    except Exception as exc:
        result.update(verified=False, error=str(exc))
    if args.out:
        Path(args.out).write_bytes(document)
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["verified"] else 1


def _custody(verified: Any) -> dict[str, Any]:
    """The custody state the enclave attests to (README "Custody policy"): K, sequence, freeze, policy hash,
    and the audit checkpoint key. Compare `policy.hash` with `clave policy check FILE`."""
    from clave.core.provenance import ProvenanceError, decode_audit_key, decode_policy

    try:
        policy, audit = decode_policy(verified.user_data), decode_audit_key(verified.user_data)
    except ProvenanceError as exc:
        return {"policy_error": exc.message}
    shown = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in (policy or {}).items()}
    return {"policy": shown or None, "audit_key": audit.hex() if audit is not None else None}


def _master_commitment(verified: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The master-key commitment the enclave attests to, the one the store pins, and whether they match."""
    from clave.core.provenance import ProvenanceError, decode_user_data

    try:
        attested = decode_user_data(verified.user_data)
    except ProvenanceError as exc:
        return {"master_commitment": None, "master_commitment_error": exc.message}
    store = Path(os.path.expanduser(args.datadir)).absolute() / "keystore.sqlite"
    pinned = None
    if store.exists():
        try:
            pinned = pinned_commitment(store.parent)
        except SystemExit:
            pinned = None
    return {
        "master_commitment": attested.hex() if attested is not None else None,
        "master_commitment_pinned": pinned.hex() if pinned is not None else None,
        "master_commitment_matches": attested is not None and attested == pinned,
    }


def _kms_key(verified: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The KMS key ARN the enclave's master key came from (it read it from KMS over its own TLS), the one the
    store pins, and, with --kms-key, the operator's own expectation: a mismatch fails the verification."""
    from clave.core.provenance import ProvenanceError, decode_kms
    from clave.sidecar.signing.signer import META_KMS_KEY_ARN

    try:
        attested = decode_kms(verified.user_data)
    except ProvenanceError:  # not a clave enclave's user_data (reported by _master_commitment for `attest`)
        attested = None
    store = Path(os.path.expanduser(args.datadir)).absolute() / "keystore.sqlite"
    pinned = None
    if store.exists():
        try:
            value = store_meta(store.parent, META_KMS_KEY_ARN)
            pinned = value.decode() if value is not None else None
        except SystemExit:
            pinned = None
    if args.kms_key and attested != args.kms_key:
        raise ValueError(f"the enclave's master key comes from KMS key {attested}, not --kms-key {args.kms_key}")
    return {"kms_key_arn": attested, "kms_key_arn_pinned": pinned}


def _verify_document(document: bytes, args: argparse.Namespace, *, nonce: bytes | None, at_ms: int):  # type: ignore[no-untyped-def]
    from clave.sidecar.trust.attestation import (
        AWS_NITRO_ROOT_G1_SHA256,
        PcrPolicy,
        load_root,
        verify_attestation,
    )

    # Default: the local software NSM's dev root; --root for any other (AWS Root-G1 in production).
    root_path = Path(args.root) if args.root else Path(os.path.expanduser(args.datadir)).absolute() / "nsm" / "root.pem"
    try:
        root_data = root_path.read_bytes()
    except OSError:
        raise SystemExit(f"clave: {root_path}: cannot read the root; pass --root PEM (AWS Nitro Root-G1)") from None
    root = load_root(root_data, fingerprint=AWS_NITRO_ROOT_G1_SHA256 if args.aws_root else None)
    pcrs = dict(parse_pcr(p) for p in args.pcr)
    return verify_attestation(
        document, root=root, now_ms=at_ms, pcr_policy=PcrPolicy(expected=pcrs, allow_debug=args.allow_debug),
        expected_nonce=nonce,
    )


def cmd_attest_verify(args: argparse.Namespace) -> int:
    from clave.sidecar.trust.attestation import describe

    try:
        document = Path(args.file).read_bytes()
    except OSError as exc:
        raise SystemExit(f"clave: {args.file}: {exc.strerror}; pass a document saved by `clave attest --out FILE`") from None
    at_ms = args.at if args.at is not None else int(time.time() * 1000)
    try:
        verified = _verify_document(document, args, nonce=None, at_ms=at_ms)
    except Exception as exc:
        print(json.dumps({"file": args.file, "verified": False, "error": str(exc)}, indent=2))
        return 1
    try:
        kms = _kms_key(verified, args)
    except ValueError as exc:
        print(json.dumps({"file": args.file, "verified": False, "error": str(exc)}, indent=2))
        return 1
    print(json.dumps({"file": args.file, "verified": True, "document": describe(verified), **kms}, indent=2, default=str))
    return 0


def cmd_kms_policy(args: argparse.Namespace) -> int:
    from clave.sidecar.trust.kms import key_policy

    pcrs = {}
    for index in range(0, 16):
        value = getattr(args, f"pcr{index}", None)
        if value:
            pcrs[index] = value.removeprefix("0x")
    try:
        policy = key_policy(args.role_arn, pcrs, args.image_sha384, admin_arn=args.admin_arn)
    except ValueError as exc:
        raise SystemExit(f"clave: kms-policy: {exc}; see `clave kms-policy --help`") from None
    print(json.dumps(policy, indent=2))
    return 0


# -- account commands -------------------------------------------------------------------------------


NEW_ACCOUNTS_PER_CALL = 1000


class _Interrupted:
    """SIGINT/SIGTERM while accounts are being made: finish the call in flight (its accounts are stored
    either way) and report, instead of dying with accounts stored but never printed. A second signal
    stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def cmd_account_new(args: argparse.Namespace) -> int:
    """Accounts are made NEW_ACCOUNTS_PER_CALL at a time and printed as each call returns, so what is
    printed is what is stored, also when the command is interrupted."""
    if args.count < 1:
        raise SystemExit("clave: --count must be at least 1; pass --count N with N >= 1")
    done = 0
    interrupted = _Interrupted()
    try:
        with connect(args) as client:
            if args.pcr:  # --pcr: create keys only in an enclave that attests these values
                attested_public_key(client, args)
            while done < args.count and interrupted.signal is None:
                chunk = min(NEW_ACCOUNTS_PER_CALL, args.count - done)
                addresses = client.call("clave_newAccount", {"count": chunk, "exportable": args.exportable})
                for address in addresses:
                    print(f"Public address of the key:   {address}")
                sys.stdout.flush()
                done += len(addresses)
                if args.count > NEW_ACCOUNTS_PER_CALL:
                    print(f"clave: {done} of {args.count} accounts created and stored", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"clave: interrupted: {done} accounts created and stored (printed above); up to "
              f"{min(NEW_ACCOUNTS_PER_CALL, args.count - done)} more may have been stored by the call in flight: "
              "see `clave account list`", file=sys.stderr)
        return 130
    finally:
        interrupted.restore()
    if interrupted.signal is not None and done < args.count:
        print(f"clave: interrupted: {done} of {args.count} accounts created and stored (printed above)", file=sys.stderr)
        return 128 + interrupted.signal
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    from clave.core.gojson import checksum

    with connect(args) as client:
        if args.pcr:  # --pcr: list only what an enclave attesting these values holds
            attested_public_key(client, args)
        accounts = client.call("clave_listAccounts")
    for i, account in enumerate(accounts):
        export = "exportable" if account["exportable"] else "not exportable"
        # As geth prints them: EIP-55 mixed case, without 0x.
        print(f"Account #{i}: {{{checksum(bytes.fromhex(account['address'][2:]))[2:]}}} origin={account['origin']} {export}")
    return 0


def cmd_account_import(args: argparse.Namespace) -> int:
    from clave.cli.keystore_scan import scan
    from clave.core.envelope import seal_to
    from clave.sidecar.transports.ipc_client import RpcCallError

    source = Path(args.path)
    if not source.exists():
        raise SystemExit(f"clave: {source}: no such file or directory; pass a V3 keyfile or a keystore directory")
    password = read_password(args.password_file, prompt="Password of the keyfile(s): ")
    with connect(args) as client:
        public_key = attested_public_key(client, args)
    candidates = [c for c in scan(source) if not c.skipped]
    failures = 0
    for candidate in candidates:
        if candidate.problem is not None or candidate.text is None:
            print(f"clave: {candidate.path}: skipped: {candidate.problem}", file=sys.stderr)
            failures += 1
    good = [c for c in candidates if c.problem is None and c.text is not None]
    local = threading.local()

    def import_one(candidate: Any) -> tuple[Any, str | None, str | None]:
        # One IPC connection per worker: the enclave decrypts concurrent imports on all its cores.
        if not hasattr(local, "client"):
            local.client = connect(args)
        envelope = seal_to(public_key, {"keyfile": candidate.text, "password": password})
        try:
            return candidate, local.client.call("clave_importKeyfile", "0x" + envelope.hex(), bool(args.exportable)), None
        except RpcCallError as exc:
            return candidate, None, exc.message

    imported = 0
    jobs = max(1, args.jobs)
    total = len(good)
    if total > 1:
        print(f"clave: importing {total} keyfiles ({min(jobs, total)} at a time)", file=sys.stderr)
    # Keyfiles that name their address first, then those without one: when both hold the same key (geth's
    # test keystore has such a pair), the named one is imported and the other refused as a duplicate.
    phases = [[c for c in good if c.addressed], [c for c in good if not c.addressed]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        results = (result for phase in phases for result in pool.map(import_one, phase))  # phase by phase
        for done, (candidate, address, error) in enumerate(results, 1):
            if error is not None:
                print(f"clave: {candidate.path}: {error}", file=sys.stderr)
                failures += 1
            else:
                imported += 1
                print(f"Imported {address} from {candidate.path}", flush=True)
            if total > 1:
                print(f"clave: [{done}/{total}] {candidate.path.name}", file=sys.stderr, flush=True)
    print(f"{imported} imported, {failures} failed", file=sys.stderr)
    return 1 if failures or not imported else 0


def _admin_account(keyfile: str, password_file: str):  # type: ignore[no-untyped-def]
    """The admin key that authorizes an export, from its V3 keyfile (decrypted here, in the CLI)."""
    from eth_account import Account

    try:
        data = json.loads(Path(keyfile).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"clave: {keyfile}: cannot read the admin keyfile: {exc}") from None
    try:
        return Account.from_key(Account.decrypt(data, read_password(password_file)))
    except ValueError as exc:
        raise SystemExit(f"clave: {keyfile}: cannot decrypt the admin keyfile: {exc}") from None


def cmd_admin_init(args: argparse.Namespace) -> int:
    """Once, on a datadir that has no admin set (trust on first use): record the set to make; the enclave
    makes and seals it at its next boot, before it holds any key (restart the enclave, or `clave up`)."""
    from clave.sidecar.signing.signer import META_ADMIN_PENDING, META_ADMIN_SET, pending_admins
    from clave.sidecar.store.records import SqliteStore

    admins = parse_admins(args.admin)
    if not admins:
        raise SystemExit("clave: admin init: pass --admin 0xADDR[,0xADDR]")
    threshold = check_threshold(getattr(args, "admin_threshold", 1), admins)
    path = Path(os.path.expanduser(args.datadir)).absolute() / "keystore.sqlite"
    if not path.exists():
        raise SystemExit(f"clave: {path}: no key store; on a new datadir pass --admin to clave up / clave serve")
    store = SqliteStore(path)
    try:
        if store.get_meta(META_ADMIN_SET) is not None:
            raise SystemExit("clave: this datadir has an admin set already; it cannot be changed")
        store.set_meta(META_ADMIN_PENDING, pending_admins(admins, threshold))
    finally:
        store.close()
    print("admin set recorded; the enclave seals it at its next start: restart the enclave "
          "(Nitro: systemctl restart clave-enclave; locally: restart clave up)")
    return 0


def _check_out_dir(out: Path) -> None:
    """--out's directory must exist and be writable before the enclave exports anything."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise SystemExit(f"clave: --out {out}: directory {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"clave: --out {out}: directory {parent} is not writable; choose another --out")


def cmd_account_export(args: argparse.Namespace) -> int:
    from eth_account.messages import encode_defunct

    from clave.core.envelope import seal_to
    from clave.core.provenance import export_message
    from clave.sidecar.transports.ipc_client import RpcCallError

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"clave: {out}: already exists; refusing to overwrite: choose another --out")  # before asking the enclave
    _check_out_dir(out)
    if args.password_file == "-" and args.admin_password_file == "-":
        raise SystemExit("clave: --password-file - and --admin-password-file - both read stdin; give one of them a file")
    password = read_password(args.password_file, prompt="Password for the exported keyfile: ", confirm=True)
    if not password:
        raise SystemExit(f"clave: {args.password_file or 'the prompt'}: the export password is empty; the exported "
                         "keyfile needs one")
    admin = _admin_account(args.admin_keyfile, args.admin_password_file)
    with connect(args) as client:
        public_key = attested_public_key(client, args)
        envelope = seal_to(public_key, {"password": password})
        try:
            challenge = bytes.fromhex(client.call("clave_exportChallenge", args.address)[2:])
            address = bytes.fromhex(args.address.lower().removeprefix("0x"))
            signature = admin.sign_message(encode_defunct(export_message(address, challenge)))
            keyfile = client.call("clave_exportKeyfile", args.address, "0x" + envelope.hex(), "0x" + challenge.hex(),
                                  "0x" + bytes(signature.signature).hex())
        except RpcCallError as exc:
            raise SystemExit(f"clave: export {args.address}: {exc.message}") from None
    write_new_private(out, keyfile)
    print(f"Exported {args.address} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from clave import __version__
    from clave.cli.errors import OneLineParser

    parser = OneLineParser(prog="clave", description="Ethereum signer whose keys live in an AWS Nitro Enclave")
    parser.add_argument("--version", action="version", version=f"clave {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the local enclave, KMS emulator and sidecar")
    _add_server(up)
    up.add_argument("--accept-new-enclave", action="store_true",
                    help="local mode: after a code change, add the new enclave PCR0 to the local KMS key policy")
    up.set_defaults(func=cmd_up)

    account = sub.add_parser("account", help="manage accounts of a running clave")
    acc = account.add_subparsers(dest="account_command", required=True)

    def account_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = acc.add_parser(name, help=help_)
        add_client_options(p)
        return p

    new = account_parser("new", "generate a key inside the enclave")
    new.add_argument("--exportable", action="store_true", help="allow exporting this key later")
    new.add_argument("--count", type=validate.positive_int, default=1, help="how many keys to make (default 1)")
    new.set_defaults(func=cmd_account_new)
    lst = account_parser("list", "list accounts")
    lst.set_defaults(func=cmd_account_list)
    imp = account_parser("import", "import a V3 keyfile or a keystore directory")
    imp.add_argument("path", help="a V3 keyfile, or a directory of them (geth, clef, foundry keystores)")
    imp.add_argument("--password-file", default=None, metavar="FILE",
                     help="the keyfiles' password (first line of FILE; '-' reads stdin; default: asked on a terminal)")
    imp.add_argument("--exportable", action="store_true", help="allow exporting the imported keys later")
    imp.add_argument("--jobs", type=validate.positive_int, default=os.cpu_count() or 1,
                     help="keyfiles decrypted at once in the enclave (default: the number of cores)")
    imp.set_defaults(func=cmd_account_import)
    exp = account_parser("export", "export an exportable account as a V3 keyfile")
    exp.add_argument("address", help="the 0x address of an exportable account")
    exp.add_argument("--password-file", default=None, metavar="FILE",
                     help="the password the NEW keyfile is encrypted with (first line of FILE; '-' reads stdin; "
                     "default: asked twice on a terminal)")
    exp.add_argument("--out", required=True, metavar="FILE", help="where to write the keyfile (must not exist; mode 0600)")
    exp.add_argument("--admin-keyfile", required=True, help="V3 keyfile of an admin key (its signature authorizes the export)")
    exp.add_argument("--admin-password-file", required=True, metavar="FILE",
                     help="password of the admin keyfile (first line of FILE; '-' reads stdin)")
    exp.set_defaults(func=cmd_account_export)
    admin = sub.add_parser("admin", help="the datadir's admin set (who authorizes keyfile exports)")
    adm = admin.add_subparsers(dest="admin_command", required=True)
    init = adm.add_parser("init", help="once, on a datadir without one: set the admin set (trust on first use)")
    add_common_options(init)
    init.add_argument("--admin", required=True, metavar="0xADDR[,0xADDR]",
                      help="the admin addresses, comma separated (their signatures authorize keyfile exports)")
    init.add_argument("--admin-threshold", dest="admin_threshold", type=int, default=1, metavar="K",
                      help="admin signatures a custody-policy change or an unfreeze needs (default 1)")
    init.set_defaults(func=cmd_admin_init)
    add_admin_change(adm)
    serve = sub.add_parser("serve", help="run the sidecar beside an enclave (production; systemd runs this)")
    _add_server(serve)
    serve.add_argument("--enclave", required=True, help="enclave address: vsock://CID:PORT or unix:PATH")
    serve.add_argument("--kms-key-id", default=None, help="KMS key id or ARN holding the master data key")
    serve.add_argument("--kms-region", default=os.environ.get("AWS_REGION", "us-east-1"),
                       help="AWS region of the KMS key (default $AWS_REGION, else us-east-1)")
    serve.add_argument("--kms-endpoint", default=None,
                       help="https://HOST:PORT of the local KMS emulator (local mode only; unset: AWS KMS of --kms-region)")
    serve.add_argument("--kms-ca", default=None, help="the KMS emulator's dev CA (its DATADIR/ca.pem), with --kms-endpoint")
    serve.add_argument("--kms-proxy", default=None,
                       help="where the enclave's TLS stream to KMS goes: default vsock://3:8000 (vsock-proxy on the "
                            "parent, forwarding to kms.REGION.amazonaws.com:443), or the emulator's port")
    serve.add_argument("--attestation-root", default=None, help="PEM of the attestation root (AWS Nitro Root-G1)")
    serve.add_argument("--attestation-root-fingerprint", default=None,
                       help="required SHA-256 of the root's DER (Root-G1: 641a0321…bb5b)")
    serve.add_argument("--allow-debug-enclave", action="store_true", help="accept debug-mode enclaves (PCR0 zero)")
    serve.set_defaults(func=cmd_serve)

    enc = sub.add_parser("enclave", help="run the enclave service (inside the EIF, or locally)")
    enc.add_argument("--listen", required=True, metavar="ADDR",
                     help="where the sidecar connects: vsock://CID:PORT (in the EIF) or unix:PATH (locally)")
    enc.add_argument("--nsm", choices=("device", "software"), default="device",
                     help="device: /dev/nsm of a Nitro Enclave (default); software: the local emulated NSM")
    enc.add_argument("--nsm-state", default=None, metavar="DIR",
                     help="--nsm software only: the software NSM's state directory (its root.pem and keys)")
    enc.add_argument("--kms-ca", default=None, help="--nsm software only: the KMS emulator's dev CA, the only CA it trusts")
    enc.set_defaults(func=cmd_enclave)

    kmse = sub.add_parser("kms-emulator", help="run the local KMS emulator")
    kmse.add_argument("--datadir", required=True, help="the emulator's state directory (keys, CA, credentials)")
    kmse.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    kmse.add_argument("--port", type=validate.port_or_zero, default=0, help="port to listen on (default 0: any free port)")
    kmse.add_argument("--root", default=None, help="attestation root PEM (the software NSM's root.pem)")
    kmse.add_argument("--make-tls", action="store_true",
                      help="only make the emulator's dev CA and certificate in --datadir (once) and exit")
    kmse.set_defaults(func=cmd_kms_emulator)

    att = sub.add_parser("attest", help="fetch and verify the enclave's attestation document")
    add_common_options(att)
    att.add_argument("--nonce", default=None, type=validate.hex_bytes, help="hex nonce (default: 32 random bytes)")
    att.add_argument("--root", default=None, help="root PEM (default: the local software NSM root)")
    att.add_argument("--aws-root", action="store_true", help="require the root to be AWS Nitro Root-G1")
    att.add_argument("--pcr", action="append", default=[], metavar="N=HEX", type=validate.pcr_pin,
                     help="require this PCR value in the document (repeatable)")
    att.add_argument("--allow-debug", action="store_true", help="accept a debug-mode enclave (PCRs all zero)")
    att.add_argument("--out", default=None, help="also save the document here")
    att.add_argument("--kms-key", default=None, metavar="ARN", help="the KMS key ARN (account included) the enclave's master key must come from; checked against the attestation")
    att.set_defaults(func=cmd_attest, attest_command=None)
    att_sub = att.add_subparsers(dest="attest_command")
    ver = att_sub.add_parser("verify", help="verify a saved attestation document")
    ver.add_argument("file", help="the document saved by `clave attest --out`")
    ver.add_argument("--at", type=int, default=None, help="verify at this time (unix ms)")
    ver.add_argument("--root", default=None, help="root PEM (default: the local software NSM root in --datadir)")
    ver.add_argument("--aws-root", action="store_true", help="require the root to be AWS Nitro Root-G1")
    ver.add_argument("--pcr", action="append", default=[], metavar="N=HEX", type=validate.pcr_pin,
                     help="require this PCR value in the document (repeatable)")
    ver.add_argument("--allow-debug", action="store_true", help="accept a debug-mode enclave (PCRs all zero)")
    ver.add_argument("--datadir", default=str(DEFAULT_DATADIR),
                     help="data directory whose store pins the KMS key (default ~/.clave)")
    ver.add_argument("--kms-key", default=None, metavar="ARN", help="the KMS key ARN (account included) the enclave's master key must come from; checked against the attestation")
    ver.set_defaults(func=cmd_attest)

    pol = sub.add_parser("kms-policy", help="print the KMS key policy that admits only this enclave image")
    pol.add_argument("--role-arn", required=True, help="IAM role of the parent instance")
    pol.add_argument("--admin-arn", default=None, help="principal that administers the key (default: account root)")
    pol.add_argument("--image-sha384", default=None, metavar="HEX",
                     help="the EIF's image SHA-384 (kms:RecipientAttestation:ImageSha384), instead of PCRs")
    for index in (0, 1, 2, 3, 4, 8):
        pol.add_argument(f"--pcr{index}", default=None, help=f"PCR{index} as 96 hex characters")
    pol.set_defaults(func=cmd_kms_policy)
    add_validator_commands(sub)
    add_backup_commands(sub)  # custodian, backup, recovery, store (cli/backup.py)
    add_policy_commands(sub)
    add_audit_commands(sub)
    from clave.cli.systemd_render import add_systemd_commands

    add_systemd_commands(sub)
    from clave.cli.helptext import add_examples

    add_examples(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # one line naming what was wrong and what to do; never a traceback
        from clave.cli.errors import fail

        fail(exc)
    sys.exit(code)


if __name__ == "__main__":
    main()
