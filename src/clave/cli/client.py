"""What every command that talks to a running clave shares: its options, the IPC client, the password
file, and the attested enclave key that secrets are sealed to."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from clave.cli.validate import pcr_pin
from clave.sidecar.config import DEFAULT_DATADIR, parse_pcr


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datadir", default=str(DEFAULT_DATADIR), help="data directory (default ~/.clave)")
    parser.add_argument("--ipcpath", default=None, help="IPC socket path (default <datadir>/clave.ipc)")


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Options of commands that talk to a running clave and send it secrets (after attesting it)."""
    add_common_options(parser)
    parser.add_argument("--attestation-root", default=None, help="PEM of the attestation root to trust")
    parser.add_argument("--pcr", action="append", default=[], metavar="N=HEX", type=pcr_pin,
                        help="require the enclave to attest this PCR value before the command runs (repeatable)")


def ipc_path(args: argparse.Namespace) -> Path:
    if args.ipcpath:
        return Path(os.path.expanduser(args.ipcpath)).absolute()
    return Path(os.path.expanduser(args.datadir)).absolute() / "clave.ipc"


def read_password(path: str | None, **kwargs: Any) -> str:
    """`--password-file FILE`, `-` for stdin, or a prompt on a terminal (see `clave.cli.passwords`)."""
    from clave.cli.passwords import read_password as read

    return read(path, **kwargs)


def attested_public_key(client: Any, args: argparse.Namespace) -> bytes:
    """Ask the enclave for a fresh attestation and check it here, so secrets go only to a genuine enclave."""
    from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation

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
    check_master_commitment(verified, datadir)
    return verified.public_key


def store_meta(datadir: Path, name: str) -> bytes | None:
    """One `meta` value of `<datadir>/keystore.sqlite`, read-only (SystemExit if there is no readable store)."""
    import sqlite3

    path = datadir / "keystore.sqlite"
    if not path.exists():
        raise SystemExit(
            f"clave: {path}: no key store; pass the service's --datadir (its store pins the enclave's master key)"
        )
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SystemExit(f"clave: {path}: cannot read the key store: {exc}") from None
    return bytes(row[0]) if row is not None else None


def pinned_commitment(datadir: Path) -> bytes | None:
    """The master-key commitment `clave serve`/`clave up` pinned in `<datadir>/keystore.sqlite`."""
    from clave.sidecar.signing.signer import META_MASTER_COMMITMENT

    return store_meta(datadir, META_MASTER_COMMITMENT)


def check_master_commitment(verified: Any, datadir: Path) -> None:
    """Refuse (SystemExit) unless the attested enclave holds the store's master key: a secret sealed to an
    enclave holding another key (loaded by someone else after a restart) would end up sealed under it."""
    from clave.core.provenance import ProvenanceError, decode_user_data

    try:
        attested = decode_user_data(verified.user_data)
    except ProvenanceError as exc:
        raise SystemExit(f"clave: refusing to send secrets to the enclave: {exc.message}") from None
    pinned = pinned_commitment(datadir)
    if pinned is None:
        raise SystemExit(
            "clave: refusing to send secrets to the enclave: the store has no pinned master-key commitment yet "
            "(wait until the service is ready: /healthz master_key_verified)"
        )
    if attested is None:
        raise SystemExit("clave: refusing to send secrets to the enclave: it attests to no master key")
    if attested != pinned:
        raise SystemExit(
            f"clave: refusing to send secrets to the enclave: it holds master key {attested.hex()[:16]}…, "
            f"the store's is {pinned.hex()[:16]}… (someone else loaded its key; restart the enclave)"
        )


def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from clave.sidecar.transports.ipc_client import IpcClient

    try:
        return IpcClient(ipc_path(args))
    except ConnectionError as exc:
        raise SystemExit(f"clave: {exc}") from None




def parse_admins(text: str) -> list[bytes]:
    """`--admin 0xADDR[,0xADDR…]` as 20-byte addresses; SystemExit naming a bad or repeated one."""
    admins = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = bytes.fromhex(item.removeprefix("0x").removeprefix("0X"))
        except ValueError:
            value = b""
        if len(value) != 20:
            raise SystemExit(f"clave: --admin {item}: expected a 0x-prefixed 20-byte address")
        admins.append(value)
    if len(set(admins)) != len(admins):
        raise SystemExit("clave: --admin: an address is given twice")
    return admins
