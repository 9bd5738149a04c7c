"""Master-key provenance (THREAT_MODEL.md "Who chooses the master key"): one master key per enclave boot,
its commitment attested in user_data, pinned by the sidecar in the store and checked by the CLI.

The attack: a process on the parent reaches the enclave's socket first after a restart and loads a master
key of its choice (or a rogue KMS endpoint hands the sidecar one). Before, the sidecar saw `ready`,
skipped KMS, reported ready with no keys, and sealed new and imported keys under the attacker's key."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from eth_account import Account
from eth_keyfile import create_keyfile_json
from eth_utils import keccak

from clave.cli.client import attested_public_key
from clave.core.envelope import seal_to
from clave.core.errors import RequestError
from clave.core.provenance import decode_user_data, master_commitment
from clave.dev.kmsemu.cms_build import build_enveloped_data
from clave.dev.soft_nsm import SoftwareNsm
from clave.enclave.sealing import SealError, unseal
from clave.enclave.service import EnclaveService
from clave.link.sockets import Address
from clave.sidecar.signing.enclave_client import EnclaveClient, EnclaveNotReady
from clave.sidecar.signing.signer import META_DATA_KEY, META_MASTER_COMMITMENT
from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation
from tests.inproc import Stack, running_stack
from tests.stack import RpcFailure

HOSTILE_KEY = bytes.fromhex("5e" * 32)  # the attacker's master key: the test knows it, as the attacker would


async def _eventually(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _hostile_load(address: Address, key: bytes = HOSTILE_KEY, *, fill: int = 0) -> None:
    """What a process on the parent can do: connect, read the boot key from hello, load its own key (a
    KMS-shaped CMS envelope to that key), and make `fill` keys so that `hello.keys` looks complete."""
    client = EnclaveClient(address)
    try:
        hello = await client.call("hello")
        assert hello["ready"] is False
        envelope = build_enveloped_data(key, serialization.load_der_public_key(hello["public_key"]))  # type: ignore[arg-type]
        await client.call("load_master_key", {"ciphertext_for_recipient": envelope}, timeout=30)
        if fill:
            await client.call("generate", {"count": fill}, timeout=30)
    finally:
        await client.close()


def _keyfile(seed: bytes, password: str) -> tuple[str, str]:
    key = keccak(seed)
    keyfile = json.dumps(create_keyfile_json(key, password.encode(), kdf="scrypt", iterations=1 << 12))
    return keyfile, Account.from_key(key).address.lower()


class _CliClient:
    """The IPC client `attested_public_key` takes, answering `clave_attest` from the stack's dispatcher."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.stack, self.loop = stack, loop

    def call(self, method: str, *params: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(self.stack.rpc(method, *params), self.loop).result(30)


async def _cli_public_key(stack: Stack) -> bytes:
    """cli.client.attested_public_key, as `clave account import|export` runs it (in a thread: it blocks)."""
    root = stack.root / "root.pem"
    root.write_bytes(stack.root_pem)
    args = argparse.Namespace(datadir=str(stack.config.datadir), attestation_root=str(root), pcr=[])
    client = _CliClient(stack, asyncio.get_running_loop())
    return await asyncio.to_thread(attested_public_key, client, args)


async def _populate(stack: Stack) -> tuple[list[str], str]:
    await stack.signer.stop()
    stack.signer.start_watch(0.05)  # a quick watch: the tests wait for what it does after a restart
    generated = [await stack.rpc("account_new") for _ in range(3)]
    keyfile, address = _keyfile(b"clave test_provenance imported", "import pw 1")
    envelope = "0x" + seal_to(await _cli_public_key(stack), {"keyfile": keyfile, "password": "import pw 1"}).hex()
    assert await stack.rpc("clave_importKeyfile", envelope, True) == address
    return generated + [address], keyfile


async def _assert_refused(stack: Stack, reason: str, records_before: int) -> None:
    """The enclave is refused: /healthz 503 with the reason, the metric, no key in it, nothing created."""
    signer = stack.signer
    await _eventually(lambda: reason in signer.status.master_mismatch)
    response = await stack.http.get("/healthz")
    body = await response.json()
    assert response.status == 503 and body["ready"] is False
    assert body["master_key_verified"] is False and reason in body["master_mismatch"]
    assert reason in body["last_error"] and body["keys_loaded"] == 0
    metrics = await (await stack.http.get("/metrics")).text()
    assert "clave_enclave_master_mismatch 1.0" in metrics
    assert "REFUSING THE ENCLAVE" in stack.log_file.read_text()
    hello = await signer.client.call("hello")
    assert hello["ready"] is True and hello["keys"] in (0, records_before), "nothing of the store's was unsealed"
    for call in (stack.rpc("account_new"), stack.rpc("clave_newAccount", {"count": 1})):
        with pytest.raises(RpcFailure) as err:
            await call
        assert err.value.status == 503
    with pytest.raises(SystemExit, match="refusing to send secrets to the enclave"):
        await _cli_public_key(stack)
    # What an import would carry if a client sealed it to the enclave anyway: refused by the sidecar.
    envelope = seal_to(hello["public_key"], {"keyfile": "{}", "password": "x"})
    with pytest.raises(RpcFailure) as err:
        await stack.rpc("clave_importKeyfile", "0x" + envelope.hex(), True)
    assert err.value.status == 503
    assert len(stack.store.records()) == records_before, "nothing new in the store"


def _hostile_key_opens_nothing(stack: Stack) -> None:
    for record in stack.store.records():
        with pytest.raises(SealError):
            unseal(HOSTILE_KEY, record.sealed())


async def _assert_recovers(stack: Stack, addresses: list[str]) -> None:
    await stack.enclave.restart()  # the operator's (or the watchdog's) restart: the sidecar loads its key
    await _eventually(lambda: stack.signer.ready and stack.signer.status.master_verified)
    response = await stack.http.get("/healthz")
    body = await response.json()
    assert response.status == 200 and body["master_key_verified"] is True and body["master_mismatch"] is None
    assert body["keys_loaded"] == len(addresses)
    assert "clave_enclave_master_mismatch 0.0" in await (await stack.http.get("/metrics")).text()
    for address in addresses:
        assert await stack.rpc("account_signData", "text/plain", address, "0x" + b"after".hex())
    await stack.rpc("account_new")
    await _cli_public_key(stack)


async def test_a_hostile_client_first_after_a_restart_cannot_choose_the_master_key(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        addresses, _ = await _populate(stack)
        pinned = stack.store.get_meta(META_MASTER_COMMITMENT)
        assert pinned is not None and len(pinned) == 32
        records = len(stack.store.records())
        await stack.signer.stop()  # the race is won by the attacker: the watch is not looking
        await stack.enclave.restart()
        # It even makes as many keys as the store has, so that hello's key count looks complete.
        await _hostile_load(stack.enclave.address, fill=records)
        # Before the watch has seen the restart, nothing goes to the new boot either.
        with pytest.raises(EnclaveNotReady, match="master key is being verified"):
            await stack.signer.new_accounts(1)
        stack.signer.start_watch(0.05)
        await _assert_refused(stack, "master key mismatch", records)
        await asyncio.sleep(0.3)  # it keeps refusing, retrying
        assert not stack.signer.ready and "master key mismatch" in stack.signer.status.master_mismatch
        assert stack.store.get_meta(META_MASTER_COMMITMENT) == pinned, "the pin never moves"
        _hostile_key_opens_nothing(stack)
        await _assert_recovers(stack, addresses)
        _hostile_key_opens_nothing(stack)


async def test_a_sidecar_that_loses_the_race_to_load_is_refused_too(tmp_path: Path) -> None:
    """The attacker loads between the sidecar's hello (not ready) and its load_master_key."""
    async with running_stack(tmp_path) as stack:
        addresses, _ = await _populate(stack)
        records = len(stack.store.records())
        original = stack.signer.sealing

        class Racing:
            async def generate_data_key(self, key_id: str, attestation_doc: bytes) -> tuple[bytes, bytes]:
                raise AssertionError("the store has a data key")

            async def decrypt(self, key_id: str, ciphertext_blob: bytes, attestation_doc: bytes) -> bytes:
                result = await original.decrypt(key_id, ciphertext_blob, attestation_doc)
                await _hostile_load(stack.enclave.address)
                return result

        stack.signer.sealing = Racing()
        await stack.enclave.restart()
        await _assert_refused(stack, "master key mismatch", records)
        assert "already loaded in this enclave boot" in stack.log_file.read_text()
        stack.signer.sealing = original
        _hostile_key_opens_nothing(stack)
        await _assert_recovers(stack, addresses)


class _RogueKms:
    """A KMS endpoint that answers Decrypt with a key of its choice, to the enclave's attested boot key."""

    def __init__(self, stack: Stack, key: bytes = HOSTILE_KEY) -> None:
        self.stack, self.key = stack, key

    async def generate_data_key(self, key_id: str, attestation_doc: bytes) -> tuple[bytes, bytes]:
        return b"rogue blob", self._envelope()

    async def decrypt(self, key_id: str, ciphertext_blob: bytes, attestation_doc: bytes) -> bytes:
        return self._envelope()

    def _envelope(self) -> bytes:
        assert self.stack.enclave.service is not None
        public = serialization.load_der_public_key(self.stack.enclave.service.state.boot_public)
        return build_enveloped_data(self.key, public)  # type: ignore[arg-type]


async def test_a_rogue_kms_after_first_provisioning_is_refused(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        addresses, _ = await _populate(stack)
        records = len(stack.store.records())
        original = stack.signer.sealing
        stack.signer.sealing = _RogueKms(stack)
        await stack.enclave.restart()
        await _assert_refused(stack, "master key mismatch", records)
        _hostile_key_opens_nothing(stack)
        stack.signer.sealing = original
        await _assert_recovers(stack, addresses)


async def test_a_store_without_a_pin_is_pinned_by_its_records_and_refuses_a_key_that_opens_none(tmp_path: Path) -> None:
    """A datadir from before pins: the first bring-up that unseals a record pins the key; a rogue key
    (here from KMS) opens none of the records and is refused without being pinned."""
    async with running_stack(tmp_path) as stack:
        addresses, _ = await _populate(stack)
        pinned = stack.store.get_meta(META_MASTER_COMMITMENT)
        stack.store._db.execute("DELETE FROM meta WHERE name = ?", (META_MASTER_COMMITMENT,))  # an old datadir
        records = len(stack.store.records())
        original = stack.signer.sealing
        stack.signer.sealing = _RogueKms(stack)
        await stack.enclave.restart()
        await _assert_refused(stack, "opens none of the store's 4 records", records)
        assert stack.store.get_meta(META_MASTER_COMMITMENT) is None
        stack.signer.sealing = original
        await _assert_recovers(stack, addresses)
        assert stack.store.get_meta(META_MASTER_COMMITMENT) == pinned, "pinned from the records that opened"


async def test_an_empty_store_without_a_pin_refuses_a_key_it_did_not_load(tmp_path: Path) -> None:
    """No record and no pin: only a key this sidecar loaded from KMS itself is pinned (first-start TOFU);
    one that someone else loaded is refused until the enclave restarts."""
    async with running_stack(tmp_path) as stack:
        assert stack.store.get_meta(META_DATA_KEY) is not None
        stack.store._db.execute("DELETE FROM meta WHERE name = ?", (META_MASTER_COMMITMENT,))
        await stack.signer.stop()
        await stack.enclave.restart()
        await _hostile_load(stack.enclave.address)
        stack.signer.start_watch(0.05)
        await _assert_refused(stack, "master key unverifiable", 0)
        assert stack.store.get_meta(META_MASTER_COMMITMENT) is None
        await _assert_recovers(stack, [])
        assert stack.store.get_meta(META_MASTER_COMMITMENT) is not None


async def test_one_master_key_per_boot_and_its_commitment_is_attested(tmp_path: Path, inline_kdf: None) -> None:
    nsm = SoftwareNsm(tmp_path / "nsm")
    service = EnclaveService(nsm)
    root = load_root(nsm.root_pem)

    def attested() -> bytes | None:
        nonce = os.urandom(16)
        document = service.call("attest", {"nonce": nonce})["document"]
        verified = verify_attestation(document, root=root, now_ms=int(time.time() * 1000),
                                      pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=nonce)
        return decode_user_data(verified.user_data)

    def envelope(key: bytes) -> bytes:
        return build_enveloped_data(key, service.state.boot_key.public_key())

    assert attested() is None, "no commitment before a key is loaded"
    first = bytes(range(32))
    assert service.call("load_master_key", {"ciphertext_for_recipient": envelope(first)}) == {"ready": True}
    assert attested() == master_commitment(first)
    for key in (first, HOSTILE_KEY):  # the same key again, or another: refused alike
        with pytest.raises(RequestError, match="already loaded in this enclave boot"):
            service.call("load_master_key", {"ciphertext_for_recipient": envelope(key)})
    with pytest.raises(RequestError, match="already loaded"):
        service.call("load_master_key", {"ciphertext_for_recipient": b"not even CMS"})
    assert attested() == master_commitment(first)
    assert master_commitment(first) != master_commitment(HOSTILE_KEY)


async def test_the_cli_refuses_to_seal_to_an_enclave_with_another_master_key(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        good = await _cli_public_key(stack)
        assert good == stack.enclave.service.state.boot_public  # type: ignore[union-attr]
        await stack.signer.stop()
        await stack.enclave.restart()
        await _hostile_load(stack.enclave.address)
        with pytest.raises(SystemExit, match=r"refusing to send secrets to the enclave: it holds master key"):
            await _cli_public_key(stack)
        # A datadir with no store, or a store with no pin yet: refused too, with the remedy.
        other = argparse.Namespace(datadir=str(tmp_path / "elsewhere"), attestation_root=None, pcr=[])
        (tmp_path / "elsewhere" / "nsm").mkdir(parents=True)
        (tmp_path / "elsewhere" / "nsm" / "root.pem").write_bytes(stack.root_pem)
        with pytest.raises(SystemExit, match="no key store; pass the service's --datadir"):
            await asyncio.to_thread(attested_public_key, _CliClient(stack, asyncio.get_running_loop()), other)
        stack.store._db.execute("DELETE FROM meta WHERE name = ?", (META_MASTER_COMMITMENT,))
        with pytest.raises(SystemExit, match="no pinned master-key commitment"):
            await _cli_public_key(stack)
