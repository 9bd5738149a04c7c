"""Master-key provenance (THREAT_MODEL.md "Who chooses the master key"): the enclave takes its master key
only from KMS, over its own TLS session (the parent signs and relays); one key per boot; its commitment and
the KMS key's ARN attested in user_data, pinned by the sidecar in the store and checked by the CLI.

The attack: a process on the parent reaches the enclave's socket first after a restart and tries to give it
a master key it knows. Before, it sent `load_master_key` with a CMS envelope of its own key; now that method
is gone, a KMS endpoint of its own cannot pass the enclave's TLS check, and what remains is to use a KMS key
it controls (credentials of another AWS account): the enclave then attests that key's ARN and the data key's
commitment, and the sidecar and the CLI refuse it."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from eth_account import Account
from eth_keyfile import create_keyfile_json
from eth_utils import keccak

from clave.cli.client import attested_public_key
from clave.core.envelope import seal_to
from clave.core.errors import RequestError
from clave.core.provenance import decode_kms, decode_user_data, master_commitment
from clave.dev.kmsemu.app import make_app
from clave.dev.kmsemu.auth import credentials_path
from clave.dev.kmsemu.tls import ensure_tls, server_context
from clave.enclave.sealing import SealError, unseal
from clave.sidecar.serve import enclave_kms
from clave.sidecar.signing.enclave_client import EnclaveClient, EnclaveNotReady
from clave.sidecar.signing.signer import META_DATA_KEY, META_KMS_KEY_ARN, META_MASTER_COMMITMENT
from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation
from clave.sidecar.trust.kms import KmsRefused, call_kms
from clave.sidecar.trust.kms_relay import EnclaveKms, KmsLoad
from tests.inproc import Stack, running_stack
from tests.stack import RpcFailure


async def _eventually(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _relay(stack: Stack) -> EnclaveKms:
    """The signing-and-relaying part any process with KMS credentials can play (here: the emulator's)."""
    return enclave_kms(stack.config, stack.kms_endpoint, credentials_path(stack.root / "kms"))


async def _attacker_data_key(stack: Stack) -> tuple[str, bytes, bytes]:
    """A KMS key the attacker controls (another account's, in AWS) and a data key it made under it without
    Recipient, so it knows the plaintext: (key ARN, wrapped data key, plaintext data key)."""
    made = await call_kms(stack.kms_client, "CreateKey", Description="the attacker's own key")
    arn = made["KeyMetadata"]["Arn"]
    data = await call_kms(stack.kms_client, "GenerateDataKey", KeyId=arn, KeySpec="AES_256")
    return arn, data["CiphertextBlob"], data["Plaintext"]


async def _hostile_load(stack: Stack, *, fill: int = 0) -> bytes:
    """What a process on the parent can do first after a restart: the old `load_master_key` is gone, so it has
    the enclave Decrypt (through KMS, over the enclave's TLS) a data key it made under its own KMS key, and
    makes `fill` keys so that `hello.keys` looks complete. Returns the data key, which the attacker knows."""
    arn, wrapped, plaintext = await _attacker_data_key(stack)
    client = EnclaveClient(stack.enclave.address)
    try:
        assert (await client.call("hello"))["ready"] is False
        with pytest.raises(RequestError, match="load_master_key does not exist"):
            await client.call("load_master_key", {"ciphertext_for_recipient": b"any envelope"})
        loaded = await _relay(stack).decrypt(client, arn, wrapped)
        assert loaded.key_arn == arn
        if fill:
            await client.call("generate", {"count": fill}, timeout=30)
    finally:
        await client.close()
    return plaintext


async def _fresh_key_load(stack: Stack) -> None:
    """The other thing the parent can do with the instance role's own credentials: have the enclave take a
    fresh data key from the store's KMS key (GenerateDataKey). KMS releases it only to the enclave, so the
    attacker does not learn it, but it is not the store's key either."""
    client = EnclaveClient(stack.enclave.address)
    try:
        assert stack.signer.kms_key_id is not None
        await _relay(stack).generate_data_key(client, stack.signer.kms_key_id)
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


def _hostile_key_opens_nothing(stack: Stack, key: bytes) -> None:
    for record in stack.store.records():
        with pytest.raises(SealError):
            unseal(key, record.sealed())


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
        hostile = await _hostile_load(stack, fill=records)
        # Before the watch has seen the restart, nothing goes to the new boot either.
        with pytest.raises(EnclaveNotReady, match="master key is being verified"):
            await stack.signer.new_accounts(1)
        stack.signer.start_watch(0.05)
        await _assert_refused(stack, "KMS key mismatch", records)
        await asyncio.sleep(0.3)  # it keeps refusing, retrying
        assert not stack.signer.ready and "KMS key mismatch" in stack.signer.status.master_mismatch
        assert stack.store.get_meta(META_MASTER_COMMITMENT) == pinned, "the pin never moves"
        _hostile_key_opens_nothing(stack, hostile)
        await _assert_recovers(stack, addresses)
        _hostile_key_opens_nothing(stack, hostile)


async def test_a_sidecar_that_loses_the_race_to_load_is_refused_too(tmp_path: Path) -> None:
    """The attacker loads between the sidecar's hello (not ready) and its own KMS exchange."""
    async with running_stack(tmp_path) as stack:
        addresses, _ = await _populate(stack)
        records = len(stack.store.records())
        original = stack.signer.sealing
        raced: list[bool] = []

        class Racing:
            async def generate_data_key(self, enclave: EnclaveClient, key_id: str) -> KmsLoad:
                raise AssertionError("the store has a data key")

            async def decrypt(self, enclave: EnclaveClient, key_id: str, ciphertext_blob: bytes) -> KmsLoad:
                if not raced:
                    raced.append(True)
                    await _fresh_key_load(stack)  # same KMS key, another data key: the commitment tells
                return await original.decrypt(enclave, key_id, ciphertext_blob)

        stack.signer.sealing = Racing()
        await stack.enclave.restart()
        await _assert_refused(stack, "master key mismatch", records)
        assert "already loaded in this enclave boot" in stack.log_file.read_text()
        stack.signer.sealing = original
        await _assert_recovers(stack, addresses)


async def _rogue_kms(root: Path, nsm_root_pem: bytes) -> tuple[web.AppRunner, str]:
    """Another KMS emulator, with its own dev CA: a KMS endpoint the parent runs (so it knows every key). It
    even trusts the same NSM root, so its answers to the enclave's requests are well-formed and valid."""
    app = make_app(root, load_root(nsm_root_pem))
    ensure_tls(root)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(root)).start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


async def _tampering_proxy(target_port: int, after: int) -> tuple[asyncio.AbstractServer, int]:
    """A relay on the parent that forwards the enclave's TLS stream to KMS and, once KMS has sent `after`
    bytes (the handshake), flips the last byte of everything KMS sends: its answer."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tamper: bool) -> None:
        seen = 0
        try:
            while data := await reader.read(65536):
                seen += len(data)
                if tamper and seen > after:
                    data = data[:-1] + bytes([data[-1] ^ 0x01])
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump(reader, upstream_writer, False), pump(upstream_reader, writer, True))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_rogue_kms_endpoint_or_a_tampering_proxy_gives_the_enclave_no_key(tmp_path: Path) -> None:
    """The parent points the enclave's KMS stream at a KMS of its own (another emulator: valid KMS answers,
    its own certificate), or relays to the real one but changes one byte of the answer: the enclave's TLS
    check fails, it takes no key, and the sidecar loads the store's key once the stream goes to KMS again."""
    async with running_stack(tmp_path) as stack:
        addresses, _ = await _populate(stack)
        records = len(stack.store.records())
        rogue, rogue_endpoint = await _rogue_kms(tmp_path / "rogue-kms", stack.root_pem)
        kms_port = int(stack.kms_endpoint.rpartition(":")[2])
        tamper, tamper_port = await _tampering_proxy(kms_port, after=1500)
        original = stack.signer.sealing
        try:
            for endpoint, proxy, why in (
                (rogue_endpoint, f"tcp://{rogue_endpoint}", "certificate is not trusted"),
                (_relay(stack).endpoint, f"tcp://127.0.0.1:{tamper_port}", "TLS failed"),
            ):
                relay = _relay(stack)
                relay.endpoint, relay.proxy = endpoint, proxy
                stack.signer.sealing = relay
                await stack.enclave.restart()
                await _eventually(lambda why=why: why in stack.signer.status.last_error)  # type: ignore[misc]
                assert not stack.signer.ready
                hello = await stack.signer.client.call("hello")
                assert hello["ready"] is False and hello["keys"] == 0, "the enclave took no key"
                assert len(stack.store.records()) == records
            stack.signer.sealing = original
            # No restart needed: the enclave never took a key, so the next attempt loads the store's.
            await _eventually(lambda: stack.signer.ready and stack.signer.status.master_verified)
            for address in addresses:
                assert await stack.rpc("account_signData", "text/plain", address, "0x" + b"after".hex())
        finally:
            tamper.close()
            await rogue.cleanup()


async def test_a_first_provisioning_from_another_kms_key_is_refused(tmp_path: Path) -> None:
    """A new datadir whose --kms-key-id is an ARN: a parent that has the enclave take its first data key from
    another KMS key (one it controls, where it knows the plaintext) is refused, by the attested ARN."""
    async with running_stack(tmp_path) as stack:
        described = await call_kms(stack.kms_client, "DescribeKey", KeyId=stack.signer.kms_key_id)
        configured = described["KeyMetadata"]["Arn"]
        assert stack.store.get_meta(META_KMS_KEY_ARN) == configured.encode(), "the first start pinned its key's ARN"
        arn, wrapped, hostile = await _attacker_data_key(stack)
        await stack.signer.stop()
        for name in (META_DATA_KEY, META_MASTER_COMMITMENT, META_KMS_KEY_ARN):  # a new, empty datadir
            stack.store._db.execute("DELETE FROM meta WHERE name = ?", (name,))
        stack.signer.kms_key_id = configured
        original = stack.signer.sealing

        class Substituting:
            """The parent answers the sidecar's GenerateDataKey with a Decrypt of its own data key."""

            async def generate_data_key(self, enclave: EnclaveClient, key_id: str) -> KmsLoad:
                loaded = await original.decrypt(enclave, arn, wrapped)
                return KmsLoad(loaded.key_arn, wrapped)

            async def decrypt(self, enclave: EnclaveClient, key_id: str, ciphertext_blob: bytes) -> KmsLoad:
                return await original.decrypt(enclave, arn, wrapped)

        stack.signer.sealing = Substituting()
        await stack.enclave.restart()
        stack.signer.start_watch(0.05)
        await _assert_refused(stack, "KMS key mismatch", 0)
        assert arn in stack.signer.status.master_mismatch and configured in stack.signer.status.master_mismatch
        assert stack.store.get_meta(META_KMS_KEY_ARN) is None and stack.store.get_meta(META_MASTER_COMMITMENT) is None
        assert stack.enclave.service is not None and stack.enclave.service.state.master() == hostile
        stack.signer.sealing = original
        stack.store._db.execute("DELETE FROM meta WHERE name = ?", (META_DATA_KEY,))  # the attacker's blob
        await _assert_recovers(stack, [])
        assert stack.store.get_meta(META_KMS_KEY_ARN) == configured.encode()


async def test_a_store_without_a_pin_is_pinned_by_its_records_and_refuses_a_key_that_opens_none(tmp_path: Path) -> None:
    """A datadir from before pins: the first bring-up that unseals a record pins the key; a key someone else
    had the enclave load opens none of the records and is refused without being pinned."""
    async with running_stack(tmp_path) as stack:
        addresses, _ = await _populate(stack)
        pinned = stack.store.get_meta(META_MASTER_COMMITMENT)
        for name in (META_MASTER_COMMITMENT, META_KMS_KEY_ARN):  # a datadir from before pins
            stack.store._db.execute("DELETE FROM meta WHERE name = ?", (name,))
        records = len(stack.store.records())
        await stack.signer.stop()
        await stack.enclave.restart()
        await _hostile_load(stack)
        stack.signer.start_watch(0.05)
        await _assert_refused(stack, "opens none of the store's 4 records", records)
        assert stack.store.get_meta(META_MASTER_COMMITMENT) is None
        await _assert_recovers(stack, addresses)
        assert stack.store.get_meta(META_MASTER_COMMITMENT) == pinned, "pinned from the records that opened"


async def test_an_empty_store_without_a_pin_refuses_a_key_it_did_not_load(tmp_path: Path) -> None:
    """No record and no pin: only a key this sidecar loaded from KMS itself is pinned (first-start TOFU);
    one that someone else loaded is refused until the enclave restarts."""
    async with running_stack(tmp_path) as stack:
        assert stack.store.get_meta(META_DATA_KEY) is not None
        for name in (META_MASTER_COMMITMENT, META_KMS_KEY_ARN):
            stack.store._db.execute("DELETE FROM meta WHERE name = ?", (name,))
        await stack.signer.stop()
        await stack.enclave.restart()
        await _hostile_load(stack)
        stack.signer.start_watch(0.05)
        await _assert_refused(stack, "master key unverifiable", 0)
        assert stack.store.get_meta(META_MASTER_COMMITMENT) is None
        await _assert_recovers(stack, [])
        assert stack.store.get_meta(META_MASTER_COMMITMENT) is not None


async def test_one_master_key_per_boot_and_its_commitment_and_kms_key_are_attested(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        service = stack.enclave.service
        assert service is not None
        root = load_root(stack.root_pem)

        def attested() -> tuple[bytes | None, str | None]:
            nonce = b"n" * 16
            document = service.call("attest", {"nonce": nonce})["document"]
            verified = verify_attestation(document, root=root, now_ms=int(time.time() * 1000),
                                          pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=nonce)
            return decode_user_data(verified.user_data), decode_kms(verified.user_data)

        master = service.state.master()
        arn = stack.store.get_meta(META_KMS_KEY_ARN)
        assert arn is not None and arn.decode().startswith("arn:aws:kms:")
        assert attested() == (master_commitment(master), arn.decode())
        assert stack.store.get_meta(META_MASTER_COMMITMENT) == master_commitment(master)
        # Another KMS exchange in the same boot, for the store's own blob or a new key: refused alike.
        wrapped = stack.store.get_meta(META_DATA_KEY)
        assert wrapped is not None
        client = EnclaveClient(stack.enclave.address)
        try:
            for operation, blob in (("Decrypt", wrapped), ("GenerateDataKey", None)):
                with pytest.raises(RequestError, match="already loaded in this enclave boot"):
                    await client.call("kms_prepare", {"operation": operation, "key_id": arn.decode(),
                                                      "ciphertext_blob": blob, "endpoint": _relay(stack).endpoint})
            with pytest.raises(KmsRefused, match="already loaded in this enclave boot"):
                await _relay(stack).decrypt(client, arn.decode(), wrapped)
        finally:
            await client.close()
        assert attested() == (master_commitment(master), arn.decode())


async def test_the_cli_refuses_to_seal_to_an_enclave_with_another_master_key(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        good = await _cli_public_key(stack)
        assert good == stack.enclave.service.state.boot_public  # type: ignore[union-attr]
        await stack.signer.stop()
        await stack.enclave.restart()
        await _hostile_load(stack)
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
