"""A datadir made by the previous release (tests/data/legacy-datadir-0.1.0, see its README) opens with this
one: the sealed records unseal, both accounts sign, and the exportable one exports to a keyfile that
eth-keyfile opens to the original key. The old KMS key policy pins the old enclave code's PCR0, so the new
code is refused until the operator accepts it, exactly as for any new enclave release."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keyfile import decode_keyfile_json

from tests.stack import Admin, ClaveProcess, RpcFailure

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "data" / "legacy-datadir-0.1.0"
IMPORTED_KEY = hashlib.sha256(b"clave legacy datadir test key").digest()
IMPORTED = "0x5cc080791a55291f5e8ba79f8a74c3ffd9bf6901"
GENERATED = "0x411da4574d6e5715609b8a33e369bdca74b1b4eb"


def _copy_datadir(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("README.md"))
    # git keeps no modes: give the datadir the modes clave made it with.
    for path in [dest, *dest.rglob("*")]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    return dest


def test_previous_release_datadir_opens_and_signs(tmp_path: Path) -> None:
    assert Account.from_key(IMPORTED_KEY).address.lower() == IMPORTED
    datadir = _copy_datadir(tmp_path / "datadir")
    before = (datadir / "keystore.sqlite").read_bytes()

    refused = ClaveProcess(datadir, chain_ids="1,31337")
    refused.start(until_waiting=True)
    try:
        assert "PCR0" in refused.waiting_line, refused.waiting_line
        assert "`clave up --accept-new-enclave`" in refused.waiting_line, refused.waiting_line  # the remedy
        # While the keys are sealed, the account list is an error, never an empty list.
        with pytest.raises(RpcFailure) as sealed:
            refused.rpc("account_list")
        assert sealed.value.message.startswith("enclave not ready: "), sealed.value.message
        listed = refused.cli("account", "list")
        assert listed.returncode == 1 and listed.stdout == "", listed
        assert listed.stderr.startswith("clave: enclave not ready: ") and listed.stderr.count("\n") == 1, listed.stderr
        assert "Traceback" not in listed.stderr
    finally:
        refused.stop()
    assert (datadir / "keystore.sqlite").read_bytes() == before  # nothing written while refused

    # The old datadir has no admin set: `clave admin init` records one (trust on first use), and the enclave
    # seals it at its next boot, before any key is unsealed; from then on exports need the admin's signature.
    admin = Admin(tmp_path / "admin")
    recorded = ClaveProcess(datadir).cli("admin", "init", "--admin", admin.address)
    assert recorded.returncode == 0, recorded.stderr
    clave = ClaveProcess(datadir, chain_ids="1,31337", extra=["--accept-new-enclave"])
    clave.start()
    try:
        assert sorted(clave.rpc("account_list")) == sorted([IMPORTED, GENERATED])
        # The old store had no master-key pin: the first bring-up that unsealed its records pinned it.
        db = sqlite3.connect(datadir / "keystore.sqlite")
        pinned = db.execute("SELECT value FROM meta WHERE name = 'master_commitment'").fetchone()
        db.close()
        assert pinned is not None and len(pinned[0]) == 32
        for address in (IMPORTED, GENERATED):
            signature = clave.rpc("eth_sign", address, "0x6c6567616379")
            recovered = Account.recover_message(encode_defunct(b"legacy"), signature=signature)
            assert recovered.lower() == address
        password = tmp_path / "export-pw"
        password.write_text("export password\n")
        out = tmp_path / "exported.json"
        result = clave.cli("account", "export", IMPORTED, "--password-file", str(password), "--out", str(out),
                           *admin.export_args)
        assert result.returncode == 0, result.stderr
        assert decode_keyfile_json(json.loads(out.read_text()), b"export password") == IMPORTED_KEY
        refused_export = clave.cli("account", "export", GENERATED, "--password-file", str(password),
                                   "--out", str(tmp_path / "not-exportable.json"), *admin.export_args)
        assert refused_export.returncode != 0 and not (tmp_path / "not-exportable.json").exists()
    finally:
        clave.stop()
