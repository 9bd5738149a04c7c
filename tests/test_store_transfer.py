"""`clave store export` / `clave store import` (README "Backup and recovery"): the sealed store moved to a
new datadir that reaches the same KMS key (here: the KMS emulator's key directory copied, as a new host in
the same AWS account would call the same key) comes up with the same accounts, which sign (eth-account
recovers the signer). The file holds ciphertext only; an altered file and a non-empty target are refused."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from clave.cli.backup import cmd_store_export, cmd_store_import
from clave.sidecar.store.records import SqliteStore
from clave.sidecar.store.transfer import StoreTransferError, import_store, parse_export
from tests.inproc import running_stack


async def test_export_then_import_on_a_new_datadir_with_the_same_kms_key(tmp_path: Path) -> None:
    export = tmp_path / "store.export"
    async with running_stack(tmp_path / "a") as a:
        created = sorted(await a.rpc("clave_newAccount", {"count": 4}))
        assert a.enclave.service is not None
        secrets = [k.secret for k in a.enclave.service._keys]
        assert cmd_store_export(argparse.Namespace(datadir=str(a.config.datadir), out=str(export))) == 0
    data = export.read_bytes()
    assert secrets and not any(secret in data for secret in secrets)
    meta, records = parse_export(data)
    assert sorted("0x" + r.address.hex() for r in records) == created and "kms_data_key" in meta

    with pytest.raises(StoreTransferError, match="digest mismatch"):
        parse_export(data[:-40] + bytes(40))
    shutil.copytree(tmp_path / "a" / "kms", tmp_path / "b" / "kms")  # the same KMS key, nothing else
    target = tmp_path / "b" / "clave"
    target.mkdir(parents=True)
    assert cmd_store_import(argparse.Namespace(datadir=str(target), ipcpath=None, file=str(export))) == 0
    store = SqliteStore(target / "keystore.sqlite")
    with pytest.raises(StoreTransferError, match="not empty"):
        import_store(store, data)
    store.close()
    async with running_stack(tmp_path / "b") as b:
        listed = sorted(a["address"] for a in await b.rpc("clave_listAccounts"))
        assert listed == created
        for address in created:
            signature = await b.rpc("eth_sign", address, "0x" + b"moved".hex())
            assert Account.recover_message(encode_defunct(b"moved"), signature=signature).lower() == address
