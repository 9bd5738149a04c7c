"""The sidecar's view of the enclave: bring-up (attest → KMS → unseal), the account list, and typed calls.

Bring-up (README "Architecture"): fresh nonce → attestation document carrying the enclave's per-boot RSA key
→ verify (pinned root, PCR pins, nonce) → KMS GenerateDataKey/Decrypt with the document as Recipient →
the enclave opens CiphertextForRecipient → sealed records are handed over. The sidecar never holds the
data key or any account key in plaintext.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2
from cryptography import x509

from clave.core.errors import InfraError, RequestError, UnknownAccount
from clave.core.policy import authority
from clave.core.policy.engine import ApprovalRequired, Denied
from clave.core.provenance import ProvenanceError, admin_set_hash, decode_admins, decode_kms, decode_user_data
from clave.core.shapes import MessageSignature, NormalizedTx, SignedTx
from clave.sidecar.approvals import Approvals
from clave.sidecar.observe.tasks import start_supervised
from clave.sidecar.signing.enclave_client import (
    SLOW_TIMEOUT,
    EnclaveClient,
    EnclaveFailed,
    EnclaveNotReady,
    EnclaveUnavailable,
)
from clave.sidecar.store.records import CorruptRecord, KeyStore, StoredRecord
from clave.sidecar.trust.attestation import AttestationDocument, PcrPolicy, verify_attestation
from clave.sidecar.trust.kms_relay import KmsLoad

log = logging.getLogger("clave.signer")

META_KMS_KEY_ID = "kms_key_id"
META_DATA_KEY = "kms_data_key"
META_MASTER_COMMITMENT = "master_commitment"  # the store's master key, as the enclave attests to it
META_KMS_KEY_ARN = "kms_key_arn"  # the KMS key (ARN, account included) that released it, as attested
META_ADMIN_SET = "admin_set"  # the operator admin set, sealed by the enclave under the master key (CBOR)
META_ADMIN_PENDING = "admin_pending"  # an admin set to make at the next enclave boot (CBOR list; b"" = none)
META_CUSTODY = "custody"  # the custody policy and freeze state, sealed by the enclave (CBOR; enclave/policy.py)
UNSEAL_BATCH = 5000
GENERATE_BATCH = 5000
BULK = 1000  # from this many new accounts on, one full collection to freeze them is worth its pause
ATTESTATION_MAX_AGE_MS = 5 * 60 * 1000
LOGGED_REFUSALS = 100  # refused records named one per log line; beyond that, one line with the count
MAX_REFUSED_CALLS = 100  # single records whose unseal call failed as a whole, before blaming the enclave


def _attested(decode: Callable[[bytes | None], Any], verified: AttestationDocument, what: str, missing: str) -> Any:
    """A value of the enclave's attested user_data (`decode` of it); MasterKeyMismatch if unreadable or absent."""
    try:
        value = decode(verified.user_data)
    except ProvenanceError as exc:
        raise MasterKeyMismatch(f"{what}: {exc.message}") from None
    if value is None:
        raise MasterKeyMismatch(f"{what}: {missing}")
    return value


class MasterKeyMismatch(InfraError):
    """The enclave holds a master key that is not this store's (or one this sidecar cannot verify)."""

    remedy = (
        "something other than this sidecar loaded the enclave's master key (another process on the host, "
        "or a KMS endpoint that returned another key); nothing is unsealed, created or imported until "
        "the enclave is restarted (systemctl restart clave-enclave; locally, end the enclave process) "
        "and this sidecar loads the store's key into it"
    )


class AdminSetMismatch(MasterKeyMismatch):
    """The enclave holds an admin set other than the store's (someone else set it in this boot)."""


class SealingProvider(Protocol):
    """How the enclave gets its master data key: from KMS (with Recipient) over its own TLS session, the
    sidecar signing the requests and relaying the bytes (trust/kms_relay.py)."""

    async def generate_data_key(self, enclave: EnclaveClient, key_id: str) -> KmsLoad: ...
    async def decrypt(self, enclave: EnclaveClient, key_id: str, ciphertext_blob: bytes) -> KmsLoad: ...


@dataclass
class AttestationConfig:
    root: x509.Certificate
    pcr_policy: PcrPolicy = field(default_factory=PcrPolicy)
    max_age_ms: int = ATTESTATION_MAX_AGE_MS


@dataclass
class Account:
    address: bytes
    origin: str
    exportable: bool
    created: int


@dataclass(frozen=True)
class RefusedRecord:
    """A stored record that was not loaded: `row` is its rowid in the store (its name even when its
    address cannot be read), `address` the row's address column (b"" when unreadable)."""

    row: int
    address: bytes
    reason: str

    def describe(self) -> dict[str, object]:
        return {"row": self.row, "address": "0x" + self.address.hex() if self.address else None, "reason": self.reason}

    @classmethod
    def from_description(cls, item: dict[str, object]) -> RefusedRecord:
        address = item.get("address")
        return cls(int(item["row"]), bytes.fromhex(address[2:]) if isinstance(address, str) else b"", str(item["reason"]))  # type: ignore[call-overload]


@dataclass
class Status:
    enclave_reachable: bool = False
    attested: bool = False
    attested_at: float = 0.0
    keys_unsealed: bool = False
    keys_loaded: int = 0
    unseal_failures: int = 0
    last_error: str = ""
    pcrs: dict[int, bytes] = field(default_factory=dict)
    refused: list[RefusedRecord] = field(default_factory=list)  # records not loaded at the last unseal
    task_restarts: dict[str, int] = field(default_factory=dict)  # background tasks that died and were restarted
    master_verified: bool = False  # the enclave attested to the store's pinned master-key commitment
    master_mismatch: str = ""  # why the enclave's master key was refused, while it is
    admins: list[bytes] = field(default_factory=list)  # the enclave's admin set (export authorization)
    admins_pending: bool = False  # an admin set waits for the next enclave boot
    custody: dict[str, Any] = field(default_factory=dict)  # the enclave's custody state (policy, freeze)
    custody_error: str = ""  # why the stored custody record was refused (then every signature is denied)


class Signer:
    def __init__(
        self,
        client: EnclaveClient,
        store: KeyStore,
        sealing: SealingProvider,
        attestation: AttestationConfig,
        *,
        kms_key_id: str | None,
        provision_key: Callable[[AttestationDocument], Any] | None = None,
        repin_key: Callable[[str, AttestationDocument], Any] | None = None,
        clock: Callable[[], float] = time.time,
        admins: list[bytes] | None = None,
        admin_threshold: int = 1,
    ) -> None:
        self.client = client
        self.admins = admins  # `--admin`: the admin set of a new datadir
        self.admin_threshold = admin_threshold  # `--admin-threshold`: K of those admins for custody changes
        self.on_denied: Callable[[str], None] | None = None  # the wiring counts policy denials by rule
        self.on_bring_up: Callable[[], Awaitable[None]] | None = None  # the audit writer resumes the chain
        self.approvals = Approvals(self._approval_outcome, self._approver, clock)  # requests held for approval
        self.store = store
        self.sealing = sealing
        self.attestation = attestation
        self.kms_key_id = kms_key_id
        self.provision_key = provision_key  # local mode: create the emulator's key on first start
        self.repin_key = repin_key  # local mode, operator's choice: admit a rebuilt enclave's PCR0
        self.clock = clock
        self.status = Status()
        self._accounts: dict[bytes, Account] = {}
        self._position = 0  # the last store record this process has seen
        self._failed: set[bytes] = set()  # row addresses of the stored records that were refused
        self._checked_connection = 0  # the enclave connection last seen to hold every account's key
        self._boot_public: bytes | None = None  # the enclave boot whose master key was verified
        self._delivered_to: bytes | None = None  # the boot this sidecar loaded a master key into itself
        self._made_admins: tuple[bytes, Any] | None = None  # (boot, sealed admin set) not stored yet
        self._unseal_refusals = 0  # records refused alone by a failed unseal call, in this bring-up
        self._bring_up_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self.attempted = asyncio.Event()  # set once the first bring-up attempt has finished, either way
        self.on_task_restart: Callable[[str], None] | None = None  # the wiring counts restarts in a metric

    # -- bring-up --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None) -> bool:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can lose its caller's cancellation
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def attest(self, nonce: bytes) -> tuple[bytes, AttestationDocument]:
        result = await self.client.call("attest", {"nonce": nonce}, timeout=SLOW_TIMEOUT)
        document = result["document"]
        verified = verify_attestation(
            document,
            root=self.attestation.root,
            now_ms=int(self.clock() * 1000),
            pcr_policy=self.attestation.pcr_policy,
            expected_nonce=nonce,
            max_age_ms=self.attestation.max_age_ms,
        )
        return document, verified

    async def _attest_boot(self, boot_public: bytes) -> tuple[bytes, AttestationDocument]:
        document, verified = await self.attest(os.urandom(32))
        if verified.public_key != boot_public:
            raise InfraError(
                "attested public key differs from the enclave's boot key",
                remedy="retried; if it persists, something between the sidecar and the enclave answers for it",
            )
        self.status.attested, self.status.attested_at = True, self.clock()
        self.status.pcrs = dict(verified.pcrs)
        return document, verified

    async def bring_up(self) -> None:
        async with self._bring_up_lock:
            self._boot_public = None
            self.status.master_verified = False
            self.status.admins = []
            hello = await self.client.call("hello")
            self.status.enclave_reachable = True
            boot = hello["public_key"]
            _, verified = await self._attest_boot(boot)
            if not hello["ready"]:
                await self._load_master_key(verified)
                # One master key per boot: whatever this attests to is the only key this boot holds.
                _, verified = await self._attest_boot(boot)
            records = await asyncio.to_thread(self.store.records)
            kms_key = await self._verify_kms_key(verified)  # before anything is pinned or unsealed
            await self._verify_master(verified, boot, records)
            if await asyncio.to_thread(self.store.get_meta, META_KMS_KEY_ARN) is None:
                # The master key is the store's (verified above), so the key that released it is the store's.
                await asyncio.to_thread(self.store.set_meta, META_KMS_KEY_ARN, kms_key.encode())
                log.warning("pinned the store's KMS key %s", kms_key)
            await self._same_boot(boot)
            self.status.admins = await self._settle_admins(boot)
            await self._settle_custody()
            if self.on_bring_up is not None:
                await self.on_bring_up()
            self._boot_public = boot
            self.status.master_verified = True
            self.status.master_mismatch = ""
            self.status.keys_unsealed = True
            self.status.last_error = ""
            self._ready.set()
            log.info("enclave ready: %d accounts unsealed", self.status.keys_loaded)

    async def _verify_master(self, verified: AttestationDocument, boot: bytes, records: list[StoredRecord]) -> None:
        """Check the enclave's attested master-key commitment against the store's pin, then unseal. A
        store without a pin (made before pins existed, or a first start cut short) pins the commitment
        once it is proven: a record unsealed under it (AEAD), or, with no record yet, the key this sidecar
        itself loaded from KMS into this very boot (first-start trust in KMS; THREAT_MODEL.md)."""
        commitment = _attested(decode_user_data, verified, "master key", "the enclave says it is ready but attests to no master key")
        pinned = await asyncio.to_thread(self.store.get_meta, META_MASTER_COMMITMENT)
        if pinned is not None:
            if commitment != pinned:
                self._accounts_gone()
                raise MasterKeyMismatch(
                    f"master key mismatch: the enclave attests to master key {commitment.hex()[:16]}…, the "
                    f"store's is {pinned.hex()[:16]}…; refusing to unseal, create or import"
                )
            # The key is the store's: settle the admin set first (a new one is made only in a boot that
            # holds no keys yet), then unseal.
            await self._settle_admins(boot)
            await self._unseal(records)
            return
        if records:
            await self._settle_admins(boot, persist=False)  # a new set is made before any key is unsealed
            await self._unseal(records)
            if self.status.keys_loaded == 0:
                self._accounts_gone()
                raise MasterKeyMismatch(
                    f"master key mismatch: the enclave's master key opens none of the store's {len(records)} "
                    "records (and the store has no pinned commitment yet); refusing to create or import"
                )
            how = f"{self.status.keys_loaded} records unsealed under it"
        elif self._delivered_to == boot:
            self._accounts, self._failed = {}, set()
            self.status.keys_loaded, self.status.unseal_failures, self.status.refused = 0, 0, []
            how = "loaded by this sidecar from KMS into this boot; no record yet (first start)"
        else:
            self._accounts_gone()
            raise MasterKeyMismatch(
                "master key unverifiable: the enclave already holds a master key that this sidecar did not "
                "load, and the store has neither a pinned commitment nor a record to check it with"
            )
        await self._same_boot(boot)  # what opened the records is the boot that attested to the commitment
        await asyncio.to_thread(self.store.set_meta, META_MASTER_COMMITMENT, commitment)
        log.warning("pinned the store's master-key commitment %s (%s)", commitment.hex(), how)

    async def _settle_admins(self, boot: bytes, *, persist: bool = True) -> list[bytes]:
        """Give the enclave the store's admin set (sealed under the master key), or make the pending one
        (the enclave takes a new one only while it holds no key), and check the admin-set hash it attests
        to. A made set is stored only once the master key is verified (`persist`). Returns the enclave's
        admin set."""
        _, verified = await self._attest_boot(boot)
        try:
            attested = decode_admins(verified.user_data)
        except ProvenanceError as exc:
            raise AdminSetMismatch(f"admin set: {exc.message}") from None
        stored = await asyncio.to_thread(self.store.get_meta, META_ADMIN_SET)
        record: Any = cbor2.loads(stored) if stored is not None else None
        if record is None and self._made_admins is not None and self._made_admins[0] == boot:
            record = self._made_admins[1]
            if persist:
                await asyncio.to_thread(self.store.set_meta, META_ADMIN_SET, cbor2.dumps(record))
                await asyncio.to_thread(self.store.set_meta, META_ADMIN_PENDING, b"")
                self._made_admins = None
                log.warning("admin set sealed: %s", ", ".join("0x" + bytes(a).hex() for a in record["admins"]))
        self.status.admins_pending = False
        if record is not None:
            admins = [bytes(a) for a in record["admins"]]
            if attested is None:
                await self.client.call("load_admins", {"record": record})
                _, verified = await self._attest_boot(boot)
                attested = decode_admins(verified.user_data)
            if attested != admin_set_hash(admins):
                self._accounts_gone()
                raise AdminSetMismatch("admin set mismatch: the enclave holds an admin set other than the store's")
            return admins
        pending_raw = await asyncio.to_thread(self.store.get_meta, META_ADMIN_PENDING)
        pending, threshold = read_pending_admins(pending_raw)
        if pending is not None and attested is None:
            try:
                result = await self.client.call("init_admins", {"admins": pending, "threshold": threshold})
            except RequestError as exc:
                self.status.admins_pending = True
                log.warning("admin set pending until the next enclave boot: %s", exc.message)
                return []
            self._made_admins = (boot, result["record"])
            return await self._settle_admins(boot, persist=persist)
        if attested is not None:
            self._accounts_gone()
            raise AdminSetMismatch("admin set mismatch: the enclave holds an admin set this store does not have")
        if self.admins:
            log.warning("--admin names the admin set of a new datadir; this one was made without: run "
                        "`clave admin init --admin …` once and restart the enclave")
        return []

    async def _settle_custody(self) -> None:
        """Give the enclave the stored custody record (policy, freeze), and say at start what protects the
        keys. A record the enclave refuses (altered) stops all signing there; it is reported, not fatal."""
        self.status.custody_error = ""
        if not self.status.admins:
            self.status.custody = {}
            log.warning("no admin set: no custody policy protects the keys (any caller that reaches the signer "
                        "can sign anything with every account; see README \"Custody policy\")")
            return
        stored = await asyncio.to_thread(self.store.get_meta, META_CUSTODY)
        if stored is not None:
            try:
                await self.client.call("custody_load", {"record": cbor2.loads(stored)})
            except RequestError as exc:
                self.status.custody_error = exc.message
                log.error("CUSTODY RECORD REFUSED: %s", exc.message)
        self.status.custody = await self.custody_status()
        if self.status.custody.get("policy_hash") is None and not self.status.custody_error:
            log.warning("admin set without a custody policy: signing is open until the admins apply one "
                        "(clave policy apply)")

    def _approver(self, request: bytes, signature: bytes) -> bytes:
        """The admin whose EIP-712 `Approval` of `request` this is (the enclave checks again)."""
        set_id = self.status.custody.get("admin_set_id")
        if not set_id:
            raise RequestError("approval refused: this clave has no admin set")
        (signer,) = authority.signers(authority.approval_digest(bytes(set_id), request), [signature])
        if signer not in self.status.admins:
            raise RequestError(f"approval refused: 0x{signer.hex()} is not an admin")
        return signer

    async def _approval_outcome(self, request: bytes, outcome: str, rule: str) -> None:
        await self.client.call("approval_outcome", {"request": request, "outcome": outcome, "rule": rule})

    async def custody_status(self) -> dict[str, Any]:
        return await self.client.call("custody_status")  # type: ignore[no-any-return]

    async def custody_change(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """policy_apply, freeze, unfreeze, audit_ack or admins_change: the enclave checks the admin
        signatures and returns the new state sealed; it is stored before the caller hears of it."""
        result: dict[str, Any] = await self._call(method, params, timeout=SLOW_TIMEOUT)
        admin_record = result.pop("admin_record", None)
        if admin_record is not None:  # a new admin set: its record and the custody state bound to it
            await asyncio.to_thread(self.store.set_meta, META_ADMIN_SET, cbor2.dumps(admin_record))
            self.status.admins = [bytes(a) for a in admin_record["admins"]]
        await asyncio.to_thread(self.store.set_meta, META_CUSTODY, cbor2.dumps(result.pop("record")))
        self.status.custody_error = ""
        self.status.custody = await self.custody_status()
        log.warning("custody change %s (sequence %d) signed by %s", method, result["sequence"],
                    ", ".join("0x" + bytes(a).hex() for a in result.get("signers", [])))
        return result

    async def _same_boot(self, boot: bytes) -> None:
        """InfraError (retried) if the enclave restarted since it attested: a new boot is verified anew."""
        if (await self.client.call("hello"))["public_key"] != boot:
            raise InfraError("the enclave restarted during bring-up", remedy="retried at once by the watch")

    def _accounts_gone(self) -> None:
        """The enclave holds none of the store's keys."""
        self.status.keys_loaded = 0
        self.status.keys_unsealed = False

    async def _load_master_key(self, verified: AttestationDocument) -> None:
        key_id = self.kms_key_id or _text(self.store.get_meta(META_KMS_KEY_ID))
        if key_id is None and self.provision_key is not None:
            key_id = await self.provision_key(verified)
            self.store.set_meta(META_KMS_KEY_ID, key_id.encode())
        if key_id is None:
            raise InfraError("no KMS key configured", remedy="pass --kms-key-id")
        self.kms_key_id = key_id
        wrapped = self.store.get_meta(META_DATA_KEY)
        if wrapped is None:
            if self.store.get_meta(META_MASTER_COMMITMENT) is not None:
                raise MasterKeyMismatch(
                    "the store pins a master-key commitment but holds no wrapped data key",
                    remedy="restore keystore.sqlite from a backup: a new data key would never match the pin",
                )
            loaded = await self.sealing.generate_data_key(self.client, key_id)
            self._delivered_to = verified.public_key
            if loaded.ciphertext_blob is None:
                raise InfraError("KMS GenerateDataKey: the enclave returned no wrapped data key to store")
            # Stored only after the enclave took the key, so a failed first start leaves nothing behind.
            self.store.set_meta(META_DATA_KEY, loaded.ciphertext_blob)
            if self.admins:  # a new datadir: its admin set is made once the key is verified (bring-up)
                self.store.set_meta(META_ADMIN_PENDING, pending_admins(self.admins, self.admin_threshold))
        else:
            try:
                loaded = await self.sealing.decrypt(self.client, key_id, wrapped)
            except InfraError as exc:
                if self.repin_key is None or getattr(exc, "kms_code", "") != "AccessDeniedException":
                    raise
                log.warning("key policy refused this enclave build; re-pinning it as asked: %s", exc.message)
                await self.repin_key(key_id, verified)
                loaded = await self.sealing.decrypt(self.client, key_id, wrapped)
            self._delivered_to = verified.public_key
        log.info("the enclave loaded its master key from KMS key %s", loaded.key_arn)

    async def _verify_kms_key(self, verified: AttestationDocument) -> str:
        """The KMS key the enclave's master key came from (attested; the enclave read it from KMS's own
        answer) must be `--kms-key-id` when that is an ARN, and the store's pin once there is one. Without
        this, a parent holding credentials of another AWS account could have the enclave's first master key
        come from a KMS key it controls, and so know it. Returns the attested ARN."""
        attested = _attested(decode_kms, verified, "KMS key", "the enclave attests to no KMS key for its master key")
        pinned = _text(await asyncio.to_thread(self.store.get_meta, META_KMS_KEY_ARN))
        configured = self.kms_key_id if (self.kms_key_id or "").startswith("arn:") else None
        expected = pinned or configured or attested
        if attested != expected:
            self._accounts_gone()
            raise MasterKeyMismatch(
                f"KMS key mismatch: the enclave's master key was released by {attested}, the store's KMS key is "
                f"{expected}; refusing to unseal, create or import"
            )
        return attested

    async def _unseal(self, records: list[StoredRecord]) -> None:
        """Hand the stored records to the enclave. A record that cannot be decoded or unsealed is refused
        alone: it is logged and listed (by row) in the status, and every other account is loaded."""
        accounts: dict[bytes, Account] = {}
        refused: list[RefusedRecord] = []
        self._unseal_refusals = 0
        for start in range(0, len(records), UNSEAL_BATCH):
            sendable: list[tuple[StoredRecord, dict[str, object]]] = []
            for record in records[start : start + UNSEAL_BATCH]:
                try:
                    sendable.append((record, record.sealed()))
                except CorruptRecord as exc:
                    refused.append(RefusedRecord(record.position, record.address, exc.reason))
            loaded, failed = await self._unseal_batch(sendable)
            refused += failed
            for record in loaded:
                accounts[record.address] = Account(record.address, record.origin, record.exportable, record.created)
        refused.sort(key=lambda r: r.row)
        for item in refused[:LOGGED_REFUSALS]:
            shown = f"0x{item.address.hex()}" if item.address else "unreadable"
            log.error("sealed record refused: row %d (address %s): %s", item.row, shown, item.reason)
        if len(refused) > LOGGED_REFUSALS:
            log.error("%d more sealed records refused (see /healthz)", len(refused) - LOGGED_REFUSALS)
        self._accounts = accounts
        self._failed = {r.address for r in refused}
        self._position = max((r.position for r in records), default=0)
        self.status.refused = refused
        self.status.keys_loaded = len(accounts)
        self.status.unseal_failures = len(refused)
        gc.collect()  # then freeze: the account objects live on, and full GC passes need not walk them
        gc.freeze()

    async def _unseal_batch(
        self, batch: list[tuple[StoredRecord, dict[str, object]]]
    ) -> tuple[list[StoredRecord], list[RefusedRecord]]:
        """One `unseal` call; if the enclave refuses the call as a whole (a record it could not even
        parse, or one its handler crashed on), halve the batch until the record to blame stands alone.
        Infrastructure errors (enclave gone, timeout) propagate: the bring-up is retried as a whole."""
        if not batch:
            return [], []
        try:
            result = await self.client.call("unseal", {"records": [sealed for _, sealed in batch]}, timeout=SLOW_TIMEOUT)
        except (RequestError, EnclaveFailed) as exc:
            if len(batch) == 1:
                self._unseal_refusals += 1
                if self._unseal_refusals > MAX_REFUSED_CALLS:
                    # Not one damaged record, but every one: that is the enclave's problem (not ready).
                    raise InfraError(f"the enclave refuses every record: {exc.message}") from None
                record = batch[0][0]
                return [], [RefusedRecord(record.position, record.address, f"the enclave refused it: {exc.message}")]
            middle = len(batch) // 2
            first_loaded, first_refused = await self._unseal_batch(batch[:middle])
            second_loaded, second_refused = await self._unseal_batch(batch[middle:])
            return first_loaded + second_loaded, first_refused + second_refused
        loaded_addresses = set(result["loaded"])
        reasons = {f.get("address"): str(f.get("error")) for f in result["failed"] if isinstance(f, dict)}
        loaded: list[StoredRecord] = []
        refused: list[RefusedRecord] = []
        for record, _ in batch:  # each record's address was checked against its row by record.sealed()
            if record.address in loaded_addresses:
                loaded.append(record)
            else:
                reason = reasons.get(record.address, "the enclave did not load it")
                refused.append(RefusedRecord(record.position, record.address, reason))
        return loaded, refused

    async def watch(self, interval: float = 1.0) -> None:
        """Keep the enclave brought up: after an enclave restart, attest and unseal again."""
        while True:
            try:
                hello = await self.client.call("hello", timeout=max(interval, 2.0))
                self.status.enclave_reachable = True
                restarted = hello["public_key"] != self._boot_public  # a new boot, perhaps another's key
                if restarted or not hello["ready"] or hello["keys"] < len(self._accounts) or not self.ready:
                    self._ready.clear()
                    self.status.keys_unsealed = False
                    await self.bring_up()
            except (InfraError, RequestError) as exc:
                self.status.enclave_reachable = not isinstance(exc, EnclaveUnavailable)
                if isinstance(exc, MasterKeyMismatch):
                    if self.status.master_mismatch != exc.message:
                        log.error("REFUSING THE ENCLAVE: %s (%s)", exc.message, exc.remedy)
                    self.status.master_mismatch = exc.message
                else:
                    self.status.master_mismatch = ""
                    if self.status.last_error != exc.message:
                        log.warning("bring-up: %s", exc.message)
                self.status.last_error = exc.message
                self._ready.clear()
                self.status.keys_unsealed = False
            except Exception as exc:  # a bug, or a reply of a shape nobody expected: say so, retry
                message = f"bring-up failed unexpectedly: {type(exc).__name__}: {exc}"
                if self.status.last_error != message:
                    log.exception("bring-up")
                self.status.last_error = message
                self._ready.clear()
                self.status.keys_unsealed = False
            self.attempted.set()
            await asyncio.sleep(interval)

    @property
    def boot_public(self) -> bytes | None:
        """The boot key of the enclave whose master key was last verified (None while none is)."""
        return self._boot_public

    def task_restarted(self, name: str) -> None:
        """Count a background task that died and was restarted (status, /healthz and the metric)."""
        self.status.task_restarts[name] = self.status.task_restarts.get(name, 0) + 1
        if self.on_task_restart is not None:
            self.on_task_restart(name)

    def start_watch(self, interval: float = 1.0) -> None:
        self._tasks = [
            start_supervised("enclave-watch", lambda: self.watch(interval), restarted=self.task_restarted),
            start_supervised("store-follow", lambda: self.follow_store(interval), restarted=self.task_restarted),
        ]

    async def follow_store(self, interval: float) -> None:
        """Catch up in the background too, so that the first account_list after another process generated
        100,000 accounts does not wait for them (365 ms in the benchmark)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.catch_up()
            except InfraError as exc:
                log.warning("reading new accounts from the store: %s", exc.message)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Cancel again until every task has ended: a cancellation lost inside a task (Python 3.11's wait_for
        # did that; enclave_client.py) must not leave stop() waiting forever.
        while pending := [task for task in self._tasks if not task.done()]:
            await asyncio.wait(pending, timeout=0.5)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- accounts --------------------------------------------------------------------------------

    @property
    def failed_addresses(self) -> set[bytes]:
        return set(self._failed)

    async def catch_up(self) -> None:
        """Take in accounts that other processes sharing the store (HTTP workers) have added since.

        They were generated or imported in the same enclave, so they are usable at once. The read runs off
        the event loop: after a bulk generation through another process it returns 100,000 rows, and the
        benchmark's account_list once stalled 0.35 s when it ran on the loop. Applying the rows is
        idempotent, so concurrent catch-ups only repeat work."""
        if not self.ready:
            return
        listed = await asyncio.to_thread(self.store.accounts_after, self._position)
        added = 0
        for item in listed:
            if item.address not in self._failed and item.address not in self._accounts:
                self._accounts[item.address] = Account(item.address, item.origin, item.exportable, item.created)
                added += 1
        if listed:
            self._position = max(self._position, listed[-1].position)
        self.status.keys_loaded = len(self._accounts)
        if added >= BULK:
            gc.collect()  # as after a bulk generation here: freeze the new long-lived accounts
            gc.freeze()

    async def accounts(self) -> list[Account]:
        self._listable()
        await self.catch_up()
        return list(self._accounts.values())

    async def addresses(self) -> list[bytes]:
        self._listable()
        await self.catch_up()
        return list(self._accounts)

    def _listable(self) -> None:
        """While the keys are sealed the list would be empty: say "not ready" (503, retry) instead, or an
        operator reads an empty list as keys gone."""
        if not self.ready:
            raise EnclaveNotReady(self.status.last_error or "keys are being unsealed")

    async def require(self, address: bytes) -> None:
        if address not in self._accounts:
            await self.catch_up()
            if address not in self._accounts:
                if not self.ready:
                    # Perhaps made by another process while this one was not following the store: say
                    # "not ready" (503, retry), as for any account then, rather than "unknown account".
                    raise EnclaveNotReady(self.status.last_error or "keys are being unsealed")
                raise UnknownAccount()

    async def _call(self, method: str, params: dict[str, Any], timeout: float = 10.0) -> Any:
        if not self.ready:
            raise EnclaveNotReady(self.status.last_error or "keys are being unsealed")
        if not self.client.connected or self.client.connections != self._checked_connection:
            await self._check_connection()
        try:
            return await self.client.call(method, params, timeout=timeout)
        except Denied as denied:
            address = params.get("address")
            shown = "0x" + address.hex() if isinstance(address, bytes) else "-"
            log.warning("request denied by custody policy: rule=%s reason=%s method=%s account=%s",
                        denied.rule, denied.reason, method, shown)
            if self.on_denied is not None:
                self.on_denied(denied.rule)
            raise

    async def _check_connection(self) -> None:
        """A new connection may reach a restarted enclave that holds no keys until they are unsealed again
        (the watch, or the primary for a worker, notices within a second). Until the enclave says it holds
        them all, answer "not ready" (503), not "unknown account"."""
        hello = await self.client.call("hello")
        connection = self.client.connections
        if hello["public_key"] != self._boot_public:
            # Another boot than the one whose master key was verified: nothing goes to it until the watch
            # (or, for a worker, the primary) has checked its attested master key.
            raise EnclaveNotReady("the enclave restarted; its master key is being verified")
        if not hello["ready"] or hello["keys"] < len(self._accounts):
            raise EnclaveNotReady("the enclave restarted; keys are being unsealed again")
        self._checked_connection = connection

    async def _persist(self, records: list[dict[str, Any]]) -> list[bytes]:
        stored = [StoredRecord.from_sealed(r) for r in records]
        await asyncio.to_thread(self.store.add_records, stored)
        for r in stored:
            self._accounts[r.address] = Account(r.address, r.origin, r.exportable, r.created)
        self.status.keys_loaded = len(self._accounts)
        return [r.address for r in stored]

    async def new_accounts(self, count: int = 1, exportable: bool = False) -> list[bytes]:
        addresses: list[bytes] = []
        while len(addresses) < count:
            chunk = min(GENERATE_BATCH, count - len(addresses))
            result = await self._call("generate", {"count": chunk, "exportable": exportable}, timeout=SLOW_TIMEOUT)
            addresses += await self._persist(result["records"])
        if count >= BULK:
            gc.collect()  # a bulk generation: freeze the new long-lived accounts, as after unsealing
            gc.freeze()
        return addresses

    async def import_keyfile(self, envelope: bytes, exportable: bool) -> bytes:
        result = await self._call("import_keyfile", {"envelope": envelope, "exportable": exportable}, timeout=SLOW_TIMEOUT)
        address = result["record"]["address"]
        if address in self._accounts:
            raise RequestError(f"account already exists: 0x{address.hex()}")
        (address,) = await self._persist([result["record"]])
        return address

    async def export_challenge(self, address: bytes) -> bytes:
        await self.require(address)
        result = await self._call("export_challenge", {"address": address})
        return bytes(result["challenge"])

    async def export_keyfile(self, address: bytes, envelope: bytes, challenge: bytes, signature: bytes) -> str:
        await self.require(address)
        params = {"address": address, "envelope": envelope, "challenge": challenge, "signature": signature}
        result = await self._call("export_keyfile", params, timeout=SLOW_TIMEOUT)
        return str(result["keyfile"])

    async def sign_tx(self, address: bytes, tx: NormalizedTx) -> SignedTx:
        await self.require(address)
        params: dict[str, Any] = {"address": address, "tx": tx}
        try:
            return await self._call("sign_tx", params)  # type: ignore[no-any-return]
        except ApprovalRequired as needed:
            to = tx.get("to")
            summary = {"account": "0x" + address.hex(), "chainId": tx.get("chainId"), "nonce": tx.get("nonce"),
                       "to": "0x" + to.hex() if isinstance(to, bytes) else None, "value": str(tx.get("value"))}

            async def retry(signatures: list[bytes]) -> Any:
                return await self._call("sign_tx", {**params, "approvals": signatures})

            try:
                return await self.approvals.hold(needed, summary, retry)  # type: ignore[no-any-return]
            except Denied as denied:
                log.warning("request denied by custody policy: rule=%s reason=%s method=sign_tx account=0x%s",
                            denied.rule, denied.reason, address.hex())
                if self.on_denied is not None:
                    self.on_denied(denied.rule)
                raise

    async def sign(self, method: str, address: bytes, **params: Any) -> tuple[bytes, bytes]:
        """Run one of the enclave's message signers; returns (65-byte signature with V 0/1, digest)."""
        await self.require(address)
        result: MessageSignature = await self._call(method, {"address": address, **params})
        return result["signature"], result["digest"]


def pending_admins(admins: list[bytes], threshold: int) -> bytes:
    """The store's pending admin set (made at the next enclave boot): CBOR {"admins", "threshold"}."""
    return cbor2.dumps({"admins": sorted(admins), "threshold": threshold})


def read_pending_admins(raw: bytes | None) -> tuple[list[bytes] | None, int]:
    """(admins, threshold) of a pending admin set; a bare list (before thresholds) has K = 1."""
    if not raw:
        return None, 1
    value = cbor2.loads(raw)
    if isinstance(value, dict):
        return [bytes(a) for a in value["admins"]], int(value.get("threshold", 1))
    return [bytes(a) for a in value], 1


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


class FollowerSigner(Signer):
    """An HTTP worker's signer. The primary `clave serve` process attests, unseals and watches the enclave
    and sends each change of its status (see `worker_pool.py`); a follower mirrors it, signs over its own
    enclave connection and reads the account list from the shared store."""

    def start_watch(self, interval: float = 1.0) -> None:
        # The primary watches the enclave; a worker only follows the store.
        self._tasks = [
            start_supervised("store-follow", lambda: self.follow_store(interval), restarted=self.task_restarted)
        ]

    async def bring_up(self) -> None:
        raise InfraError("an HTTP worker does not bring the enclave up", remedy="the primary `clave serve` does")

    async def follow(self, update: dict[str, Any]) -> None:
        status = self.status
        status.enclave_reachable = bool(update["enclave_reachable"])
        status.attested = bool(update["attested"])
        status.attested_at = float(update["attested_at"])
        status.keys_unsealed = bool(update["keys_unsealed"])
        status.unseal_failures = int(update["unseal_failures"])
        status.last_error = str(update["last_error"])
        status.refused = [RefusedRecord.from_description(item) for item in update.get("refused", [])]
        status.master_verified = bool(update.get("master_verified", False))
        status.master_mismatch = str(update.get("master_mismatch", ""))
        status.admins = [bytes.fromhex(a) for a in update.get("admins", [])]
        status.admins_pending = bool(update.get("admins_pending", False))
        boot = update.get("boot_public")
        self._boot_public = bytes.fromhex(boot) if isinstance(boot, str) else None
        if not update["ready"]:
            self._ready.clear()
            return
        self._failed = {bytes.fromhex(a) for a in update["failed"]}
        if not self._ready.is_set():
            self._ready.set()
            if self._position == 0:
                await self.catch_up()  # the first load: every account
                gc.collect()
                gc.freeze()
        await self.catch_up()
