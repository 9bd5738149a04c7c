"""`clave validator …`: go-opera / sonic validator keys made in the enclave, and the password FIFO.

    clave validator new --keystore DIR --password-file F
    clave validator restore 0xc004… --keystore DIR --password-file F
    clave validator password-fifo --fifo PATH --password-file F

`--keystore` means what it means to go-opera and sonic (the node's key directory, default
`<datadir>/keystore`); the keyfile goes to `DIR/validator/c004…`, as `opera validator new` writes it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

from clave.cli.client import add_client_options, attested_public_key, connect
from clave.sidecar.secretfiles import write_new_private

PUBKEY = re.compile(r"^0xc004[0-9a-f]{128}$")
# Pause between readers. A reader that is slow to close may still get the password twice ("pw\npw\n");
# go-opera and sonic use line 0 only. No probing of the FIFO: opening and closing its write end while a
# new reader arrives would hand that reader an empty password.
BETWEEN_READERS = 0.1


def read_node_password(path: str) -> str:
    """The password as go-opera and sonic read a password file: line 0, trailing CRs trimmed."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"clave: {path}: cannot read password file: {exc.strerror}") from None
    password = text.split("\n")[0].rstrip("\r")
    if not password:
        raise SystemExit(f"clave: {path}: the validator password is empty")
    return password


def validator_dir(keystore: str) -> Path:
    return Path(os.path.expanduser(keystore)).absolute() / "validator"


def write_keyfile(directory: Path, pubkey: str, keyfile: str) -> Path:
    """Write atomically as go-opera's valkeystore does: dir 0700, hidden temp file 0600, rename."""
    if not PUBKEY.match(pubkey):
        raise SystemExit(f"clave: the enclave returned a malformed validator public key {pubkey!r}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # go-opera's FileKeystore.Add refuses an existing key too (ErrAlreadyExists): never overwrite one.
    return write_new_private(directory / pubkey[2:], keyfile)


def _sealed_password(client: Any, args: argparse.Namespace, password: str) -> str:
    from clave.core.envelope import seal_to

    # Sealed to the attested enclave key: the sidecar relays the password without being able to read it.
    return "0x" + seal_to(attested_public_key(client, args), {"password": password}).hex()


def _call(args: argparse.Namespace, method: str, *params_before: str, password: str) -> dict[str, str]:
    from clave.sidecar.transports.ipc_client import RpcCallError

    with connect(args) as client:
        envelope = _sealed_password(client, args, password)
        try:
            return client.call(method, *params_before, envelope)  # type: ignore[no-any-return]
        except RpcCallError as exc:
            raise SystemExit(f"clave: {method}: {exc.message}") from None


def _report(pubkey: str, path: Path) -> None:
    print(f"Public key:                  {pubkey}")
    print(f"Path of the secret key file: {path}")


def cmd_validator_new(args: argparse.Namespace) -> int:
    password = read_node_password(args.password_file)
    directory = validator_dir(args.keystore)
    result = _call(args, "clave_validatorNew", password=password)
    _report(result["pubkey"], write_keyfile(directory, result["pubkey"], result["keyfile"]))
    print("Register the public key with SFC.createValidator; the sealed backup is in clave's store.", file=sys.stderr)
    return 0


def cmd_validator_restore(args: argparse.Namespace) -> int:
    pubkey = args.pubkey.lower()
    if not PUBKEY.match(pubkey):
        raise SystemExit(f"clave: {args.pubkey}: expected a 0xc004… validator public key")
    password = read_node_password(args.password_file)
    directory = validator_dir(args.keystore)
    if (directory / pubkey[2:]).exists():
        raise SystemExit(f"clave: {directory / pubkey[2:]}: key already exists")
    result = _call(args, "clave_validatorKeyfile", pubkey, password=password)
    _report(result["pubkey"], write_keyfile(directory, result["pubkey"], result["keyfile"]))
    return 0


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def make_fifo(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISFIFO(mode):
            raise SystemExit(f"clave: {path}: exists and is not a FIFO; refusing to replace it")
        path.unlink()  # a stale FIFO from a previous run: recreate it with our owner and mode
    old = os.umask(0o177)
    try:
        os.mkfifo(path, 0o600)
    finally:
        os.umask(old)


def serve_fifo(path: Path, password: str) -> int:
    """Write the password to every reader that opens the FIFO, until SIGTERM/SIGINT. Returns readers served."""
    from clave.sidecar.serve import sd_notify

    data = (password + "\n").encode()
    served = 0
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        make_fifo(path)
        print(f"password-fifo serving {path}", flush=True)
        sd_notify("READY=1")
        while True:
            fd = os.open(path, os.O_WRONLY)  # blocks until a reader opens the FIFO
            try:
                os.write(fd, data)
            except BrokenPipeError:
                pass  # the reader left before reading: it will open again if it needs to
            finally:
                os.close(fd)
            served += 1
            time.sleep(BETWEEN_READERS)
    except _Stop:
        return served
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            if stat.S_ISFIFO(path.lstat().st_mode):
                path.unlink()
        except FileNotFoundError:
            pass


def cmd_validator_password_fifo(args: argparse.Namespace) -> int:
    password = read_node_password(args.password_file)
    served = serve_fifo(Path(args.fifo).absolute(), password)
    print(f"password-fifo stopped after {served} reader(s)", flush=True)
    return 0


def add_validator_commands(subparsers: Any) -> None:
    """Add `clave validator …` to the `clave` parser's subcommands."""

    validator = subparsers.add_parser("validator", help="go-opera / sonic validator keys made in the enclave")
    sub = validator.add_subparsers(dest="validator_command", required=True)

    def with_client(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        add_client_options(p)
        p.add_argument("--keystore", required=True, help="the node's keystore dir; the key goes to DIR/validator/")
        p.add_argument("--password-file", required=True, help="password for the keyfile (first line)")
        return p

    new = with_client("new", "generate a validator key in the enclave and write go-opera's keyfile")
    new.set_defaults(func=cmd_validator_new)
    restore = with_client("restore", "write the keyfile again from clave's sealed backup")
    restore.add_argument("pubkey", help="the 0xc004… validator public key")
    restore.set_defaults(func=cmd_validator_restore)
    fifo = sub.add_parser("password-fifo", help="serve the password through a FIFO for --validator.password")
    fifo.add_argument("--fifo", required=True, help="FIFO path to create (mode 0600)")
    fifo.add_argument("--password-file", required=True, help="the validator password (first line of the file)")
    fifo.set_defaults(func=cmd_validator_password_fifo)
