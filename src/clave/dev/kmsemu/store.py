"""Persistent state of the KMS emulator: keys (material, policy, metadata), aliases, ciphertext blobs.

Layout under datadir (directories 0700, files 0600, written atomically):
  keys/<uuid>.json   {"KeyId", "Arn", "Material" (base64, 32 B), "Policy", "Description", "CreationDate"}
  aliases.json       {"alias/name": "<uuid>"}
A ciphertext blob is self-contained, so nothing per blob is stored and blobs outlive restarts:
  0x01 ‖ key uuid (16 B) ‖ nonce (12 B) ‖ AES-256-GCM(material, plaintext)
with AAD = "clave-kmsemu" ‖ 0x01 ‖ key uuid ‖ canonical JSON of the encryption context, so a blob
cannot be opened under another key id or context (KMS's own format is opaque and undocumented).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clave.core.errors import RequestError
from clave.sidecar.secretfiles import write_private

BLOB_VERSION = 1
_AAD_TAG = b"clave-kmsemu"
_HEADER = 1 + 16 + 12


class KmsFault(RequestError):
    """A KMS error response: `type` becomes `__type` (the botocore error code)."""

    def __init__(self, type_: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.args = (f"{type_}: {message}",)
        self.type = type_
        self.status = status


@dataclass
class Key:
    key_id: str
    arn: str
    material: bytes
    policy: str
    description: str
    created: float

    def to_json(self) -> dict[str, Any]:
        return {
            "KeyId": self.key_id,
            "Arn": self.arn,
            "Material": base64.b64encode(self.material).decode(),
            "Policy": self.policy,
            "Description": self.description,
            "CreationDate": self.created,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Key:
        return cls(
            d["KeyId"],
            d["Arn"],
            base64.b64decode(d["Material"]),
            d["Policy"],
            d["Description"],
            d["CreationDate"],
        )


def default_policy(account: str) -> str:
    """What KMS attaches when CreateKey has no Policy: the account (and so IAM) may do everything."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
    )


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    return json.dumps(dict(context or {}), sort_keys=True, separators=(",", ":")).encode()


class KeyStore:
    def __init__(self, datadir: Path, *, region: str, account: str, clock: Callable[[], float]) -> None:
        self.region, self.account, self._clock = region, account, clock
        self._keys_dir = datadir / "keys"
        self._aliases_file = datadir / "aliases.json"
        self._keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(datadir, 0o700)
        self._keys: dict[str, Key] = {}
        for path in sorted(self._keys_dir.glob("*.json")):
            key = Key.from_json(json.loads(path.read_bytes()))
            self._keys[key.key_id] = key
        self._aliases: dict[str, str] = (
            json.loads(self._aliases_file.read_bytes()) if self._aliases_file.exists() else {}
        )

    # -- keys

    def create(self, *, description: str, policy: str | None) -> Key:
        key_id = str(uuid.uuid4())
        key = Key(
            key_id=key_id,
            arn=f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}",
            material=AESGCM.generate_key(bit_length=256),
            policy=policy if policy is not None else default_policy(self.account),
            description=description,
            created=self._clock(),
        )
        self._save(key)
        return key

    def set_policy(self, key: Key, policy: str) -> None:
        key.policy = policy
        self._save(key)

    def _save(self, key: Key) -> None:
        write_private(self._keys_dir / f"{key.key_id}.json", json.dumps(key.to_json()).encode(), replace=True)
        self._keys[key.key_id] = key

    def get(self, ref: str) -> Key:
        """Resolve a key id, key ARN, alias name or alias ARN, as KMS's KeyId parameter accepts."""
        key_id = ref
        prefix = f"arn:aws:kms:{self.region}:{self.account}:"
        if ref.startswith(prefix):
            key_id = ref[len(prefix) :]
            key_id = key_id.removeprefix("key/")
        if key_id.startswith("alias/"):
            target = self._aliases.get(key_id)
            if target is None:
                raise KmsFault("NotFoundException", f"Alias {prefix}{key_id} is not found.")
            key_id = target
        key = self._keys.get(key_id)
        if key is None:
            raise KmsFault("NotFoundException", f"Key '{prefix}key/{key_id}' does not exist")
        return key

    def create_alias(self, name: str, target: Key) -> None:
        if not name.startswith("alias/") or name.startswith("alias/aws/") or len(name) <= len("alias/"):
            raise KmsFault("ValidationException", f'Alias must start with the prefix "alias/": {name}')
        if name in self._aliases:
            raise KmsFault("AlreadyExistsException", f"An alias with the name {name} already exists")
        self._aliases[name] = target.key_id
        write_private(self._aliases_file, json.dumps(self._aliases).encode(), replace=True)

    # -- ciphertext blobs

    @staticmethod
    def _aad(key_uuid: bytes, context: Mapping[str, str] | None) -> bytes:
        return _AAD_TAG + bytes([BLOB_VERSION]) + key_uuid + canonical_context(context)

    def encrypt(self, key: Key, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
        key_uuid = uuid.UUID(key.key_id).bytes
        nonce = os.urandom(12)
        sealed = AESGCM(key.material).encrypt(nonce, plaintext, self._aad(key_uuid, context))
        return bytes([BLOB_VERSION]) + key_uuid + nonce + sealed

    def decrypt(
        self, blob: bytes, context: Mapping[str, str] | None, key_ref: str | None
    ) -> tuple[Key, bytes]:
        if len(blob) < _HEADER + 16 or blob[0] != BLOB_VERSION:
            raise KmsFault("InvalidCiphertextException", "The ciphertext is not a blob this KMS produced")
        key_uuid = blob[1:17]
        key = self._keys.get(str(uuid.UUID(bytes=key_uuid)))
        if key is None:
            raise KmsFault("InvalidCiphertextException", "The ciphertext refers to a key that does not exist")
        if key_ref is not None and self.get(key_ref).key_id != key.key_id:
            raise KmsFault(
                "IncorrectKeyException",
                "The key ID in the request does not identify a CMK that can perform this operation.",
            )
        try:
            plaintext = AESGCM(key.material).decrypt(blob[17:29], blob[29:], self._aad(key_uuid, context))
        except InvalidTag:
            raise KmsFault(
                "InvalidCiphertextException",
                "The ciphertext or its encryption context is corrupted, missing or otherwise invalid",
            ) from None
        return key, plaintext
