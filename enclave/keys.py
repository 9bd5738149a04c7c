"""The in-memory key table and key generation. Plaintext keys exist only here."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from coincurve import PrivateKey

from .errors import UnknownAccount
from .signing import SECP256K1_N, address_of

RandomSource = Callable[[int], bytes]


@dataclass(frozen=True)
class LoadedKey:
    address: bytes
    key: PrivateKey
    origin: str
    exportable: bool

    def __repr__(self) -> str:  # never let a traceback or log line print the key
        return f"LoadedKey(address=0x{self.address.hex()}, origin={self.origin!r})"


def key_from_secret(secret: bytes) -> PrivateKey:
    scalar = int.from_bytes(secret, "big")
    if len(secret) != 32 or not 0 < scalar < SECP256K1_N:
        raise ValueError("private key out of range")
    return PrivateKey(secret)


def generate_secret(hardware_random: RandomSource) -> bytes:
    """A fresh secp256k1 scalar from the NSM source mixed with the kernel's.

    Hashing both together keeps the key uniform if either source alone is sound, so a weak or
    backdoored NSM source cannot by itself decide the key, nor can a weak kernel pool inside the VM.
    """
    while True:
        candidate = hashlib.sha256(b"clave-keygen\x00" + hardware_random(32) + os.urandom(32)).digest()
        if 0 < int.from_bytes(candidate, "big") < SECP256K1_N:
            return candidate


class KeyTable:
    """Addresses → loaded keys. Thread-safe for the signing worker threads."""

    def __init__(self) -> None:
        self._keys: dict[bytes, LoadedKey] = {}
        self._lock = threading.Lock()

    def add(self, secret: bytes, origin: str, exportable: bool) -> LoadedKey:
        key = key_from_secret(secret)
        loaded = LoadedKey(address_of(key.public_key), key, origin, exportable)
        with self._lock:
            self._keys[loaded.address] = loaded
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
