"""The in-memory key table and key generation. Plaintext keys exist only here."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator

from coincurve import PrivateKey

from clave.core.errors import RequestError, UnknownAccount
from clave.core.eth.secp256k1 import SECP256K1_N, address_of

RandomSource = Callable[[int], bytes]


class LoadedKey:
    """One account's key. The libsecp256k1 context object is made on first use: unsealing 100,000
    records then costs one AES-GCM open each, not a scalar multiplication each (the address comes from
    the record, whose associated data the enclave itself authenticated)."""

    __slots__ = ("address", "origin", "exportable", "_secret", "_key")

    def __init__(self, address: bytes, secret: bytes, origin: str, exportable: bool, key: PrivateKey | None = None):
        self.address = address
        self.origin = origin
        self.exportable = exportable
        self._secret = secret
        self._key = key

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            self._key = PrivateKey(self._secret)
        return self._key

    @property
    def secret(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:  # never let a traceback or log line print the key
        return f"LoadedKey(address=0x{self.address.hex()}, origin={self.origin!r})"


def key_from_secret(secret: bytes) -> PrivateKey:
    scalar = int.from_bytes(secret, "big")
    if len(secret) != 32 or not 0 < scalar < SECP256K1_N:
        raise ValueError("private key out of range")
    return PrivateKey(secret)


def generate_secrets(hardware_random: RandomSource, count: int) -> list[bytes]:
    """Fresh secp256k1 scalars from the NSM source mixed with the kernel's.

    Hashing both together keeps each key uniform if either source alone is sound, so a weak or
    backdoored NSM cannot by itself decide the keys, nor can a weak kernel pool inside the VM. One NSM
    seed per batch (plus the kernel's 32 fresh bytes and a counter per key) keeps bulk generation from
    costing one NSM round trip per key.
    """
    seed = hardware_random(32)
    out: list[bytes] = []
    counter = 0
    while len(out) < count:
        counter += 1
        candidate = hashlib.sha256(
            b"clave-keygen\x00" + seed + counter.to_bytes(8, "big") + os.urandom(32)
        ).digest()
        if 0 < int.from_bytes(candidate, "big") < SECP256K1_N:
            out.append(candidate)
    return out


class KeyTable:
    """Addresses → loaded keys. Thread-safe for the signing worker threads."""

    def __init__(self) -> None:
        self._keys: dict[bytes, LoadedKey] = {}
        self._lock = threading.Lock()

    def add(self, secret: bytes, origin: str, exportable: bool) -> LoadedKey:
        """Add a key whose address is not known yet (generated or imported): derive it now."""
        key = key_from_secret(secret)
        loaded = LoadedKey(address_of(key.public_key), secret, origin, exportable, key)
        with self._lock:
            # A loaded key is never replaced: a second import must not change its origin or exportability
            # (a caller that reaches the enclave directly would otherwise make any key exportable).
            if loaded.address in self._keys:
                raise RequestError(f"account already exists: 0x{loaded.address.hex()}")
            self._keys[loaded.address] = loaded
        return loaded

    def add_unsealed(self, address: bytes, secret: bytes, origin: str, exportable: bool) -> LoadedKey:
        """Add a key from a record this enclave sealed: its address is authenticated by the AEAD."""
        if len(secret) != 32:
            raise ValueError("sealed secret must be 32 bytes")
        loaded = LoadedKey(address, secret, origin, exportable)
        with self._lock:
            self._keys[address] = loaded
        return loaded

    def get(self, address: bytes) -> LoadedKey:
        try:
            return self._keys[address]
        except KeyError:
            raise UnknownAccount() from None

    def __contains__(self, address: bytes) -> bool:
        return address in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[LoadedKey]:
        return iter(list(self._keys.values()))


def generate_secret(hardware_random: RandomSource) -> bytes:
    return generate_secrets(hardware_random, 1)[0]
