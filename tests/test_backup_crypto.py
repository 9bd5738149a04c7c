"""Backup crypto (issue 14), core only: Shamir split/combine over the secp256k1 order, Feldman commitments,
the share/manifest/payload formats and custodian key files. Property tests with hypothesis, plus the
share-format vectors in tests/data (made by scripts/backup_vectors.py) recomputed and checked against
independent arithmetic: Lagrange interpolation at 0 with plain Python ints, points with py_ecc."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.secp256k1 import secp256k1 as ecc

from clave.core import backup_format as bf
from clave.core import feldman, shamir
from clave.core.custodian import (
    CustodianKeyError,
    custodian_public,
    decrypt_custodian_key,
    encrypt_custodian_key,
)

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / "tests" / "data" / "backup_share_vectors.json").read_text())
N = ecc.N


def _random_from(seed: bytes) -> bf.RandomSource:
    import hashlib
    counter = itertools.count()
    return lambda n: b"".join(hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
                              for _ in range((n + 31) // 32))[:n]


params = st.integers(min_value=1, max_value=7).flatmap(
    lambda n: st.tuples(st.integers(min_value=1, max_value=n), st.just(n)))


@settings(max_examples=60, deadline=None)
@given(params, st.binary(min_size=8, max_size=8), st.data())
def test_any_k_of_n_rebuild_and_k_minus_1_do_not(kn: tuple[int, int], seed: bytes, data: st.DataObject) -> None:
    k, n = kn
    random = _random_from(seed)
    secret = shamir.random_scalar(random)
    split = shamir.split(secret, k, n, random)
    subset = data.draw(st.permutations(split.shares).map(lambda s: s[:k]))
    assert shamir.combine(subset) == secret
    if k > 1:
        fewer = subset[: k - 1]
        rebuilt = shamir.combine(fewer)
        assert rebuilt != secret
        commitments = feldman.commit(split.coefficients)
        assert not feldman.secret_matches(commitments, rebuilt)
        assert feldman.secret_matches(commitments, secret)


@settings(max_examples=40, deadline=None)
@given(params, st.binary(min_size=8, max_size=8), st.data())
def test_feldman_accepts_every_share_and_names_a_tampered_one(kn: tuple[int, int], seed: bytes,
                                                               data: st.DataObject) -> None:
    k, n = kn
    random = _random_from(seed)
    split = shamir.split(shamir.random_scalar(random), k, n, random)
    commitments = feldman.commit(split.coefficients)
    for share in split.shares:
        feldman.check_share(commitments, share)
    victim = data.draw(st.sampled_from(split.shares))
    encoded = bytearray(bf.encode_share(b"\x11" * 32, victim))
    # flip one byte of the 32-byte value (the last 32 bytes of the canonical CBOR are y)
    position = data.draw(st.integers(min_value=len(encoded) - 32, max_value=len(encoded) - 1))
    encoded[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        tampered = bf.decode_share(bytes(encoded), b"\x11" * 32)
    except bf.BackupFormatError:
        return  # out of range: refused by the format already
    with pytest.raises(feldman.FeldmanError, match=f"share {victim.x} does not match"):
        feldman.check_share(commitments, tampered)


def test_bad_parameters_and_duplicate_shares_are_refused() -> None:
    random = _random_from(b"params")
    with pytest.raises(shamir.ShamirError, match="threshold"):
        shamir.split(5, 4, 3, random)
    with pytest.raises(shamir.ShamirError, match="number of shares"):
        shamir.split(5, 1, 256, random)
    with pytest.raises(shamir.ShamirError, match="secret"):
        shamir.split(0, 1, 2, random)
    split = shamir.split(12345, 2, 3, random)
    with pytest.raises(shamir.ShamirError, match="same index"):
        shamir.combine([split.shares[0], split.shares[0]])
    assert "y=" not in repr(split.shares[0]) and str(split.shares[0].y) not in repr(split)


# -- vectors -----------------------------------------------------------------------------------

def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("backup_vectors", ROOT / "scripts" / "backup_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vector_file_is_what_the_generator_computes() -> None:
    fresh = _load_generator().build()
    assert VECTORS["field_order"] == fresh["field_order"]
    for stored, computed in zip(VECTORS["cases"], fresh["cases"], strict=True):
        stored, computed = dict(stored), dict(computed)
        stored.pop("sealed_share_1"), computed.pop("sealed_share_1")
        assert stored == computed


def _lagrange_at_zero(points: list[tuple[int, int]]) -> int:
    """Independent of core/shamir.py: the textbook formula with Fermat inverses."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = term * xj * pow(xj - xi, N - 2, N) % N
        total = (total + term) % N
    return total


def _compress(point: Any) -> bytes:
    x, y = point
    return bytes([2 + (y % 2)]) + x.to_bytes(32, "big")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors_hold_by_independent_arithmetic(case: dict[str, Any]) -> None:
    k = case["threshold"]
    secret = int(case["secret"], 16)
    coefficients = [int(a, 16) for a in case["coefficients"]]
    assert coefficients[0] == secret and len(coefficients) == k
    points = [(s["x"], int(s["y"], 16)) for s in case["shares"]]
    for x, y in points:  # each share is f(x), by direct power sum
        assert y == sum(a * pow(x, j, N) for j, a in enumerate(coefficients)) % N
    for subset in itertools.combinations(points, k):
        assert _lagrange_at_zero(list(subset)) == secret
    commitments = [bytes.fromhex(c) for c in case["commitments"]]
    for a, c in zip(coefficients, commitments, strict=True):  # C_j = a_j·G with py_ecc, not libsecp256k1
        assert _compress(ecc.multiply(ecc.G, a)) == c
    manifest = bf.decode_manifest(bytes.fromhex(case["manifest"]))
    assert manifest.id.hex() == case["manifest_id"] and list(manifest.commitments) == commitments
    for s in case["shares"]:
        share = bf.decode_share(bytes.fromhex(s["encoded"]), manifest.id)
        assert (share.x, share.y) == (s["x"], int(s["y"], 16))
        feldman.check_share(manifest.commitments, share)
    keys = bf.decrypt_payload(secret, manifest, bytes.fromhex(case["payload"]))
    assert [(k.address.hex(), k.secret.hex()) for k in keys] == [(k["address"], k["secret"]) for k in case["keys"]]
    custodian = X25519PrivateKey.from_private_bytes(bytes.fromhex(case["custodian_private_keys"][0]))
    sealed = bf.parse_sealed_share(case["sealed_share_1"])
    opened = bf.open_share(custodian, sealed, manifest.id, "custodian")
    assert (opened.x, opened.y) == points[0]


# -- formats: a share is bound to its manifest, index, purpose and recipient ----------------------

def test_sealed_share_is_bound_to_manifest_purpose_and_key() -> None:
    case = VECTORS["cases"][0]
    manifest = bf.decode_manifest(bytes.fromhex(case["manifest"]))
    custodian = X25519PrivateKey.from_private_bytes(bytes.fromhex(case["custodian_private_keys"][0]))
    other = X25519PrivateKey.from_private_bytes(bytes.fromhex(case["custodian_private_keys"][1]))
    sealed = bf.parse_sealed_share(case["sealed_share_1"])
    with pytest.raises(bf.BackupFormatError, match="another backup"):
        bf.open_share(custodian, sealed, b"\x00" * 32, "custodian")
    with pytest.raises(bf.BackupFormatError, match="sealed for custodian, not recovery"):
        bf.open_share(custodian, sealed, manifest.id, "recovery")
    with pytest.raises(bf.BackupFormatError, match="another key"):
        bf.open_share(other, sealed, manifest.id, "custodian")
    relabelled = dict(case["sealed_share_1"], index=2)  # claims to be share 2: HPKE info differs
    with pytest.raises(bf.BackupFormatError, match="share 2 does not open"):
        bf.open_share(custodian, bf.parse_sealed_share(relabelled), manifest.id, "custodian")
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 1
    altered = dict(case["sealed_share_1"], ciphertext=bytes(flipped).hex())
    with pytest.raises(bf.BackupFormatError, match="share 1 does not open"):
        bf.open_share(custodian, bf.parse_sealed_share(altered), manifest.id, "custodian")


def test_manifest_must_be_canonical_and_consistent() -> None:
    data = bytes.fromhex(VECTORS["cases"][0]["manifest"])
    manifest = bf.decode_manifest(data)
    assert bf.decode_manifest(manifest.encode()) == manifest
    with pytest.raises(bf.BackupFormatError):
        bf.decode_manifest(data[:-1])
    import cbor2
    value = cbor2.loads(data)
    value["threshold"] = 3  # commitments no longer match K
    with pytest.raises(bf.BackupFormatError, match="threshold"):
        bf.decode_manifest(cbor2.dumps(value, canonical=True))


def test_payload_does_not_open_under_another_secret_or_altered() -> None:
    case = VECTORS["cases"][0]
    manifest = bf.decode_manifest(bytes.fromhex(case["manifest"]))
    payload = bytes.fromhex(case["payload"])
    with pytest.raises(bf.BackupFormatError, match="does not open"):
        bf.decrypt_payload(int(case["secret"], 16) + 1, manifest, payload)
    with pytest.raises(bf.BackupFormatError, match="hash"):
        bf.decrypt_payload(int(case["secret"], 16), manifest, payload[:-1] + bytes([payload[-1] ^ 1]))


def test_custodian_key_file_round_trip_and_wrong_password() -> None:
    key = X25519PrivateKey.generate()
    document = encrypt_custodian_key(key, "correct horse", os.urandom, n=1 << 10)
    text = json.dumps(document)
    assert key.private_bytes_raw().hex() not in text and "correct horse" not in text
    assert custodian_public(document) == key.public_key().public_bytes_raw()
    assert decrypt_custodian_key(document, "correct horse").private_bytes_raw() == key.private_bytes_raw()
    with pytest.raises(CustodianKeyError, match="wrong password"):
        decrypt_custodian_key(document, "wrong")
    swapped = dict(document, public=X25519PrivateKey.generate().public_key().public_bytes_raw().hex())
    with pytest.raises(CustodianKeyError, match="wrong password"):
        decrypt_custodian_key(swapped, "correct horse")
