"""`clave custodian …`, `clave backup …`, `clave recovery …` (issue 14; README "Backup and recovery").

    clave custodian new --out FILE --password-file P          # X25519 HPKE key, private half under scrypt
    clave custodian pub FILE                                  # its public half (hex)
    clave backup create --threshold K --custodian PUB … [--account ADDR … | --all] --out DIR
                        --admin-keyfile K --admin-password-file P [--sequence N]
    clave backup verify DIR --custodian-key FILE --password-file P
    clave recovery start --out DOC                            # on the fresh datadir's running clave
    clave recovery contribute SHARE --custodian-key FILE --password-file P --attestation DOC
                        --manifest DIR/manifest.cbor --root PEM [--pcr0 HEX] [--kms-key-arn ARN]
                        [--min-sequence N] --out FILE
    clave recovery finish SHARE_FOR_ENCLAVE … --backup DIR
    clave store export --out FILE / clave store import FILE   # sealed records only; same KMS key

A backup directory holds `manifest.cbor` (public), `payload.bin` (the account keys, encrypted under the
backup secret) and `share-<i>.json` (share i, HPKE-sealed to custodian i): hand each custodian its share
file and a copy of the manifest and payload. Nothing in it opens without K custodians' private keys.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from clave.cli.client import add_common_options, connect, read_password
from clave.core import backup_format as bf
from clave.core import feldman
from clave.core.custodian import custodian_public, decrypt_custodian_key, encrypt_custodian_key
from clave.core.errors import RequestError
from clave.core.provenance import ProvenanceError, decode_kms, decode_recovery
from clave.sidecar.secretfiles import write_new_private, write_private

DOCUMENT_MAX_AGE_MS = 24 * 3600 * 1000  # a ceremony may take a day; the recovery key lives for one boot


class CeremonyRefused(RequestError):
    """The custodian's tool refuses to re-seal its share (the document or the share does not check out)."""


# -- library functions (tests and the benchmark call these) ------------------------------------------

def contribute(sealed: Any, custodian_key: X25519PrivateKey, manifest: bf.Manifest, document: bytes,
               root: x509.Certificate, now_ms: int, pcr0: bytes | None = None, min_sequence: int = 0,
               kms_key_arn: str | None = None) -> dict[str, Any]:
    """Check the recovering enclave's attestation document (chain to `root`, PCR0 = the manifest's pin, and
    the custodian's own `pcr0` pin when given, a recovery key in user_data), check the share against the
    manifest's commitments, and re-seal it to the recovery key. A custodian who holds shares of a later
    backup (rotation) passes its sequence as `min_sequence`: shares of older backups are then void. With
    `kms_key_arn`, the recovering enclave must attest that its master key came from that KMS key."""
    from clave.sidecar.trust.attestation import AttestationError, PcrPolicy, verify_attestation

    if manifest.sequence < min_sequence:
        raise CeremonyRefused(f"refused: this backup (sequence {manifest.sequence}) was superseded by "
                              f"sequence {min_sequence}; contribute your share of the newer backup")

    if pcr0 is not None and pcr0 != manifest.pcr0:
        raise CeremonyRefused("refused: the manifest pins another PCR0 than the one you expect (--pcr0)")
    try:
        verified = verify_attestation(document, root=root, now_ms=now_ms, max_age_ms=DOCUMENT_MAX_AGE_MS,
                                      pcr_policy=PcrPolicy(expected={0: manifest.pcr0}))
    except AttestationError as exc:
        raise CeremonyRefused(f"refused: the recovering enclave's attestation does not verify: {exc}") from None
    try:
        recovery = decode_recovery(verified.user_data)
        attested_kms = decode_kms(verified.user_data)
    except ProvenanceError as exc:
        raise CeremonyRefused(f"refused: {exc.message}") from None
    if kms_key_arn is not None and attested_kms != kms_key_arn:
        raise CeremonyRefused(f"refused: the recovering enclave's master key comes from KMS key {attested_kms}, "
                              f"not {kms_key_arn}")
    if recovery is None:
        raise CeremonyRefused("refused: the attestation document carries no recovery key (run `clave recovery start`)")
    share_doc = bf.parse_sealed_share(sealed)
    share = bf.open_share(custodian_key, share_doc, manifest.id, "custodian")
    feldman.check_share(manifest.commitments, share)
    return bf.seal_share(recovery, "recovery", manifest.id, share)


def check_own_share(sealed: Any, custodian_key: X25519PrivateKey, manifest: bf.Manifest) -> int:
    """`backup verify`: open the custodian's share and check it against the commitments; its index."""
    share = bf.open_share(custodian_key, bf.parse_sealed_share(sealed), manifest.id, "custodian")
    feldman.check_share(manifest.commitments, share)
    return share.x


def write_backup(out: Path, result: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=False, mode=0o700)
    manifest = bytes.fromhex(result["manifest"][2:])
    (out / "manifest.cbor").write_bytes(manifest)
    (out / "payload.bin").write_bytes(bytes.fromhex(result["payload"][2:]))
    paths = []
    for share in result["shares"]:
        path = out / f"share-{share['index']}.json"
        path.write_text(json.dumps(share, indent=1) + "\n")
        paths.append(path)
    return paths


def load_manifest(path: Path) -> bf.Manifest:
    try:
        return bf.decode_manifest(path.read_bytes())
    except OSError as exc:
        raise SystemExit(f"clave: {path}: cannot read the manifest: {exc.strerror}") from None


# -- commands ------------------------------------------------------------------------------------

def _json_file(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"clave: {path}: cannot read the {what}: {exc}") from None


def admin_account(keyfile: str, password_file: str) -> Any:
    """The admin key that authorizes the backup, from its V3 keyfile (decrypted here, in the CLI)."""
    from eth_account import Account

    data = _json_file(keyfile, "admin keyfile")
    try:
        return Account.from_key(Account.decrypt(data, read_password(password_file)))
    except ValueError as exc:
        raise SystemExit(f"clave: {keyfile}: cannot decrypt the admin keyfile: {exc}") from None


def _custodian_key(args: argparse.Namespace) -> X25519PrivateKey:
    return decrypt_custodian_key(_json_file(args.custodian_key, "custodian key file"), read_password(args.password_file))


def cmd_custodian_new(args: argparse.Namespace) -> int:
    password = read_password(args.password_file)
    if not password:
        raise SystemExit(f"clave: {args.password_file}: the custodian key password is empty")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"clave: {out}: already exists; refusing to overwrite")
    key = X25519PrivateKey.generate()
    document = encrypt_custodian_key(key, password, os.urandom, n=args.scrypt_n)
    write_new_private(out, json.dumps(document, indent=1) + "\n")
    print(f"Custodian public key: {document['public']}")
    return 0


def cmd_custodian_pub(args: argparse.Namespace) -> int:
    print(custodian_public(_json_file(args.file, "custodian key file")).hex())
    return 0


def _parse_hex(text: str, size: int, what: str) -> bytes:
    try:
        value = bytes.fromhex(text.lower().removeprefix("0x"))
    except ValueError:
        value = b""
    if len(value) != size:
        raise SystemExit(f"clave: {what} {text}: expected {size} bytes of hex")
    return value


def _attested_pcr0(client: Any, args: argparse.Namespace) -> bytes:
    """PCR0 of the running enclave, from a fresh attestation document checked here."""
    from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation

    datadir = Path(os.path.expanduser(args.datadir)).absolute()
    root_path = Path(args.attestation_root) if args.attestation_root else datadir / "nsm" / "root.pem"
    if not root_path.exists():
        raise SystemExit(f"clave: {root_path}: no attestation root; pass --attestation-root PEM")
    nonce = os.urandom(32)
    document = bytes.fromhex(client.call("clave_attest", "0x" + nonce.hex())[2:])
    verified = verify_attestation(document, root=load_root(root_path.read_bytes()), now_ms=int(time.time() * 1000),
                                  pcr_policy=PcrPolicy(allow_debug=False), expected_nonce=nonce, max_age_ms=300_000)
    return verified.pcrs[0]


def cmd_backup_create(args: argparse.Namespace) -> int:
    from eth_account.messages import encode_defunct

    from clave.sidecar.transports.ipc_client import RpcCallError

    custodians = [_parse_hex(c, 32, "--custodian") for c in args.custodian]
    if bool(args.account) == bool(args.all):
        raise SystemExit("clave: backup create: give --account ADDR (repeatable) or --all")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"clave: {out}: already exists; refusing to overwrite")
    admin = admin_account(args.admin_keyfile, args.admin_password_file)
    sequence = args.sequence if args.sequence is not None else int(time.time())
    with connect(args) as client:
        try:
            pcr0 = _attested_pcr0(client, args)
            if args.all:
                accounts = [bytes.fromhex(a["address"][2:]) for a in client.call("clave_listAccounts")]
            else:
                accounts = [_parse_hex(a, 20, "--account") for a in args.account]
            challenge = bytes.fromhex(client.call("clave_backupChallenge")["challenge"][2:])
            digest = bf.request_digest(sequence, args.threshold, custodians, accounts, pcr0)
            signature = bytes(admin.sign_message(encode_defunct(bf.backup_message(digest, challenge))).signature)
            result = client.call("clave_backupCreate", {
                "threshold": args.threshold, "sequence": sequence, "custodians": ["0x" + c.hex() for c in custodians],
                "accounts": ["0x" + a.hex() for a in accounts], "pcr0": "0x" + pcr0.hex(),
                "challenge": "0x" + challenge.hex(), "signature": "0x" + signature.hex()})
        except RpcCallError as exc:
            raise SystemExit(f"clave: backup create: {exc.message}") from None
    paths = write_backup(out, result)
    print(f"Backup {result['manifest_id']}: {len(accounts)} accounts, {args.threshold}-of-{len(custodians)}, "
          f"sequence {sequence}, PCR0 {pcr0.hex()}")
    for path in paths:
        print(f"  {path}")
    return 0


def cmd_backup_verify(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    manifest = load_manifest(directory / "manifest.cbor")
    key = _custodian_key(args)
    mine = bf.public_key_bytes(key)
    if mine not in manifest.custodians:
        raise SystemExit("clave: backup verify: this custodian key is not one of the backup's custodians")
    index = manifest.custodians.index(mine) + 1
    index = check_own_share(_json_file(str(directory / f"share-{index}.json"), "share"), key, manifest)
    payload = (directory / "payload.bin").read_bytes() if (directory / "payload.bin").exists() else None
    print(f"share {index} of {manifest.threshold}-of-{len(manifest.custodians)} matches the Feldman commitments")
    print(f"manifest {manifest.id.hex()} sequence {manifest.sequence}, {len(manifest.accounts)} accounts, "
          f"PCR0 {manifest.pcr0.hex()}, authorized by admin 0x{manifest.admin.hex()}")
    if payload is not None:
        print("payload matches the manifest" if bf.payload_hash(payload) == manifest.payload
              else "payload.bin does NOT match the manifest")
    return 0


def cmd_recovery_start(args: argparse.Namespace) -> int:
    from clave.sidecar.transports.ipc_client import RpcCallError

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"clave: {out}: already exists; refusing to overwrite")
    with connect(args) as client:
        try:
            result = client.call("clave_recoveryStart", "0x" + os.urandom(32).hex())
        except RpcCallError as exc:
            raise SystemExit(f"clave: recovery start: {exc.message}") from None
    out.write_bytes(bytes.fromhex(result["document"][2:]))
    print(f"Attestation document with the one-time recovery key {result['recovery_key']} written to {out}")
    return 0


def cmd_recovery_contribute(args: argparse.Namespace) -> int:
    from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"clave: {out}: already exists; refusing to overwrite")
    manifest = load_manifest(Path(args.manifest))
    root = load_root(Path(args.root).read_bytes())
    pcr0 = _parse_hex(args.pcr0, 48, "--pcr0") if args.pcr0 else None
    document = Path(args.attestation).read_bytes()
    now_ms = int(time.time() * 1000)
    result = contribute(_json_file(args.share, "share"), _custodian_key(args), manifest, document, root, now_ms,
                        pcr0, args.min_sequence, args.kms_key_arn)
    out.write_text(json.dumps(result, indent=1) + "\n")
    verified = verify_attestation(document, root=root, now_ms=now_ms, max_age_ms=DOCUMENT_MAX_AGE_MS,
                                  pcr_policy=PcrPolicy(expected={0: manifest.pcr0}))
    print(f"checked: the document chains to the root, PCR0 {manifest.pcr0.hex()} is the manifest's pin, "
          f"the enclave's master key comes from KMS key {decode_kms(verified.user_data)}, "
          f"recovery key {result['recipient']}")
    print(f"share {result['index']} of backup {manifest.id.hex()} (sequence {manifest.sequence}) re-sealed to it: {out}")
    return 0


def cmd_recovery_finish(args: argparse.Namespace) -> int:
    from clave.sidecar.transports.ipc_client import RpcCallError

    directory = Path(args.backup)
    shares = [_json_file(s, "share") for s in args.shares]
    with connect(args) as client:
        try:
            result = client.call("clave_recoveryFinish", {
                "manifest": "0x" + (directory / "manifest.cbor").read_bytes().hex(),
                "payload": "0x" + (directory / "payload.bin").read_bytes().hex(), "shares": shares})
        except RpcCallError as exc:
            raise SystemExit(f"clave: recovery finish: {exc.message}") from None
    print(f"Recovered {len(result['accounts'])} accounts from backup {result['manifest_id']} "
          f"(sequence {result['sequence']}); sealed under this datadir's master key")
    return 0


def _store(args: argparse.Namespace) -> Any:
    from clave.sidecar.store.records import SqliteStore

    return SqliteStore(Path(os.path.expanduser(args.datadir)).absolute() / "keystore.sqlite")


def cmd_store_export(args: argparse.Namespace) -> int:
    from clave.sidecar.store.transfer import export_store

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"clave: {out}: already exists; refusing to overwrite")
    store = _store(args)
    try:
        data = export_store(store)
    finally:
        store.close()
    write_private(out, data, replace=False)
    print(f"Exported the sealed store to {out} ({len(data):,} bytes; ciphertext only, opens with the same KMS key)")
    return 0


def cmd_store_import(args: argparse.Namespace) -> int:
    from clave.cli.client import ipc_path
    from clave.sidecar.store.transfer import import_store

    if ipc_path(args).exists():
        raise SystemExit(f"clave: {ipc_path(args)} exists: stop clave on this datadir before importing a store")
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise SystemExit(f"clave: {args.file}: cannot read: {exc.strerror}") from None
    store = _store(args)
    try:
        count = import_store(store, data)
    finally:
        store.close()
    print(f"Imported {count} sealed records; start clave on this datadir (the same KMS key must release its data key)")
    return 0


def add_backup_commands(subparsers: Any) -> None:
    """Add `clave custodian|backup|recovery …` to the `clave` parser's subcommands."""
    custodian = subparsers.add_parser("custodian", help="custodian keys for backup shares").add_subparsers(
        dest="custodian_command", required=True)
    new = custodian.add_parser("new", help="make a custodian key pair (X25519, password-protected file)")
    new.add_argument("--out", required=True, help="where to write the custodian key file (new file, 0600)")
    new.add_argument("--password-file", required=True, help="the password that protects the private half (scrypt, as a V3 keyfile)")
    new.add_argument("--scrypt-n", type=int, default=1 << 18, help="scrypt cost N for the key file (default 2^18, as geth's keyfiles; lower it only for tests)")
    new.set_defaults(func=cmd_custodian_new)
    pub = custodian.add_parser("pub", help="print a custodian key file's public key")
    pub.add_argument("file", help="a custodian key file made by `clave custodian new`")
    pub.set_defaults(func=cmd_custodian_pub)

    backup = subparsers.add_parser("backup", help="k-of-n backups of account keys").add_subparsers(
        dest="backup_command", required=True)
    create = backup.add_parser("create", help="back up accounts, split among custodians (needs an admin)")
    add_common_options(create)
    create.add_argument("--attestation-root", default=None, help="PEM root the enclave's attestation must chain to (default: DATADIR/nsm/root.pem, local mode)")
    create.add_argument("--threshold", type=int, required=True, help="K: how many custodians a recovery needs")
    create.add_argument("--custodian", action="append", required=True, metavar="PUB", help="a custodian's public key (`clave custodian pub`); once per custodian, N in all")
    create.add_argument("--account", action="append", default=[], metavar="ADDR", help="an account to back up (repeat); or --all")
    create.add_argument("--all", action="store_true", help="back up every account the enclave holds")
    create.add_argument("--sequence", type=int, default=None, help="backup number (default: unix time)")
    create.add_argument("--out", required=True, help="a new directory for the manifest, the encrypted payload and one sealed share per custodian")
    create.add_argument("--admin-keyfile", required=True, help="V3 keyfile of an admin key (its signature authorizes the backup)")
    create.add_argument("--admin-password-file", required=True, help="password of the admin keyfile")
    create.set_defaults(func=cmd_backup_create)
    verify = backup.add_parser("verify", help="check one custodian's share offline")
    verify.add_argument("dir", help="the backup directory (`clave backup create --out`)")
    verify.add_argument("--custodian-key", required=True, help="this custodian's key file")
    verify.add_argument("--password-file", required=True, help="password of the custodian key file")
    verify.set_defaults(func=cmd_backup_verify)

    store = subparsers.add_parser("store", help="move the sealed store (ciphertext only)").add_subparsers(
        dest="store_command", required=True)
    export = store.add_parser("export", help="write the sealed records and KMS-wrapped data key to a file")
    add_common_options(export)
    export.add_argument("--out", required=True, help="file to write the sealed records to (ciphertext only; a new file)")
    export.set_defaults(func=cmd_store_export)
    imp = store.add_parser("import", help="fill a new datadir's store from an export (clave stopped)")
    add_common_options(imp)
    imp.add_argument("file", help="a file from `clave store export` (same KMS key)")
    imp.set_defaults(func=cmd_store_import)

    recovery = subparsers.add_parser("recovery", help="recover a backup into a fresh enclave").add_subparsers(
        dest="recovery_command", required=True)
    start = recovery.add_parser("start", help="print the enclave's attestation with a one-time recovery key")
    add_common_options(start)
    start.add_argument("--out", required=True, help="where to write the attestation document with the one-time recovery key")
    start.set_defaults(func=cmd_recovery_start)
    contrib = recovery.add_parser("contribute", help="check the document and re-seal your share to it")
    contrib.add_argument("share", help="this custodian's sealed share from the backup directory")
    contrib.add_argument("--custodian-key", required=True, help="this custodian's key file")
    contrib.add_argument("--password-file", required=True, help="password of the custodian key file")
    contrib.add_argument("--attestation", required=True, help="the document `clave recovery start` wrote (checked: root, PCR0 pin, recovery key)")
    contrib.add_argument("--manifest", required=True, help="the backup's manifest (commitments, K, PCR0 pin)")
    contrib.add_argument("--root", required=True, help="attestation root PEM (AWS Nitro Root-G1)")
    contrib.add_argument("--pcr0", default=None, help="the PCR0 you expect (must equal the manifest's pin)")
    contrib.add_argument("--kms-key-arn", default=None,
                         help="require the recovering enclave's master key to come from this KMS key (attested)")
    contrib.add_argument("--min-sequence", type=int, default=0,
                         help="refuse backups older than this sequence (the newest backup you hold a share of)")
    contrib.add_argument("--out", required=True, help="where to write the share re-sealed to the recovering enclave")
    contrib.set_defaults(func=cmd_recovery_contribute)
    finish = recovery.add_parser("finish", help="hand K re-sealed shares to the enclave")
    add_common_options(finish)
    finish.add_argument("shares", nargs="+", help="K shares re-sealed by `clave recovery contribute`")
    finish.add_argument("--backup", required=True, help="the backup directory (manifest.cbor, payload.bin)")
    finish.set_defaults(func=cmd_recovery_finish)

