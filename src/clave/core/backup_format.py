"""Backup formats (issue 14): the manifest, a share, a share sealed to a custodian or to a recovering
enclave, and the encrypted account payload. Pure: bytes and values in, bytes and values out; randomness
is injected wherever a format needs it.

One backup = one random backup master secret s (a secp256k1 scalar), split K-of-n (`core/shamir.py`) with
Feldman commitments (`core/feldman.py`). The selected account keys are encrypted with AES-256-GCM under
HKDF-SHA256(s). The manifest names everything a custodian or a recovering enclave needs to check:

    manifest (canonical CBOR map, version 1)
      sequence      int    the operator's backup number (a rotation gets a higher one)
      threshold     int    K
      custodians    [32-byte X25519 public keys]   custodian i holds share x = i + 1
      accounts      [20-byte addresses], sorted
      commitments   [33-byte compressed points]    C_0..C_{K-1}, C_0 = s·G
      pcr0          48 bytes   the enclave image a recovery must run (custodians refuse another)
      payload       32 bytes   SHA-256 of the encrypted payload
      created       int        unix seconds (informational)
      admin         20 bytes   the admin whose EIP-191 signature authorized the backup
      authorization 65 bytes   that signature, over backup_message(request_digest(...), challenge)
      challenge     32 bytes   the enclave-issued challenge it signed

    manifest id = SHA-256("clave/backup-manifest/v1" ‖ canonical CBOR of the manifest)

    share (plaintext, only ever inside HPKE):  CBOR {"v": 1, "manifest": id, "x": x, "y": 32 bytes}
    sealed share (JSON file): {"v": 1, "kind": "clave-backup-share", "manifest_id", "index", "recipient",
                               "purpose": "custodian" | "recovery", "ciphertext"}  (hex strings)

Sealing is HPKE base mode (RFC 9180) as `cryptography` provides it: DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, AES-256-GCM, with `info` = label ‖ purpose ‖ manifest id ‖ index, so a share sealed for one
backup, index or purpose does not open as another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clave.core.errors import RequestError
from clave.core.shamir import MAX_SHARES, ORDER, Share

RandomSource = Callable[[int], bytes]
VERSION = 1
MANIFEST_LABEL = b"clave/backup-manifest/v1"
REQUEST_LABEL = b"clave/backup-request/v1"
SHARE_LABEL = b"clave/backup-share/v1"
PAYLOAD_LABEL = b"clave/backup-payload/v1"
PURPOSES = ("custodian", "recovery")
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
MAX_ACCOUNTS = 200_000
ORIGINS = ("generated", "imported")


class BackupFormatError(RequestError):
    """A manifest, share or payload that is malformed, altered, or for another backup."""


# -- the request the admin authorizes, and the manifest ----------------------------------------------

def request_digest(sequence: int, threshold: int, custodians: Sequence[bytes], accounts: Sequence[bytes], pcr0: bytes) -> bytes:
    """What an admin's authorization covers: every choice the parent makes about a backup."""
    return hashlib.sha256(REQUEST_LABEL + cbor2.dumps(
        [sequence, threshold, list(custodians), sorted(accounts), pcr0], canonical=True)).digest()


def backup_message(digest: bytes, challenge: bytes) -> bytes:
    """The text an admin signs (EIP-191 personal message) to authorize one backup."""
    return f"clave: authorize backup 0x{digest.hex()} (challenge 0x{challenge.hex()})".encode()


@dataclass(frozen=True)
class Manifest:
    sequence: int
    threshold: int
    custodians: tuple[bytes, ...]
    accounts: tuple[bytes, ...]
    commitments: tuple[bytes, ...]
    pcr0: bytes
    payload: bytes
    created: int
    admin: bytes
    authorization: bytes
    challenge: bytes

    def encode(self) -> bytes:
        return cbor2.dumps({
            "v": VERSION, "sequence": self.sequence, "threshold": self.threshold,
            "custodians": list(self.custodians), "accounts": list(self.accounts),
            "commitments": list(self.commitments), "pcr0": self.pcr0, "payload": self.payload,
            "created": self.created, "admin": self.admin, "authorization": self.authorization,
            "challenge": self.challenge,
        }, canonical=True)

    @property
    def id(self) -> bytes:
        return hashlib.sha256(MANIFEST_LABEL + self.encode()).digest()

    @property
    def request_digest(self) -> bytes:
        return request_digest(self.sequence, self.threshold, self.custodians, self.accounts, self.pcr0)


def _byte_list(value: Any, name: str, size: int, limit: int) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, bytes) and len(v) == size for v in value):
        raise BackupFormatError(f"manifest: {name} must be a list of {size}-byte strings")
    return tuple(value)


def decode_manifest(data: bytes) -> Manifest:
    try:
        value = cbor2.loads(data)
    except Exception:
        raise BackupFormatError("manifest: not CBOR") from None
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise BackupFormatError("manifest: not a clave backup manifest (v 1)")
    ints: dict[str, Any] = {k: value.get(k) for k in ("sequence", "threshold", "created")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints.values()):
        raise BackupFormatError("manifest: sequence, threshold and created must be non-negative integers")
    custodians = _byte_list(value.get("custodians"), "custodians", 32, MAX_SHARES)
    accounts = _byte_list(value.get("accounts"), "accounts", 20, MAX_ACCOUNTS)
    commitments = _byte_list(value.get("commitments"), "commitments", 33, MAX_SHARES)
    fixed = {"pcr0": 48, "payload": 32, "admin": 20, "authorization": 65, "challenge": 32}
    for name, size in fixed.items():
        if not isinstance(value.get(name), bytes) or len(value[name]) != size:
            raise BackupFormatError(f"manifest: {name} must be {size} bytes")
    threshold = ints["threshold"]
    if not 1 <= threshold <= len(custodians) or len(commitments) != threshold:
        raise BackupFormatError("manifest: threshold must be 1..custodians and match the commitments")
    if list(accounts) != sorted(set(accounts)):
        raise BackupFormatError("manifest: accounts must be sorted and distinct")
    if len(set(custodians)) != len(custodians):
        raise BackupFormatError("manifest: a custodian is named twice")
    manifest = Manifest(ints["sequence"], threshold, custodians, accounts, commitments, value["pcr0"],
                        value["payload"], ints["created"], value["admin"], value["authorization"], value["challenge"])
    if manifest.encode() != data:
        raise BackupFormatError("manifest: not in canonical form")
    return manifest


# -- shares --------------------------------------------------------------------------------------

def encode_share(manifest_id: bytes, share: Share) -> bytes:
    return cbor2.dumps({"v": VERSION, "manifest": manifest_id, "x": share.x, "y": share.y.to_bytes(32, "big")},
                       canonical=True)


def decode_share(data: bytes, manifest_id: bytes) -> Share:
    """The share in `data`, which must belong to the manifest `manifest_id`."""
    try:
        value = cbor2.loads(data)
    except Exception:
        raise BackupFormatError("share: not CBOR") from None
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise BackupFormatError("share: not a clave backup share (v 1)")
    x, y = value.get("x"), value.get("y")
    if not isinstance(x, int) or not 1 <= x <= MAX_SHARES or not isinstance(y, bytes) or len(y) != 32:
        raise BackupFormatError("share: malformed")
    if value.get("manifest") != manifest_id:
        raise BackupFormatError(f"share {x} belongs to another backup (manifest id differs)")
    y_int = int.from_bytes(y, "big")
    if not 0 < y_int < ORDER:
        raise BackupFormatError(f"share {x}: value out of range")
    return Share(x, y_int)


def _info(purpose: str, manifest_id: bytes, index: int) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    return SHARE_LABEL + b"\x00" + purpose.encode() + b"\x00" + manifest_id + index.to_bytes(1, "big")


def public_key_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes_raw()


def seal_share(recipient: bytes, purpose: str, manifest_id: bytes, share: Share) -> dict[str, Any]:
    """The sealed-share document: `share` HPKE-encrypted to the raw X25519 key `recipient`."""
    try:
        public = X25519PublicKey.from_public_bytes(recipient)
    except ValueError:
        raise BackupFormatError("recipient: not a 32-byte X25519 public key") from None
    try:
        ciphertext = SUITE.encrypt(encode_share(manifest_id, share), public, info=_info(purpose, manifest_id, share.x))
    except ValueError:  # e.g. a low-order point: the shared secret would be all zeros
        raise BackupFormatError("recipient: not a usable X25519 public key") from None
    return {"v": VERSION, "kind": "clave-backup-share", "purpose": purpose, "manifest_id": manifest_id.hex(),
            "index": share.x, "recipient": recipient.hex(), "ciphertext": ciphertext.hex()}


@dataclass(frozen=True)
class SealedShare:
    purpose: str
    manifest_id: bytes
    index: int
    recipient: bytes
    ciphertext: bytes


def parse_sealed_share(value: Any) -> SealedShare:
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(value)
        except ValueError:
            raise BackupFormatError("sealed share: not JSON") from None
    if not isinstance(value, dict) or value.get("v") != VERSION or value.get("kind") != "clave-backup-share":
        raise BackupFormatError("sealed share: not a clave backup share document (v 1)")
    try:
        sealed = SealedShare(str(value["purpose"]), bytes.fromhex(value["manifest_id"]), int(value["index"]),
                             bytes.fromhex(value["recipient"]), bytes.fromhex(value["ciphertext"]))
    except (KeyError, TypeError, ValueError):
        raise BackupFormatError("sealed share: malformed") from None
    if sealed.purpose not in PURPOSES or len(sealed.manifest_id) != 32 or not 1 <= sealed.index <= MAX_SHARES:
        raise BackupFormatError("sealed share: malformed")
    return sealed


def open_share(private_key: X25519PrivateKey, sealed: SealedShare, manifest_id: bytes, purpose: str) -> Share:
    """The share inside `sealed`, checked to be share `sealed.index` of `manifest_id`."""
    if sealed.purpose != purpose:
        raise BackupFormatError(f"share {sealed.index} is sealed for {sealed.purpose}, not {purpose}")
    if sealed.manifest_id != manifest_id:
        raise BackupFormatError(f"share {sealed.index} belongs to another backup (manifest id differs)")
    if sealed.recipient != public_key_bytes(private_key):
        raise BackupFormatError(f"share {sealed.index} is sealed to another key")
    try:
        plain = SUITE.decrypt(sealed.ciphertext, private_key, info=_info(purpose, manifest_id, sealed.index))
    except (InvalidTag, ValueError):
        raise BackupFormatError(f"share {sealed.index} does not open (altered, or sealed to another key)") from None
    share = decode_share(plain, manifest_id)
    if share.x != sealed.index:
        raise BackupFormatError(f"share {sealed.index} carries index {share.x}")
    return share


# -- the encrypted account payload -------------------------------------------------------------------

@dataclass(frozen=True)
class BackedUpKey:
    address: bytes
    secret: bytes
    origin: str
    exportable: bool

    def __repr__(self) -> str:
        return f"BackedUpKey(address=0x{self.address.hex()})"


def payload_key(secret: int) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=PAYLOAD_LABEL).derive(secret.to_bytes(32, "big"))


def _payload_aad(sequence: int, accounts: Sequence[bytes]) -> bytes:
    return cbor2.dumps(["clave-backup-payload", VERSION, sequence, list(accounts)], canonical=True)


def encrypt_payload(secret: int, sequence: int, keys: Sequence[BackedUpKey], nonce: bytes) -> bytes:
    """nonce ‖ AES-256-GCM(HKDF(secret), [[address, key, origin, exportable] …]) with the sorted address
    list and the sequence as associated data. `keys` must be sorted by address."""
    if len(nonce) != 12:
        raise ValueError("nonce: 12 bytes")
    accounts = [k.address for k in keys]
    plain = cbor2.dumps([[k.address, k.secret, k.origin, k.exportable] for k in keys])
    return nonce + AESGCM(payload_key(secret)).encrypt(nonce, plain, _payload_aad(sequence, accounts))


def decrypt_payload(secret: int, manifest: Manifest, blob: bytes) -> list[BackedUpKey]:
    if hashlib.sha256(blob).digest() != manifest.payload:
        raise BackupFormatError("payload: does not match the manifest's hash")
    try:
        plain = AESGCM(payload_key(secret)).decrypt(blob[:12], blob[12:], _payload_aad(manifest.sequence, manifest.accounts))
    except (InvalidTag, ValueError):
        raise BackupFormatError("payload: does not open under the rebuilt secret") from None
    entries = cbor2.loads(plain)
    keys = []
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) != 4 or not isinstance(entry[0], bytes)
                or not isinstance(entry[1], bytes) or len(entry[1]) != 32 or entry[2] not in ORIGINS):
            raise BackupFormatError("payload: malformed entry")
        keys.append(BackedUpKey(entry[0], entry[1], entry[2], bool(entry[3])))
    if tuple(k.address for k in keys) != manifest.accounts:
        raise BackupFormatError("payload: accounts differ from the manifest's")
    return keys


def payload_hash(blob: bytes) -> bytes:
    return hashlib.sha256(blob).digest()
