"""Export authorization (README "Accounts"): exporting a keyfile needs an EIP-191 signature by a key of the
datadir's admin set over a challenge the enclave issued for that address (fresh, single-use). The enclave
checks it, so a process that reaches the enclave directly, bypassing the sidecar, cannot export either;
the admin set is sealed under the master key (an altered record does not open) and attested in user_data."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keyfile import create_keyfile_json, decode_keyfile_json
from eth_utils import keccak

from clave.cli.main import cmd_account_export, cmd_admin_init
from clave.core.envelope import seal_to
from clave.core.errors import RequestError
from clave.core.provenance import admin_set_hash, decode_admins, export_message
from clave.sidecar.signing.enclave_client import EnclaveClient
from clave.sidecar.signing.signer import META_ADMIN_SET
from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation
from tests.inproc import Stack, running_stack
from tests.stack import RpcFailure

ADMIN = Account.from_key(keccak(b"clave test_export_auth admin"))
OTHER_ADMIN = Account.from_key(keccak(b"clave test_export_auth second admin"))
STRANGER = Account.from_key(keccak(b"clave test_export_auth not an admin"))
ADMINS = [bytes.fromhex(ADMIN.address[2:]), bytes.fromhex(OTHER_ADMIN.address[2:])]


def _addr(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def _sign(account: Any, address: str, challenge: bytes) -> bytes:
    return bytes(account.sign_message(encode_defunct(export_message(_addr(address), challenge))).signature)


async def _import_exportable(stack: Stack, seed: bytes) -> tuple[str, bytes]:
    key = keccak(seed)
    keyfile = json.dumps(create_keyfile_json(key, b"pw", kdf="scrypt", iterations=1 << 12))
    hello = await stack.signer.client.call("hello")
    sealed = seal_to(hello["public_key"], {"keyfile": keyfile, "password": "pw"})
    return await stack.rpc("clave_importKeyfile", "0x" + sealed.hex(), True), key


async def _attested_admins(stack: Stack) -> bytes | None:
    nonce = os.urandom(16)
    document = bytes.fromhex((await stack.rpc("clave_attest", "0x" + nonce.hex()))[2:])
    verified = verify_attestation(document, root=load_root(stack.root_pem), now_ms=int(time.time() * 1000),
                                  pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=nonce)
    return decode_admins(verified.user_data)


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_a_direct_enclave_client_cannot_export_without_an_admin_proof(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=ADMINS) as stack:
        address, key = await _import_exportable(stack, b"clave test_export_auth direct")
        other, _ = await _import_exportable(stack, b"clave test_export_auth other")
        assert await _attested_admins(stack) == admin_set_hash(ADMINS)
        health = await (await stack.http.get("/healthz")).json()
        assert sorted(health["admins"]) == sorted("0x" + a.hex() for a in ADMINS)
        direct = EnclaveClient(stack.enclave.address)  # a process on the parent, bypassing the sidecar
        try:
            hello = await direct.call("hello")
            envelope = seal_to(hello["public_key"], {"password": "chosen by the attacker"})

            async def export(**extra: Any) -> Any:
                return await direct.call("export_keyfile", {"address": _addr(address), "envelope": envelope, **extra},
                                         timeout=30)

            with pytest.raises(RequestError, match="needs an admin's signature"):
                await export()
            with pytest.raises(RequestError, match="unknown or already used challenge"):
                await export(challenge=os.urandom(32), signature=_sign(ADMIN, address, os.urandom(32)))

            async def challenge(for_address: str = address) -> bytes:
                return bytes((await direct.call("export_challenge", {"address": _addr(for_address)}))["challenge"])

            fresh = await challenge()
            with pytest.raises(RequestError, match=f"0x{STRANGER.address[2:].lower()} is not an admin"):
                await export(challenge=fresh, signature=_sign(STRANGER, address, fresh))
            with pytest.raises(RequestError, match="unknown or already used challenge"):  # used up, even refused
                await export(challenge=fresh, signature=_sign(ADMIN, address, fresh))
            fresh = await challenge()
            with pytest.raises(RequestError, match="is not an admin"):  # an admin's signature naming another address
                await export(challenge=fresh, signature=_sign(ADMIN, other, fresh))
            for_other = await challenge(other)
            with pytest.raises(RequestError, match="issued for another address"):
                await export(challenge=for_other, signature=_sign(ADMIN, address, for_other))
            # The admin's proof works once, through the sidecar as `clave account export` sends it ...
            fresh = await challenge()
            proof = _sign(OTHER_ADMIN, address, fresh)
            exported = await stack.rpc("clave_exportKeyfile", address, "0x" + seal_to(hello["public_key"], {
                "password": "export pw"}).hex(), "0x" + fresh.hex(), "0x" + proof.hex())
            assert bytes(decode_keyfile_json(json.loads(exported), b"export pw")) == key
            # ... and a replay of it is refused.
            with pytest.raises(RequestError, match="unknown or already used challenge"):
                await export(challenge=fresh, signature=proof)
            with pytest.raises(RpcFailure, match="unknown or already used challenge"):
                await stack.rpc("clave_exportKeyfile", address, "0x" + envelope.hex(), "0x" + fresh.hex(),
                                "0x" + proof.hex())
            # Nobody gives a running enclave (it holds keys) an admin set of their own.
            with pytest.raises(RequestError, match="holds no keys yet"):
                await direct.call("init_admins", {"admins": [_addr(STRANGER.address)]})
        finally:
            await direct.close()


async def test_without_an_admin_set_export_is_refused_with_the_remedy(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        address, _ = await _import_exportable(stack, b"clave test_export_auth no admins")
        assert await _attested_admins(stack) is None
        with pytest.raises(RpcFailure, match="this enclave has no admin set"):
            await stack.rpc("clave_exportChallenge", address)
        direct = EnclaveClient(stack.enclave.address)
        try:
            with pytest.raises(RequestError, match="no keys yet"):  # a running enclave takes no admin set
                await direct.call("init_admins", {"admins": [_addr(STRANGER.address)]})
            with pytest.raises(RequestError, match="clave admin init --admin"):
                await direct.call("export_challenge", {"address": _addr(address)})
        finally:
            await direct.close()


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_clave_admin_init_then_an_enclave_restart_seals_it_and_the_cli_exports(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        address, key = await _import_exportable(stack, b"clave test_export_auth admin init")
        datadir = str(stack.config.datadir)
        init = argparse.Namespace(datadir=datadir, admin=ADMIN.address)
        assert cmd_admin_init(init) == 0
        await stack.enclave.restart()  # the admin set is made in a boot that holds no key yet
        deadline = time.monotonic() + 15
        while not (stack.signer.ready and stack.signer.status.admins):
            assert time.monotonic() < deadline, stack.signer.status.last_error
            await asyncio.sleep(0.05)
        assert stack.store.get_meta(META_ADMIN_SET) is not None
        with pytest.raises(SystemExit, match="has an admin set already"):
            cmd_admin_init(argparse.Namespace(datadir=datadir, admin=STRANGER.address))
        # `clave account export` in-process, over the stack's IPC socket, with the admin's V3 keyfile.
        (tmp_path / "root.pem").write_bytes(stack.root_pem)
        (tmp_path / "pw").write_text("export pw\n")
        (tmp_path / "admin-pw").write_text("admin pw\n")
        admin_keyfile = Account.encrypt(ADMIN.key, "admin pw", kdf="scrypt", iterations=1 << 12)
        (tmp_path / "admin.json").write_text(json.dumps(admin_keyfile))
        args = argparse.Namespace(
            datadir=datadir, ipcpath=str(stack.config.ipc_socket), attestation_root=str(tmp_path / "root.pem"),
            pcr=[], address=address, password_file=str(tmp_path / "pw"), out=str(tmp_path / "out.json"),
            admin_keyfile=str(tmp_path / "admin.json"), admin_password_file=str(tmp_path / "admin-pw"),
        )
        assert await asyncio.to_thread(cmd_account_export, args) == 0
        exported = json.loads((tmp_path / "out.json").read_text())
        assert bytes(decode_keyfile_json(exported, b"export pw")) == key
        stranger = Account.encrypt(STRANGER.key, "admin pw", kdf="scrypt", iterations=1 << 12)
        (tmp_path / "stranger.json").write_text(json.dumps(stranger))
        refused = argparse.Namespace(**{**vars(args), "out": str(tmp_path / "out2.json"),
                                        "admin_keyfile": str(tmp_path / "stranger.json")})
        with pytest.raises(SystemExit, match="is not an admin"):
            await asyncio.to_thread(cmd_account_export, refused)
        assert not (tmp_path / "out2.json").exists()


async def test_an_altered_admin_record_does_not_open_and_a_hostile_admin_set_is_refused(tmp_path: Path) -> None:
    async with running_stack(tmp_path, admins=ADMINS) as stack:
        await _import_exportable(stack, b"clave test_export_auth altered")
        record = cbor2.loads(stack.store.get_meta(META_ADMIN_SET))
        # A hostile admin set made first in a fresh boot (before the sidecar loads the store's): refused.
        await stack.signer.stop()
        await stack.enclave.restart()
        stack.signer.start_watch(0.05)
        while not stack.enclave.service.state.ready:  # type: ignore[union-attr]
            await asyncio.sleep(0)
        stack.enclave.service.state.admin_set.set((_addr(STRANGER.address),))  # type: ignore[union-attr]
        deadline = time.monotonic() + 15
        while "admin set mismatch" not in stack.signer.status.master_mismatch:
            assert time.monotonic() < deadline, stack.signer.status.last_error
            await asyncio.sleep(0.02)
        assert not stack.signer.ready and stack.signer.status.keys_loaded == 0
        response = await stack.http.get("/healthz")
        assert response.status == 503
        # The parent swaps an address in the sealed record: it does not open under the master key.
        altered = {**record, "admins": [_addr(STRANGER.address)] + record["admins"][1:]}
        stack.store.set_meta(META_ADMIN_SET, cbor2.dumps(altered))
        await stack.enclave.restart()
        deadline = time.monotonic() + 15
        while "does not open under this master key" not in stack.signer.status.last_error:
            assert time.monotonic() < deadline, stack.signer.status.last_error
            await asyncio.sleep(0.02)
        assert not stack.signer.ready
        stack.store.set_meta(META_ADMIN_SET, cbor2.dumps(record))
        await stack.enclave.restart()
        assert await stack.signer.wait_ready(15)
