"""keccak256, the one hash every Ethereum encoding ends in.

safe-pysha3 (the C keccak that eth-hash also supports as a backend) costs about 1 µs per call against
about 5.5 µs for pycryptodome through `eth_hash.auto`; a signed transaction needs three of them on the
hot path. pycryptodome stays as the fallback where the wheel is unavailable. Both are checked against
each other by the tests.
"""

from __future__ import annotations

try:
    from sha3 import keccak_256 as _keccak_256

    def keccak256(data: bytes) -> bytes:
        return _keccak_256(data).digest()

except ImportError:  # pragma: no cover - exercised only where safe-pysha3 is missing
    from Crypto.Hash import keccak as _keccak

    def keccak256(data: bytes) -> bytes:
        return _keccak.new(digest_bits=256, data=data).digest()
