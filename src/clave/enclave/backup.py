"""Backup and recovery inside the enclave (issue 14). Handlers for `EnclaveService`; no sockets, no files.

Backup (`backup_challenge`, `backup_create`): an admin of the datadir's admin set signs (EIP-191)
`backup_message(request_digest(sequence, K, custodians, accounts, pcr0), challenge)` for a challenge this
enclave issued (fresh, single-use, 5 minutes), exactly as an export is authorized: a backup releases key
material, so the parent alone cannot ask for one. The enclave then draws one backup master secret s,
splits it K-of-n (Shamir over the secp256k1 order) with Feldman commitments, encrypts the selected keys
under HKDF(s) (AES-256-GCM), seals share i to custodian i with HPKE, and returns the manifest, the
encrypted payload and the sealed shares. The parent relays ciphertext only; s and the polynomial are
dropped when the call returns.

Recovery (`recovery_start`, `recovery_finish`): the enclave makes one X25519 recovery key per boot and
returns an attestation document whose `user_data` carries it (next to the master-key commitment). Each
custodian checks that document (root, PCR0 = the manifest's pin) and re-seals its share to the recovery
key (`clave recovery contribute`). `recovery_finish` opens the shares, checks each against the Feldman
commitments (naming the index of a bad one), needs K good ones from distinct custodians, rebuilds s,
decrypts the payload, checks every key's address, and only then adds the keys and seals them under this
boot's master key. Any failure leaves the key table as it was.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from clave.core import backup_format as bf
from clave.core import feldman, shamir
from clave.core.errors import InvalidParams, RequestError
from clave.core.eth.messages import text_hash
from clave.core.eth.secp256k1 import address_of, recover_address
from clave.enclave.admins import NoAdminSet
from clave.enclave.keys import KeyTable, key_from_secret
from clave.enclave.nitro import nsm as nsm_api
from clave.enclave.sealing import RecordMeta, seal
from clave.enclave.state import EnclaveState

CHALLENGE_TTL = 300
MAX_CHALLENGES = 64
# The replies (payload ~70 bytes per key; recovery: a sealed record, ~130 bytes, per key) must stay under
# the link's 4 MiB frame limit: back up larger sets as several backups (--account).
MAX_BACKUP_ACCOUNTS = 20_000
Handler = Any


class BackupRefused(RequestError):
    """A backup or recovery request that is not authorized or does not check out."""


def _address_of(secret: bytes) -> bytes:
    return address_of(key_from_secret(secret).public_key)


class Backups:
    def __init__(self, state: EnclaveState, keys: KeyTable) -> None:
        self.state = state
        self.keys = keys
        self._challenges: OrderedDict[bytes, float] = OrderedDict()
        self._recovery: X25519PrivateKey | None = None
        self._lock = threading.Lock()
        self._finish_lock = threading.Lock()

    def handlers(self) -> dict[str, Handler]:
        return {
            "backup_challenge": self.backup_challenge,
            "backup_create": self.backup_create,
            "recovery_start": self.recovery_start,
            "recovery_finish": self.recovery_finish,
        }

    def _random(self, count: int) -> bytes:
        """NSM randomness XORed with the kernel's: uniform if either source is sound."""
        return bytes(a ^ b for a, b in zip(self.state.random(count), os.urandom(count), strict=True))

    def _pcr0(self) -> bytes:
        return nsm_api.describe_pcr(self.state.nsm, 0)[1]

    # -- backup ----------------------------------------------------------------------------------

    def _admins(self) -> tuple[bytes, ...]:
        try:
            return self.state.admin_set.require()
        except NoAdminSet:
            raise NoAdminSet(
                "backup refused: this enclave has no admin set (make one: `clave up --admin 0xADDR` on a new "
                "datadir, or `clave admin init --admin 0xADDR` once, then restart the enclave)"
            ) from None

    def backup_challenge(self, params: dict[str, Any]) -> dict[str, Any]:
        self._admins()
        challenge = os.urandom(32)
        with self._lock:
            self._challenges[challenge] = self.state.clock() + CHALLENGE_TTL
            while len(self._challenges) > MAX_CHALLENGES:
                self._challenges.popitem(last=False)
        return {"challenge": challenge, "pcr0": self._pcr0()}

    def _authorize(self, digest: bytes, challenge: Any, signature: Any) -> bytes:
        admins = self._admins()
        if not isinstance(challenge, bytes) or not isinstance(signature, bytes) or len(signature) != 65:
            raise BackupRefused("backup refused: it needs an admin's signature over a backup challenge")
        with self._lock:
            expires = self._challenges.pop(challenge, None)
        if expires is None:
            raise BackupRefused("backup refused: unknown or already used challenge")
        if self.state.clock() > expires:
            raise BackupRefused("backup refused: the challenge has expired")
        signer = _signer(bf.backup_message(digest, challenge), signature)
        if signer is None:
            raise BackupRefused("backup refused: bad signature")
        if signer not in admins:
            raise BackupRefused(f"backup refused: 0x{signer.hex()} is not an admin")
        return signer

    def backup_create(self, params: dict[str, Any]) -> dict[str, Any]:
        threshold, sequence = _int(params, "threshold"), _int(params, "sequence")
        custodians, accounts, pcr0 = params.get("custodians"), params.get("accounts"), params.get("pcr0")
        if not isinstance(custodians, list) or not all(isinstance(c, bytes) and len(c) == 32 for c in custodians):
            raise InvalidParams("custodians: expected a list of 32-byte X25519 public keys")
        if len(set(custodians)) != len(custodians):
            raise InvalidParams("custodians: a custodian is named twice")
        if accounts is None:
            accounts = [k.address for k in self.keys]
        if not isinstance(accounts, list) or not all(isinstance(a, bytes) and len(a) == 20 for a in accounts):
            raise InvalidParams("accounts: expected a list of 20-byte addresses")
        if not isinstance(pcr0, bytes) or len(pcr0) != 48:
            raise InvalidParams("pcr0: expected 48 bytes")
        accounts = sorted(set(accounts))
        if not 0 < len(accounts) <= MAX_BACKUP_ACCOUNTS:
            raise InvalidParams(f"accounts: expected 1..{MAX_BACKUP_ACCOUNTS} per backup")
        try:
            shamir.check_parameters(threshold, len(custodians))
        except shamir.ShamirError as exc:
            raise InvalidParams(str(exc)) from None
        loaded = [self.keys.get(a) for a in accounts]  # unknown account: refused before anything is made
        digest = bf.request_digest(sequence, threshold, custodians, accounts, pcr0)
        challenge, signature = params.get("challenge"), params.get("signature")
        admin = self._authorize(digest, challenge, signature)
        if not isinstance(challenge, bytes) or not isinstance(signature, bytes):  # (_authorize refused those)
            raise InvalidParams("challenge and signature: expected bytes")
        self.state.master()  # a backup is made only by an enclave that holds the store's key
        secret = shamir.random_scalar(self._random)
        split = shamir.split(secret, threshold, len(custodians), self._random)
        commitments = feldman.commit(split.coefficients)
        entries = [bf.BackedUpKey(k.address, k.secret, k.origin, k.exportable) for k in loaded]
        payload = bf.encrypt_payload(secret, sequence, entries, self._random(12))
        manifest = bf.Manifest(sequence, threshold, tuple(custodians), tuple(accounts), commitments, pcr0,
                               bf.payload_hash(payload), self.state.now(), admin, signature, challenge)
        mid = manifest.id
        shares = [bf.seal_share(c, "custodian", mid, s) for c, s in zip(custodians, split.shares, strict=True)]
        return {"manifest": manifest.encode(), "manifest_id": mid, "payload": payload, "shares": shares}

    # -- recovery --------------------------------------------------------------------------------

    def recovery_start(self, params: dict[str, Any]) -> dict[str, Any]:
        nonce = params.get("nonce")
        if nonce is not None and (not isinstance(nonce, bytes) or len(nonce) > 512):
            raise InvalidParams("nonce: expected at most 512 bytes")
        self.state.master()  # recovered keys are sealed under this boot's master key: it must be loaded
        with self._lock:
            if self._recovery is None:
                self._recovery = X25519PrivateKey.from_private_bytes(self._random(32))  # NSM ⊕ kernel
            public = bf.public_key_bytes(self._recovery)
        user_data = self.state.user_data(recovery=public)
        document = nsm_api.attestation(self.state.nsm, user_data=user_data, nonce=nonce, public_key=self.state.boot_public)
        return {"document": document, "recovery_key": public}

    def recovery_finish(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._finish_lock:  # two finishes at once must not both pass the duplicate check
            return self._recovery_finish(params)

    def _recovery_finish(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            recovery = self._recovery
        if recovery is None:
            raise BackupRefused("recovery refused: no recovery started in this enclave boot (run `clave recovery start`)")
        manifest_bytes, payload, sealed_list = params.get("manifest"), params.get("payload"), params.get("shares")
        if not isinstance(manifest_bytes, bytes) or not isinstance(payload, bytes) or not isinstance(sealed_list, list):
            raise InvalidParams("expected manifest (bytes), payload (bytes) and shares (list)")
        manifest = bf.decode_manifest(manifest_bytes)
        mid = manifest.id
        if manifest.pcr0 != self._pcr0():
            raise BackupRefused("recovery refused: this enclave's PCR0 is not the one the backup's manifest pins")
        if _signer(bf.backup_message(manifest.request_digest, manifest.challenge), manifest.authorization) != manifest.admin:
            raise BackupRefused("recovery refused: the manifest's admin authorization does not verify")
        shares: dict[int, shamir.Share] = {}
        for item in sealed_list:
            sealed = bf.parse_sealed_share(item)
            share = bf.open_share(recovery, sealed, mid, "recovery")
            try:
                feldman.check_share(manifest.commitments, share)
            except feldman.FeldmanError as exc:
                custodian = manifest.custodians[share.x - 1].hex()[:16] if share.x <= len(manifest.custodians) else "?"
                raise BackupRefused(f"recovery refused: {exc}; custodian {share.x} (key {custodian}…)") from None
            if share.x in shares:
                raise BackupRefused(f"recovery refused: share {share.x} is given twice")
            shares[share.x] = share
        if len(shares) < manifest.threshold:
            raise BackupRefused(
                f"recovery refused: {len(shares)} valid share(s) given, the backup needs {manifest.threshold}")
        secret = shamir.combine(list(shares.values())[: manifest.threshold])
        if not feldman.secret_matches(manifest.commitments, secret):
            raise BackupRefused("recovery refused: the shares do not rebuild the committed secret")
        keys = bf.decrypt_payload(secret, manifest, payload)
        for entry in keys:
            try:
                address = _address_of(entry.secret)
            except ValueError:
                raise BackupRefused(f"recovery refused: the key for 0x{entry.address.hex()} is not a valid key") from None
            if address != entry.address:
                raise BackupRefused(f"recovery refused: the key for 0x{entry.address.hex()} has another address")
            if entry.address in self.keys:
                raise BackupRefused(f"recovery refused: account 0x{entry.address.hex()} is already in this enclave")
        master = self.state.master()
        records = []
        now = self.state.now()
        for entry in keys:
            self.keys.add_unsealed(entry.address, entry.secret, entry.origin, entry.exportable)
            records.append(seal(master, RecordMeta(entry.address, entry.origin, entry.exportable, now), entry.secret))
        with self._lock:
            self._recovery = None  # one-time: a later ceremony needs a new start (and a new document)
        return {"records": records, "manifest_id": mid, "sequence": manifest.sequence}


def _int(params: dict[str, Any], name: str) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidParams(f"{name}: expected a non-negative integer")
    return value


def _signer(message: bytes, signature: bytes) -> bytes | None:
    if len(signature) != 65:
        return None
    v = signature[64]
    recid = v - 27 if v in (27, 28) else v
    if recid not in (0, 1):
        return None
    try:
        return recover_address(text_hash(message), signature[:64] + bytes([recid]))
    except Exception:
        return None


def backup_handlers(state: EnclaveState, keys: KeyTable) -> dict[str, Handler]:
    return Backups(state, keys).handlers()
