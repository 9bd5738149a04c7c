#!/usr/bin/env python3
"""Write tests/data/backup_share_vectors.json: the backup share format (core/backup_format.py) computed by
clave's own code from a fixed seed. `tests/test_backup_crypto.py` recomputes it and also checks it against
independent arithmetic (Lagrange at 0 with Python ints, points with py_ecc), so a change to the format
shows up as a diff of this file.

    PYTHONPATH=src python scripts/backup_vectors.py            # rewrite the file
    PYTHONPATH=src python scripts/backup_vectors.py --check    # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from clave.core import backup_format as bf
from clave.core import feldman, shamir

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "backup_share_vectors.json"
SEED = b"clave backup share vectors v1"


def seeded(label: bytes) -> bf.RandomSource:
    """A deterministic byte source (SHA-256 in counter mode) for vectors only."""
    counter = itertools.count()

    def draw(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(SEED + label + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return draw


def case(name: str, threshold: int, count: int) -> dict[str, Any]:
    random = seeded(name.encode())
    secret = shamir.random_scalar(random)
    split = shamir.split(secret, threshold, count, random)
    commitments = feldman.commit(split.coefficients)
    custodians = [X25519PrivateKey.from_private_bytes(random(32)) for _ in range(count)]
    accounts = sorted(hashlib.sha256(name.encode() + bytes([i])).digest()[:20] for i in range(2))
    keys = [bf.BackedUpKey(a, hashlib.sha256(b"key" + a).digest(), "generated", False) for a in accounts]
    payload = bf.encrypt_payload(secret, 7, keys, random(12))
    manifest = bf.Manifest(7, threshold, tuple(bf.public_key_bytes(c) for c in custodians), tuple(accounts),
                           commitments, bytes(48), bf.payload_hash(payload), 1_700_000_000, bytes(20),
                           bytes(65), random(32))
    mid = manifest.id
    return {
        "name": name,
        "threshold": threshold,
        "secret": hex(secret),
        "coefficients": [hex(a) for a in split.coefficients],
        "shares": [{"x": s.x, "y": hex(s.y), "encoded": bf.encode_share(mid, s).hex()} for s in split.shares],
        "commitments": [c.hex() for c in commitments],
        "custodian_private_keys": [c.private_bytes_raw().hex() for c in custodians],
        "manifest": manifest.encode().hex(),
        "manifest_id": mid.hex(),
        "payload": payload.hex(),
        "keys": [{"address": k.address.hex(), "secret": k.secret.hex()} for k in keys],
        # HPKE draws its ephemeral key from the OS: this one is opened, not recomputed, by the test.
        "sealed_share_1": bf.seal_share(bf.public_key_bytes(custodians[0]), "custodian", mid, split.shares[0]),
    }


def build() -> dict[str, Any]:
    return {
        "description": "clave backup share format v1, produced by clave's own code (scripts/backup_vectors.py); "
                       "test keys only",
        "field_order": hex(shamir.ORDER),
        "cases": [case("2-of-3", 2, 3), case("3-of-5", 3, 5), case("1-of-1", 1, 1)],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    fresh = build()
    if args.check:
        stored = json.loads(OUT.read_text())
        same = all(_stable(a) == _stable(b) for a, b in zip(stored["cases"], fresh["cases"], strict=True))
        print("backup vectors up to date" if same else "backup vectors differ")
        return 0 if same else 1
    OUT.write_text(json.dumps(fresh, indent=1) + "\n")
    print(f"wrote {OUT.name}")
    return 0


def _stable(c: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in c.items() if k != "sealed_share_1"}


if __name__ == "__main__":
    sys.exit(main())
