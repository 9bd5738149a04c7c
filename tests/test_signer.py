"""The sidecar's signer in-process (tests/inproc.py): bring-up (attest, KMS, unseal), its status, the
account list, signing, enclave restarts, refusals by KMS and by the PCR policy, records that do not
unseal, and the HTTP worker's FollowerSigner on a shared store.

Signatures are checked with eth-keys (recovery from the digest), digests with eth-account's encoders.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_account.messages import _hash_eip191_message, encode_defunct
from eth_keys import keys

from clave.core.errors import InfraError, UnknownAccount
from clave.dev.kmsemu.auth import credentials_path
from clave.sidecar.serve import enclave_kms
from clave.sidecar.signing.enclave_client import EnclaveClient, EnclaveNotReady, EnclaveUnavailable
from clave.sidecar.signing.signer import (
    META_DATA_KEY,
    META_KMS_KEY_ID,
    AttestationConfig,
    FollowerSigner,
    Signer,
)
from clave.sidecar.store.records import SqliteStore, StoredRecord
from clave.sidecar.trust.attestation import AttestationError, PcrPolicy, load_root
from tests.inproc import running_stack
from tests.stack import RpcFailure


def _recover(digest: bytes, signature: bytes) -> bytes:
    assert len(signature) == 65 and signature[64] in (0, 1), "the signer returns V as 0/1"
    return bytes.fromhex(keys.Signature(signature_bytes=signature).recover_public_key_from_msg_hash(digest)
                         .to_address()[2:])


async def _sign_personal(signer: Signer, address: bytes, data: bytes) -> None:
    signature, digest = await signer.sign("sign_personal", address, data=data)
    assert digest == _hash_eip191_message(encode_defunct(primitive=data))
    assert _recover(digest, signature) == address


async def _eventually(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_bring_up_attests_provisions_a_kms_key_and_reports_its_status(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        status = stack.signer.status
        assert stack.signer.ready and status.enclave_reachable and status.attested and status.keys_unsealed
        assert status.keys_loaded == 0 and status.unseal_failures == 0 and status.last_error == ""
        assert len(status.pcrs[0]) == 48 and any(status.pcrs[0]), "the software NSM measures the code: PCR0 is set"
        key_id = stack.store.get_meta(META_KMS_KEY_ID)
        wrapped = stack.store.get_meta(META_DATA_KEY)
        assert key_id and wrapped and len(wrapped) > 32
        described = await asyncio.to_thread(stack.kms_client.describe_key, KeyId=key_id.decode())
        assert described["KeyMetadata"]["KeyId"] == key_id.decode()
        hello = await stack.signer.client.call("hello")
        assert hello["ready"] is True and hello["keys"] == 0


async def test_new_accounts_sign_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        signer = stack.signer
        made = await signer.new_accounts(3, exportable=False)
        assert len(set(made)) == 3 and all(len(a) == 20 for a in made)
        assert set(await signer.addresses()) == set(made) and signer.status.keys_loaded == 3
        assert {r.address for r in stack.store.records()} == set(made)
        for address in made:
            await _sign_personal(signer, address, b"clave " + address)
        with pytest.raises(UnknownAccount):
            await signer.sign("sign_personal", b"\x01" * 20, data=b"x")
        with pytest.raises(UnknownAccount):
            await signer.sign_tx(b"\x01" * 20, {"type": 2})


async def test_a_second_sidecar_on_the_same_datadir_unseals_the_same_accounts(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        made = await stack.signer.new_accounts(2)
        # A new sidecar process would do this: its own store handle and enclave connection, the stored
        # KMS key id and wrapped data key, bring-up against the enclave that already holds the master key.
        store = SqliteStore(stack.config.store_path)
        client = EnclaveClient(stack.enclave.address)
        again = Signer(client, store, enclave_kms(stack.config, stack.kms_endpoint, credentials_path(stack.root / "kms")),
                       AttestationConfig(root=load_root(stack.root_pem), pcr_policy=PcrPolicy(allow_debug=True)),
                       kms_key_id=None)
        try:
            await again.bring_up()
            assert again.ready and set(await again.addresses()) == set(made)
            await _sign_personal(again, made[1], b"from the second sidecar")
        finally:
            await client.close()
            store.close()


async def test_an_enclave_restart_is_not_ready_then_recovered_by_the_watch(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        signer = stack.signer
        (address,) = await signer.new_accounts(1)
        await signer.stop()  # no watch while the enclave restarts: the gap is observable, not a race
        attested_at = signer.status.attested_at
        await stack.enclave.restart()
        assert stack.enclave.starts == 2
        await _eventually(lambda: not signer.client.connected)  # the client saw its connection end
        with pytest.raises(EnclaveNotReady):
            await signer.sign("sign_personal", address, data=b"during")
        with pytest.raises(RpcFailure) as err:
            await stack.http_rpc("eth_sign", "0x" + address.hex(), "0x00")
        assert (err.value.status, err.value.code) == (503, -32000), "not ready is retryable: HTTP 503"
        assert err.value.message.startswith("enclave not ready")
        signer.start_watch(0.05)
        # The watch attested the new enclave and unsealed again (ready is cleared, then set, on the way).
        await _eventually(lambda: signer.status.attested_at > attested_at and signer.ready)
        assert signer.status.keys_loaded == 1
        await _sign_personal(signer, address, b"after the restart")
        hello = await signer.client.call("hello")
        assert hello["keys"] == 1, "the new enclave holds the unsealed key"
        metrics = await (await stack.http.get("/metrics")).text()
        assert 'clave_kms_calls_total{operation="Decrypt",outcome="ok"} 1.0' in metrics


async def test_a_dead_enclave_is_unavailable_promptly_and_health_says_so(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        (address,) = await stack.signer.new_accounts(1)
        await stack.signer.stop()
        await stack.enclave.stop()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(InfraError) as err:
            await stack.signer.sign("sign_personal", address, data=b"x")
        assert isinstance(err.value, EnclaveUnavailable | EnclaveNotReady) and loop.time() - start < 3
        stack.signer.start_watch(0.05)
        await _eventually(lambda: not stack.signer.ready and not stack.signer.status.enclave_reachable)
        response = await stack.http.get("/healthz")
        body = await response.json()
        assert response.status == 503 and body["ready"] is False and body["enclave_reachable"] is False
        assert "enclave unavailable" in body["last_error"]
        await stack.enclave.start()
        await _eventually(lambda: stack.signer.ready)
        await _sign_personal(stack.signer, address, b"back")


async def test_kms_refusing_the_key_leaves_the_signer_not_ready(tmp_path: Path) -> None:
    async with running_stack(tmp_path, wait_ready=False,
                             kms_key_id="11111111-2222-3333-4444-555555555555") as stack:
        assert not stack.signer.ready
        assert "NotFoundException" in stack.signer.status.last_error
        assert stack.signer.status.attested is True, "attestation passed; KMS said no"
        assert stack.store.get_meta(META_DATA_KEY) is None, "a failed first start leaves nothing behind"
        with pytest.raises(RpcFailure) as err:
            await stack.http_rpc("eth_sign", "0x" + "11" * 20, "0x00")
        assert err.value.status == 503 and "enclave not ready" in err.value.message
        body = await (await stack.http.get("/healthz")).json()
        assert body["ready"] is False and "NotFoundException" in body["last_error"]


async def test_a_pcr_pin_that_does_not_match_refuses_the_enclave(tmp_path: Path) -> None:
    async with running_stack(tmp_path, wait_ready=False, pcrs={0: bytes(48)}) as stack:
        assert not stack.signer.ready and not stack.signer.status.attested
        assert stack.signer.status.last_error.startswith("attestation: PCR0 mismatch: expected " + "00" * 48)
        assert stack.store.get_meta(META_KMS_KEY_ID) is None, "no KMS key for an enclave that failed attestation"
        with pytest.raises(AttestationError):
            await stack.signer.bring_up()


async def test_a_record_that_does_not_unseal_is_reported_and_not_served(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        good, victim = await stack.signer.new_accounts(2)
        record = next(r for r in stack.store.records() if r.address == victim)
        sealed = record.sealed()
        corrupt_address = b"\xee" * 20
        forged = StoredRecord.from_sealed({**sealed, "address": corrupt_address})  # the AEAD binds the address
        stack.store.add_records([forged])
        await stack.signer.stop()
        await stack.enclave.restart()
        await _eventually(lambda: not stack.signer.client.connected)
        await stack.signer.bring_up()
        assert stack.signer.status.keys_loaded == 2 and stack.signer.status.unseal_failures == 1
        assert stack.signer.failed_addresses == {corrupt_address}
        assert set(await stack.signer.addresses()) == {good, victim}
        with pytest.raises(UnknownAccount):
            await stack.signer.sign("sign_personal", corrupt_address, data=b"x")
        await _sign_personal(stack.signer, victim, b"still fine")


async def test_an_unknown_address_while_not_ready_is_not_ready(tmp_path: Path) -> None:
    async with running_stack(tmp_path, wait_ready=False, pcrs={0: bytes(48)}) as stack:
        with pytest.raises(EnclaveNotReady):
            await stack.signer.sign("sign_personal", b"\x02" * 20, data=b"x")


async def test_a_follower_mirrors_the_primary_and_reads_the_shared_store(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        (first,) = await stack.signer.new_accounts(1)
        store = SqliteStore(stack.config.store_path)
        client = EnclaveClient(stack.enclave.address)
        follower = FollowerSigner(client, store, None, None, kms_key_id=None)  # type: ignore[arg-type]
        status = {"enclave_reachable": True, "attested": True, "attested_at": 1.0, "keys_unsealed": True,
                  "unseal_failures": 0, "last_error": "", "failed": [], "boot_public": stack.signer.boot_public.hex()}
        try:
            with pytest.raises(EnclaveNotReady):
                await follower.sign("sign_personal", first, data=b"x")
            with pytest.raises(InfraError, match="does not bring the enclave up"):
                await follower.bring_up()
            # A boot other than the one the primary verified the master key of: nothing goes to it.
            await follower.follow({**status, "ready": True, "boot_public": "00" * 32})
            with pytest.raises(EnclaveNotReady, match="master key is being verified"):
                await follower.sign("sign_personal", first, data=b"x")
            await follower.follow({**status, "ready": True})
            assert follower.ready and await follower.addresses() == [first]
            await _sign_personal(follower, first, b"from a worker")
            (second,) = await stack.signer.new_accounts(1)
            assert await follower.addresses() == [first, second], "taken from the store, not from the primary"
            await _sign_personal(follower, second, b"made by the primary")
            await follower.follow({**status, "ready": False, "last_error": "enclave restarted"})
            assert not follower.ready and follower.status.last_error == "enclave restarted"
            with pytest.raises(EnclaveNotReady):
                await follower.sign("sign_personal", first, data=b"x")
        finally:
            await follower.stop()
            await client.close()
            store.close()
