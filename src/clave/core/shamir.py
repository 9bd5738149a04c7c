"""Shamir secret sharing over the prime field of the secp256k1 group order. Pure: no I/O, randomness injected.

A secret is a scalar s in [1, N). `split` draws a polynomial f of degree K−1 with f(0) = s and every
coefficient in [1, N) (non-zero, so that each has a Feldman commitment, see `core/feldman.py`), and hands
out shares (x, f(x)) for x = 1..n. Any K distinct shares give s back by Lagrange interpolation at 0; K−1
shares are consistent with every secret (information-theoretic). The field arithmetic is Python ints
mod a prime: there is nothing to take from a library for it, and `pow(x, -1, N)` is the inverse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clave.core.eth.secp256k1 import SECP256K1_N

RandomSource = Callable[[int], bytes]
ORDER = SECP256K1_N
MAX_SHARES = 255  # x is one byte in the share format


class ShamirError(ValueError):
    """The shares or parameters do not make a valid split/combine."""


@dataclass(frozen=True)
class Share:
    x: int  # 1..MAX_SHARES
    y: int  # f(x) mod N

    def __repr__(self) -> str:  # never print a share value
        return f"Share(x={self.x})"


@dataclass(frozen=True)
class Split:
    coefficients: tuple[int, ...]  # a_0 = the secret, a_1..a_{K-1}; keep inside the enclave
    shares: tuple[Share, ...]

    def __repr__(self) -> str:
        return f"Split(threshold={len(self.coefficients)}, shares={len(self.shares)})"


def random_scalar(random: RandomSource) -> int:
    """A uniform scalar in [1, N), by rejection from 32-byte draws."""
    while True:
        value = int.from_bytes(random(32), "big")
        if 0 < value < ORDER:
            return value


def check_parameters(threshold: int, count: int) -> None:
    if not 1 <= count <= MAX_SHARES:
        raise ShamirError(f"number of shares must be 1..{MAX_SHARES}, not {count}")
    if not 1 <= threshold <= count:
        raise ShamirError(f"threshold must be 1..{count} (the number of shares), not {threshold}")


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """f(x) mod N by Horner's rule."""
    result = 0
    for a in reversed(coefficients):
        result = (result * x + a) % ORDER
    return result


def split(secret: int, threshold: int, count: int, random: RandomSource) -> Split:
    """Shares 1..count of `secret`, any `threshold` of which rebuild it."""
    check_parameters(threshold, count)
    if not 0 < secret < ORDER:
        raise ShamirError("secret must be a scalar in [1, N)")
    coefficients = (secret, *(random_scalar(random) for _ in range(threshold - 1)))
    return Split(coefficients, tuple(Share(x, evaluate(coefficients, x)) for x in range(1, count + 1)))


def combine(shares: Sequence[Share]) -> int:
    """f(0) from shares with distinct x (Lagrange interpolation at 0). With fewer than K shares the
    answer is a value unrelated to the secret: callers check it (Feldman's C_0, or an AEAD tag)."""
    if not shares:
        raise ShamirError("no shares")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise ShamirError("two shares have the same index")
    if any(not 0 < x < ORDER for x in xs):
        raise ShamirError("share index out of range")
    secret = 0
    for i, share in enumerate(shares):
        numerator, denominator = 1, 1
        for j, other in enumerate(shares):
            if i != j:
                numerator = numerator * other.x % ORDER
                denominator = denominator * (other.x - share.x) % ORDER
        secret = (secret + share.y * numerator * pow(denominator, -1, ORDER)) % ORDER
    return secret
