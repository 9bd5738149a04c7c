"""`clave audit verify [FILE]` and `clave audit tail [FILE]`: the enclave's hash-chained audit log."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clave.cli.client import add_common_options
from clave.cli.policy import add_audit_ack
from clave.core.audit import verify_lines


def _files(args: argparse.Namespace) -> list[Path]:
    """The files given, in order, or the datadir's log: its rotated segments, oldest first, then audit.log."""
    from clave.sidecar.audit import segments

    if args.file:
        return [Path(f) for f in args.file]
    found = segments(Path(os.path.expanduser(args.datadir)).absolute() / "audit.log")
    if not found:
        raise SystemExit(f"clave: no audit log in {args.datadir}")
    return found


def _lines(paths: list[Path], where: list[tuple[Path, int]] | None = None) -> Iterator[bytes]:
    """The lines of several files as one sequence; `where` collects (file, lines in it) as they are read."""
    for path in paths:
        count = 0
        try:
            with path.open("rb") as f:
                for line in f:
                    count += 1
                    yield line
        except OSError as exc:
            raise SystemExit(f"clave: {path}: {exc.strerror}") from None
        finally:
            if where is not None:
                where.append((path, count))


def _locate(where: list[tuple[Path, int]], line_no: int) -> tuple[Path, int]:
    """A line number of the whole sequence as (file, line in it)."""
    for path, count in where:
        if line_no <= count:
            return path, line_no
        line_no -= count
    return where[-1][0], line_no


def _attestation_check(args: argparse.Namespace) -> Any:
    """Each boot entry's document: signed by the root, and its user_data names the boot's checkpoint key."""
    from clave.core.provenance import ProvenanceError, decode_audit_key
    from clave.sidecar.trust.attestation import (
        AWS_NITRO_ROOT_G1_SHA256,
        PcrPolicy,
        load_root,
        parse_attestation,
        verify_attestation,
    )

    def document_time_ms(document: bytes) -> int:
        # As of when it was made (its certificates are short-lived); X.509 times have one-second resolution.
        return parse_attestation(document)[0].timestamp_ms + 1000

    root_path = Path(args.root) if args.root else Path(os.path.expanduser(args.datadir)).absolute() / "nsm" / "root.pem"
    try:
        root = load_root(root_path.read_bytes(), fingerprint=AWS_NITRO_ROOT_G1_SHA256 if args.aws_root else None)
    except OSError:
        raise SystemExit(f"clave: {root_path}: cannot read the attestation root; pass --root PEM, or "
                         "--no-attestation to check the chain and signatures only") from None

    def check(entry: dict[str, Any]) -> str | None:
        try:
            document = bytes.fromhex(entry["attestation"])
            verified = verify_attestation(document, root=root, now_ms=document_time_ms(document),
                                          pcr_policy=PcrPolicy(allow_debug=args.allow_debug))
            key = decode_audit_key(verified.user_data)
        except (KeyError, ValueError, TypeError):
            return "no attestation document"
        except ProvenanceError as exc:
            return exc.message
        except Exception as exc:  # the verifier's own errors: say which
            return getattr(exc, "message", str(exc))
        if key is None or key.hex() != entry["checkpoint_key"]:
            return "the attested audit key is not the boot's checkpoint key"
        return None

    return check


def cmd_audit_verify(args: argparse.Namespace) -> int:
    paths = _files(args)
    where: list[tuple[Path, int]] = []
    started = time.perf_counter()
    verdict = verify_lines(_lines(paths, where), attestation=None if args.no_attestation else _attestation_check(args))
    seconds = time.perf_counter() - started
    summary = {"ok": verdict.ok, "entries": verdict.entries, "checkpoints": verdict.checkpoints,
               "boots": verdict.boots, "unsigned_tail": verdict.unsigned_tail, "head": verdict.head,
               "seconds": round(seconds, 3)}
    summary["files"] = len(paths)
    if not verdict.ok:
        assert verdict.first_bad is not None
        path, line_no = _locate(where, verdict.first_bad)
        summary.update(first_bad_line=verdict.first_bad, file=str(path), line=line_no, reason=verdict.reason)
        print(json.dumps(summary))
        print(f"clave: {path}:{line_no}: {verdict.reason}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from collections import deque

    for line in deque(_lines(_files(args)), maxlen=args.lines):
        entry = json.loads(line)
        entry.pop("attestation", None) if not args.full else None
        print(json.dumps(entry))
    return 0


def add_audit_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the enclave's hash-chained audit log (<datadir>/audit.log)")
    aud = audit.add_subparsers(dest="audit_command", required=True)
    verify = aud.add_parser("verify", help="check the chain, the checkpoint signatures and each boot's attestation")
    add_common_options(verify)
    verify.add_argument("file", nargs="*", default=None,
                        help="log files in order (default: the datadir's audit log, rotated segments first)")
    verify.add_argument("--root", default=None, help="attestation root PEM (default: the local software NSM's)")
    verify.add_argument("--aws-root", action="store_true", help="require the root to be AWS Nitro Root-G1")
    verify.add_argument("--allow-debug", action="store_true", help="accept debug-mode enclaves")
    verify.add_argument("--no-attestation", action="store_true", help="skip the boot attestation check")
    verify.set_defaults(func=cmd_audit_verify)
    tail = aud.add_parser("tail", help="print the last entries as JSON lines")
    add_common_options(tail)
    tail.add_argument("file", nargs="*", default=None, help="audit log files (default: DATADIR/audit.log and its rotations)")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many of the last entries to print (default 20)")
    tail.add_argument("--full", action="store_true", help="keep the boot entries' attestation documents")
    tail.set_defaults(func=cmd_audit_tail)
    add_audit_ack(aud)
