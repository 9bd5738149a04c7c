"""The disaster drill (issue 14, README "Backup and recovery"), with real processes and only the CLI: 50
accounts (45 generated in the enclave, 5 imported) on a `clave up` datadir, backed up 2-of-3 to three
custodian keys made by `clave custodian new`; the datadir is destroyed, and with it the KMS emulator's key
(it lives in <datadir>/kms). A new datadir (new KMS key, new enclave boot) runs `clave recovery start`;
custodians 1 and 3 run `clave recovery contribute` against its attestation document; `clave recovery
finish` hands their shares in. Every recovered address then signs a transaction that anvil mines, the
recovered set (addresses, origins, exportability) equals the original, and no file or log of either
datadir, nor any CLI output, holds a plaintext key, share or the backup secret."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_utils import keccak

from clave.core import backup_format as bf
from clave.core import shamir
from clave.core.custodian import decrypt_custodian_key
from tests.clients import import_key, send_and_mine
from tests.secrets_search import KnownSecrets, files_under, search
from tests.stack import Admin, Anvil, ClaveProcess, get_text

pytestmark = pytest.mark.slow
CHAIN = 31337
CUSTODIAN_PASSWORD = "custodian drill password"
RECIPIENT = "0x000000000000000000000000000000000000dEaD"


def clave_cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "clave.cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"clave {args[0]} {args[1]} failed: {result.stderr}"
    return result.stdout + result.stderr


def accounts_of(clave: ClaveProcess) -> list[str]:
    out = clave.cli("account", "list")
    assert out.returncode == 0, out.stderr
    return sorted(out.stdout.splitlines())


def described(lines: list[str]) -> list[str]:
    """`Account #i: {addr} origin=… exportable`, without the position."""
    return sorted(line.split(": ", 1)[1] for line in lines)


def test_drill_50_accounts_2_of_3_recover_from_custodians_1_and_3(tmp_path: Path, anvil: Anvil) -> None:
    outputs: list[str] = []
    admin = Admin(tmp_path / "admin")
    old = ClaveProcess(tmp_path / "old", chain_ids=str(CHAIN), extra=["--admin", admin.address])
    old.start()
    try:
        new_accounts = old.cli("account", "new", "--count", "45")
        assert new_accounts.returncode == 0, new_accounts.stderr
        imported = [keccak(b"clave drill imported %d" % i) for i in range(5)]
        for key in imported:
            import_key(old, key, tmp_path, exportable=True)
        original = accounts_of(old)
        assert len(original) == 50 and sum("origin=imported exportable" in line for line in original) == 5

        password_file = tmp_path / "custodian.pw"
        password_file.write_text(CUSTODIAN_PASSWORD + "\n")
        custodian_files, publics = [], []
        for i in (1, 2, 3):
            path = tmp_path / f"custodian-{i}.json"
            outputs.append(clave_cli("custodian", "new", "--out", str(path), "--password-file", str(password_file),
                                     "--scrypt-n", "16384"))
            publics.append(clave_cli("custodian", "pub", str(path)).strip())
            custodian_files.append(path)
        backup_dir = tmp_path / "backup"
        args = ["backup", "create", "--threshold", "2", "--all", "--out", str(backup_dir), *admin.export_args,
                "--datadir", str(old.datadir)]
        for public in publics:
            args += ["--custodian", public]
        outputs.append(clave_cli(*args))
        for i, path in enumerate(custodian_files, start=1):
            report = clave_cli("backup", "verify", str(backup_dir), "--custodian-key", str(path),
                               "--password-file", str(password_file))
            assert f"share {i} of 2-of-3 matches the Feldman commitments" in report and "50 accounts" in report
            outputs.append(report)
    finally:
        old.stop()
    old_haystack = [("old clave up output", "".join(old.output).encode())] + files_under(old.datadir, relative_to=tmp_path)
    old_kms_keys = {p.name for p in (old.datadir / "kms" / "keys").glob("*.json")}
    assert old_kms_keys
    shutil.rmtree(old.datadir)  # the datadir, its store and the KMS emulator's key are gone

    new = ClaveProcess(tmp_path / "new", chain_ids=str(CHAIN), extra=["--admin", admin.address])
    new.start()
    try:
        assert accounts_of(new) == []
        document = tmp_path / "recovery.doc"
        outputs.append(clave_cli("recovery", "start", "--out", str(document), "--datadir", str(new.datadir)))
        contributed = []
        for i in (1, 3):
            out = tmp_path / f"for-enclave-{i}.json"
            outputs.append(clave_cli("recovery", "contribute", str(backup_dir / f"share-{i}.json"),
                                     "--custodian-key", str(custodian_files[i - 1]), "--password-file", str(password_file),
                                     "--attestation", str(document), "--manifest", str(backup_dir / "manifest.cbor"),
                                     "--root", str(new.datadir / "nsm" / "root.pem"), "--out", str(out)))
            assert f"share {i} of backup" in outputs[-1] and "PCR0" in outputs[-1] and "is the manifest's pin" in outputs[-1]
            contributed.append(str(out))
        fewer = subprocess.run([sys.executable, "-m", "clave.cli", "recovery", "finish", contributed[0], "--backup",
                                str(backup_dir), "--datadir", str(new.datadir)], capture_output=True, text=True, timeout=120)
        assert fewer.returncode != 0 and "1 valid share(s) given, the backup needs 2" in fewer.stderr
        assert accounts_of(new) == []
        report = clave_cli("recovery", "finish", *contributed, "--backup", str(backup_dir), "--datadir", str(new.datadir))
        assert "Recovered 50 accounts" in report
        outputs.append(report)
        assert described(accounts_of(new)) == described(original)  # address, origin, exportability
        recovered = new.rpc("eth_accounts")
        assert sorted(a.lower() for a in recovered) == sorted("0x" + line.split("{")[1].split("}")[0].lower() for line in original)
        for address in recovered:  # every address signs again; anvil is the judge
            anvil.fund(address)
            nonce = anvil.rpc("eth_getTransactionCount", address, "pending")
            raw = new.rpc("eth_signTransaction", {"from": address, "to": RECIPIENT, "gas": "0x5208",
                                                  "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x1",
                                                  "value": "0x1", "nonce": nonce, "chainId": hex(CHAIN)})
            receipt = send_and_mine(anvil, raw)
            assert receipt["status"] == "0x1" and receipt["from"].lower() == address.lower()
        status, metrics = get_text(new.url + "/metrics")
        assert status == 200 and "clave_" in metrics
    finally:
        new.stop()
    new_kms_keys = {p.name for p in (new.datadir / "kms" / "keys").glob("*.json")}
    assert new_kms_keys and not new_kms_keys & old_kms_keys  # a new KMS key

    # What the test (playing custodians 1 and 2) can rebuild from the backup is what must appear nowhere.
    manifest = bf.decode_manifest((backup_dir / "manifest.cbor").read_bytes())
    shares = []
    secrets = KnownSecrets()
    for i in (1, 2, 3):
        key: X25519PrivateKey = decrypt_custodian_key(json.loads(custodian_files[i - 1].read_text()), CUSTODIAN_PASSWORD)
        secrets.add("0x" + key.private_bytes_raw().hex(), f"custodian {i} private key")
        share = bf.open_share(key, bf.parse_sealed_share((backup_dir / f"share-{i}.json").read_text()), manifest.id, "custodian")
        secrets.add("0x" + share.y.to_bytes(32, "big").hex(), f"share {i} value")
        shares.append(share)
    secret = shamir.combine(shares[:2])
    secrets.add("0x" + secret.to_bytes(32, "big").hex(), "backup master secret")
    keys = bf.decrypt_payload(secret, manifest, (backup_dir / "payload.bin").read_bytes())
    assert sorted("0x" + k.address.hex() for k in keys) == sorted(a.lower() for a in recovered)
    for n, k in enumerate(keys):
        secrets.add("0x" + k.secret.hex(), f"account key #{n}")
    secrets.add(CUSTODIAN_PASSWORD, "custodian password")
    haystack = old_haystack + [("new clave up output", "".join(new.output).encode()),
                               ("CLI outputs", "\n".join(outputs).encode()), ("new /metrics", metrics.encode())]
    haystack += files_under(new.datadir, relative_to=tmp_path) + files_under(backup_dir, relative_to=tmp_path)
    haystack += [(p, (tmp_path / p).read_bytes()) for p in ("recovery.doc", "for-enclave-1.json", "for-enclave-3.json")]
    leaks = search(haystack, secrets)
    assert leaks == [], [f"{leak.description} in {leak.where}" for leak in leaks]
    assert len(secrets) >= 50 + 3 + 3 + 2
