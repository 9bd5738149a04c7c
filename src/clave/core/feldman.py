"""Feldman verifiable secret sharing over secp256k1: commitments C_j = a_j·G to a Shamir polynomial's
coefficients (`core/shamir.py`), and the check y·G = Σ x^j·C_j that a share (x, y) lies on it.

The point arithmetic is libsecp256k1's, through coincurve (`PublicKey.from_secret`, `multiply`,
`combine_keys`); nothing here is hand-written curve code. Commitments are 33-byte compressed points.
A custodian who checks its share learns y·G and the C_j, which reveal nothing about the secret beyond
what discrete logarithms give away (the secret is a uniform 256-bit scalar). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from coincurve import PublicKey

from clave.core.shamir import ORDER, Share

POINT_SIZE = 33


class FeldmanError(ValueError):
    """Commitments that are not points, or a share that does not match them."""


def commit(coefficients: Sequence[int]) -> tuple[bytes, ...]:
    """C_j = a_j·G, compressed. Every coefficient must be in [1, N) (shamir.split draws them so)."""
    if any(not 0 < a < ORDER for a in coefficients):
        raise FeldmanError("a coefficient is out of [1, N)")
    return tuple(PublicKey.from_secret(a.to_bytes(32, "big")).format(compressed=True) for a in coefficients)


def parse_commitments(commitments: Sequence[bytes]) -> list[PublicKey]:
    points = []
    for index, c in enumerate(commitments):
        if not isinstance(c, bytes) or len(c) != POINT_SIZE:
            raise FeldmanError(f"commitment {index} is not a 33-byte compressed point")
        try:
            points.append(PublicKey(c))
        except Exception:
            raise FeldmanError(f"commitment {index} is not a point on secp256k1") from None
    if not points:
        raise FeldmanError("no commitments")
    return points


def expected_point(commitments: Sequence[bytes], x: int) -> bytes | None:
    """Σ x^j·C_j, compressed (None if the sum is the point at infinity)."""
    points = parse_commitments(commitments)
    terms = [point.multiply((pow(x, j, ORDER)).to_bytes(32, "big")) for j, point in enumerate(points)]
    try:
        return PublicKey.combine_keys(terms).format(compressed=True)
    except Exception:
        return None


def verify_share(commitments: Sequence[bytes], share: Share) -> bool:
    """Whether (x, y) lies on the committed polynomial."""
    if not 0 < share.x < ORDER or not 0 < share.y < ORDER:
        return False
    expected = expected_point(commitments, share.x)
    return expected is not None and PublicKey.from_secret(share.y.to_bytes(32, "big")).format(compressed=True) == expected


def check_share(commitments: Sequence[bytes], share: Share) -> None:
    """FeldmanError naming the share's index unless it matches the commitments."""
    if not verify_share(commitments, share):
        raise FeldmanError(f"share {share.x} does not match the backup's Feldman commitments (altered or for another backup)")


def secret_matches(commitments: Sequence[bytes], secret: int) -> bool:
    """Whether a rebuilt secret is the committed one (secret·G = C_0)."""
    if not 0 < secret < ORDER:
        return False
    return PublicKey.from_secret(secret.to_bytes(32, "big")).format(compressed=True) == parse_commitments(commitments)[0].format(compressed=True)
