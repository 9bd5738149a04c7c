"""Backup and recovery time for N accounts (issue 14), on the in-process stack (tests/inproc.py: the
production enclave service, sidecar and KMS emulator wired on one event loop, CBOR frames over a unix
socket). Prints the figures; asserts only that the recovery gave back every account and that a recovered
key signs (eth-account recovers the signer).

    PYTHONPATH=src:. python bench/backup.py [--accounts 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.messages import encode_defunct

from clave.core import backup_format as bf
from tests.inproc import running_stack
from tests.test_backup_recovery import ADMINS, contributions, finish, manifest_of
from tests.test_backup_recovery import backup as make_backup


async def measure(accounts: int, root: Path) -> dict[str, float]:
    custodians = [X25519PrivateKey.generate() for _ in range(3)]
    public = [bf.public_key_bytes(c) for c in custodians]
    figures: dict[str, float] = {}
    async with running_stack(root / "old", admins=ADMINS) as old:
        started = time.perf_counter()
        made = 0
        while made < accounts:
            made += len(await old.rpc("clave_newAccount", {"count": min(5000, accounts - made)}))
        figures["generate"] = time.perf_counter() - started
        started = time.perf_counter()
        result = await make_backup(old, custodians=public)
        figures["backup_create"] = time.perf_counter() - started
    manifest = manifest_of(result)
    figures["payload_bytes"] = len(result["payload"]) // 2 - 1
    async with running_stack(root / "new", admins=ADMINS) as new:
        started = time.perf_counter()
        document = bytes.fromhex((await new.rpc("clave_recoveryStart", "0x" + bytes(16).hex()))["document"][2:])
        figures["recovery_start"] = time.perf_counter() - started
        started = time.perf_counter()
        shares = contributions(new, result, document, (1, 3), custodians)
        figures["contribute_2_custodians"] = time.perf_counter() - started
        started = time.perf_counter()
        recovered = await finish(new, result, shares)
        figures["recovery_finish"] = time.perf_counter() - started
        assert len(recovered["accounts"]) == accounts == len(manifest.accounts)
        address = recovered["accounts"][-1]
        signature = await new.rpc("eth_sign", address, "0x" + b"bench".hex())
        assert Account.recover_message(encode_defunct(b"bench"), signature=signature).lower() == address
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(measure(args.accounts, Path(tmp)))
    print(f"backup/recovery of {args.accounts:,} accounts, 2-of-3 (in-process stack, one run):")
    print(f"  generate accounts (setup)      {figures['generate']:8.2f} s")
    print(f"  backup create (challenge, admin signature, split, encrypt, 3 HPKE seals)  {figures['backup_create']:8.2f} s")
    print(f"  encrypted payload              {figures['payload_bytes'] / 1e6:8.2f} MB")
    print(f"  recovery start (attestation)   {figures['recovery_start']:8.2f} s")
    print(f"  contribute, 2 custodians       {figures['contribute_2_custodians']:8.2f} s")
    print(f"  recovery finish (Feldman, rebuild, decrypt, {args.accounts:,} address checks, seal, store)  "
          f"{figures['recovery_finish']:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
