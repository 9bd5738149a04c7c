"""sidecar.attestation against a real production Nitro document and documents minted here.

The real document (eu-west-1, 2022) is verified with the clock fixed at its own timestamp against the
AWS Nitro Enclaves Root-G1, pinned by fingerprint. Everything the real document cannot exercise (debug
PCR0, tag 18, indefinite maps, each field check, each chain rule) uses a throwaway P-384 PKI built in
this file, signed exactly the way the NSM signs (COSE_Sign1, ES384, raw r||s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from clave.core.errors import RequestError
from clave.sidecar.trust.attestation import (
    AWS_NITRO_ROOT_G1_SHA256,
    AttestationDocument,
    AttestationError,
    PcrPolicy,
    describe,
    load_root,
    parse_attestation,
    verify_attestation,
)
from tests.vectors import vector


@pytest.fixture(scope="module")
def nitro_vectors() -> None:
    vector("nitro/aws_nitro_document.cbor")  # skipped when absent, a failure in CI (tests/vectors.py)


needs_vectors = pytest.mark.usefixtures("nitro_vectors")

# The real document: its timestamp, and the leaf certificate's validity window (2022-11-09T22:51:57Z to
# 2022-11-10T01:52:00Z), the narrowest in its chain.
REAL_TS = 1668034320696
LEAF_NOT_BEFORE_MS = 1668034317000
LEAF_NOT_AFTER_MS = 1668045120000
REAL_PCR0 = "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01"
REAL_NONCE = "c678c86135de539d183acff58886d98dfb9823041af9f934bf909ac0f8d96245"


@pytest.fixture(scope="module")
def real_doc() -> bytes:
    return vector("nitro/aws_nitro_document.cbor").read_bytes()


@pytest.fixture(scope="module")
def aws_root() -> x509.Certificate:
    return load_root(vector("nitro/aws_nitro_root_g1.pem").read_bytes(), fingerprint=AWS_NITRO_ROOT_G1_SHA256)


# --------------------------------------------------------------------------------------------------------
# Real document


@needs_vectors
def test_real_document_verifies_at_its_timestamp(real_doc: bytes, aws_root: x509.Certificate) -> None:
    doc = verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS)
    assert doc.module_id == "i-04fd167167daacf3b-enc01845e97d0b3eb4e"
    assert doc.digest == "SHA384" and doc.timestamp_ms == REAL_TS
    assert sorted(doc.pcrs) == list(range(16)) and all(len(v) == 48 for v in doc.pcrs.values())
    assert doc.pcrs[0].hex() == REAL_PCR0 and not any(doc.pcrs[3])
    assert doc.public_key is None and doc.user_data is not None and len(doc.user_data) == 32
    assert doc.nonce == bytes.fromhex(REAL_NONCE)
    assert len(doc.cabundle) == 4 and doc.cabundle[0] == aws_root.public_bytes(Encoding.DER)
    assert doc.payload in real_doc


@needs_vectors
def test_real_document_validity_edges(real_doc: bytes, aws_root: x509.Certificate) -> None:
    # not_after is inclusive (RFC 5280); one millisecond later the leaf has expired.
    verify_attestation(real_doc, root=aws_root, now_ms=LEAF_NOT_AFTER_MS)
    with pytest.raises(AttestationError, match=r"certificate \(leaf\) is not valid at"):
        verify_attestation(real_doc, root=aws_root, now_ms=LEAF_NOT_AFTER_MS + 1)
    with pytest.raises(AttestationError, match=r"certificate \(leaf\) is not valid at"):
        verify_attestation(real_doc, root=aws_root, now_ms=LEAF_NOT_BEFORE_MS - 1)
    with pytest.raises(AttestationError, match="not valid at"):
        verify_attestation(real_doc, root=aws_root, now_ms=1_780_000_000_000)  # 2026


@needs_vectors
def test_real_document_with_bad_signature_fails(aws_root: x509.Certificate) -> None:
    bad = vector("nitro/aws_nitro_document_bad_sig.cbor").read_bytes()
    parse_attestation(bad)  # well-formed: only the signature is wrong
    with pytest.raises(AttestationError, match="COSE signature does not verify"):
        verify_attestation(bad, root=aws_root, now_ms=REAL_TS)


@needs_vectors
def test_real_document_fails_against_another_root(real_doc: bytes) -> None:
    other = make_pki().root
    with pytest.raises(AttestationError, match=r"cabundle\[0\] is not the pinned root"):
        verify_attestation(real_doc, root=other, now_ms=REAL_TS)


@needs_vectors
def test_load_root_pins_by_fingerprint() -> None:
    pem = vector("nitro/aws_nitro_root_g1.pem").read_bytes()
    root = load_root(pem)
    der = root.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_NITRO_ROOT_G1_SHA256
    colons = ":".join(f"{b:02X}" for b in bytes.fromhex(AWS_NITRO_ROOT_G1_SHA256))
    assert load_root(der, fingerprint=colons) == root  # DER, and the openssl fingerprint spelling
    with pytest.raises(AttestationError, match="SHA-256"):
        load_root(pem, fingerprint="00" * 32)
    other = make_pki().root.public_bytes(Encoding.PEM)
    with pytest.raises(AttestationError, match="pinned"):
        load_root(other, fingerprint=AWS_NITRO_ROOT_G1_SHA256)
    with pytest.raises(AttestationError, match="cannot be parsed"):
        load_root(b"not a certificate")
    with pytest.raises(AttestationError, match="holds 2 certificates"):
        load_root(pem + other)


@needs_vectors
def test_real_document_nonce(real_doc: bytes, aws_root: x509.Certificate) -> None:
    verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS, expected_nonce=bytes.fromhex(REAL_NONCE))
    with pytest.raises(AttestationError, match="nonce does not match"):
        verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS, expected_nonce=b"\x00" * 32)


@needs_vectors
def test_real_document_pcr_policy(real_doc: bytes, aws_root: x509.Certificate) -> None:
    good = PcrPolicy(expected={0: bytes.fromhex(REAL_PCR0), 3: bytes(48)})
    verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS, pcr_policy=good)
    bad = PcrPolicy(expected={0: bytes.fromhex(REAL_PCR0), 1: bytes(48)})
    with pytest.raises(AttestationError, match="PCR1 mismatch"):
        verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS, pcr_policy=bad)
    absent = PcrPolicy(expected={20: bytes(48)})
    with pytest.raises(AttestationError, match="PCR20 is missing"):
        verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS, pcr_policy=absent)


@needs_vectors
def test_real_document_freshness(real_doc: bytes, aws_root: x509.Certificate) -> None:
    verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS + 5000, max_age_ms=5000)
    with pytest.raises(AttestationError, match="older than 5000 ms"):
        verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS + 5001, max_age_ms=5000)


@needs_vectors
def test_real_document_tagged_18_verifies(real_doc: bytes, aws_root: x509.Certificate) -> None:
    # Tag 18 wraps the COSE_Sign1 but is not part of what is signed.
    assert real_doc[0] == 0x84
    verify_attestation(b"\xd2" + real_doc, root=aws_root, now_ms=REAL_TS)
    with pytest.raises(AttestationError, match="unexpected CBOR tag 19"):
        verify_attestation(b"\xd3" + real_doc, root=aws_root, now_ms=REAL_TS)


@needs_vectors
def test_real_document_describe(real_doc: bytes, aws_root: x509.Certificate) -> None:
    summary = describe(verify_attestation(real_doc, root=aws_root, now_ms=REAL_TS))
    assert summary["pcrs"][0] == REAL_PCR0 and len(summary["pcrs"]) == 16
    assert summary["timestamp"] == "2022-11-09T22:52:00.696000Z"
    assert summary["public_key"] is None and summary["nonce"] == REAL_NONCE


@needs_vectors
@pytest.mark.slow  # in-process, but about 7 s per mask on a 2-core machine: not for the fast tier
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("mask", [0x01, 0xFF])
def test_every_single_byte_flip_of_real_document_fails(
    real_doc: bytes, aws_root: x509.Certificate, mask: int
) -> None:
    """Every position, exhaustively (about 5 s per mask): no flipped document verifies, and the only
    exception is AttestationError (flips inside certificates reach cryptography's parser)."""
    accepted = []
    for position in range(len(real_doc)):
        mutated = bytearray(real_doc)
        mutated[position] ^= mask
        try:
            verify_attestation(bytes(mutated), root=aws_root, now_ms=REAL_TS)
        except AttestationError:
            continue
        accepted.append(position)
    assert accepted == []


# --------------------------------------------------------------------------------------------------------
# A throwaway Nitro-like PKI: root -> regional -> instance -> leaf, P-384, ECDSA-SHA384

NOW_MS = 1_700_000_000_000
NOW = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=NOW_MS)
NONCE = bytes(range(32))
GOOD_PCRS = {i: (bytes([i + 1]) * 48 if i < 3 else bytes(48)) for i in range(16)}


@dataclass
class Pki:
    root: x509.Certificate
    cabundle: list[bytes]  # DER, root first
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, sign: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    path_length: int | None = None,
    not_before: datetime = NOW - timedelta(hours=1),
    not_after: datetime = NOW + timedelta(hours=3),
    basic_constraints: bool | None = True,  # None: omit; False: present but not critical
    key_usage: x509.KeyUsage | None = None,
    extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if basic_constraints is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=basic_constraints
        )
    usage = key_usage if key_usage is not None else _key_usage(sign=not ca, cert_sign=ca)
    builder = builder.add_extension(usage, critical=True)
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    return builder.sign(issuer_key, hashes.SHA384())


def p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def make_pki(**leaf_options: Any) -> Pki:
    """Root -> regional (pathlen 1) -> instance (pathlen 0) -> leaf, like AWS's (shorter by one level)."""
    root_key, regional_key, instance_key = p384(), p384(), p384()
    leaf_key = leaf_options.pop("leaf_key", None) or p384()
    root = make_cert("test.nitro-enclaves", root_key, None, ca=True)
    regional = make_cert("regional", regional_key, (root.subject, root_key), ca=True, path_length=1)
    instance = make_cert("instance", instance_key, (regional.subject, regional_key), ca=True, path_length=0)
    leaf = make_cert("leaf", leaf_key, (instance.subject, instance_key), ca=False, **leaf_options)
    der = [c.public_bytes(Encoding.DER) for c in (root, regional, instance)]
    return Pki(root=root, cabundle=der, leaf=leaf, leaf_key=leaf_key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


DROP = object()  # field value meaning "leave the key out"


def default_fields(pki: Pki) -> dict[str, Any]:
    return {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "digest": "SHA384",
        "timestamp": NOW_MS,
        "pcrs": dict(GOOD_PCRS),
        "certificate": pki.leaf.public_bytes(Encoding.DER),
        "cabundle": list(pki.cabundle),
        "public_key": None,
        "user_data": None,
        "nonce": NONCE,
    }


def encode_map(fields: dict[Any, Any], *, indefinite: bool) -> bytes:
    if not indefinite:
        return cbor2.dumps(fields)
    return b"\xbf" + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields.items()) + b"\xff"


def es384(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def mint(
    pki: Pki,
    *,
    indefinite: bool = False,
    tagged: bool = False,
    protected: bytes = b"\xa1\x01\x38\x22",
    unprotected: bytes = b"\xa0",
    payload: bytes | None = None,
    signature: Callable[[bytes], bytes] | None = None,
    trailer: bytes = b"",
    **overrides: Any,
) -> bytes:
    """Signs a document the way the NSM does; `overrides` replace payload fields (DROP removes one)."""
    fields = default_fields(pki)
    for key, value in overrides.items():
        if value is DROP:
            del fields[key]
        else:
            fields[key] = value
    if payload is None:
        payload = encode_map(fields, indefinite=indefinite)
    # Sig_structure encoded by cbor2, independently of the verifier's own encoder.
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    sig = signature(to_sign) if signature else es384(pki.leaf_key, to_sign)
    body = b"\x84" + cbor2.dumps(protected) + unprotected + cbor2.dumps(payload) + cbor2.dumps(sig)
    return (b"\xd2" if tagged else b"") + body + trailer


def verify(document: bytes, pki: Pki, **kwargs: Any) -> AttestationDocument:
    kwargs.setdefault("now_ms", NOW_MS)
    return verify_attestation(document, root=pki.root, **kwargs)


# --------------------------------------------------------------------------------------------------------
# Synthetic documents: envelope forms


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tag18"])
@pytest.mark.parametrize("indefinite", [False, True], ids=["definite", "indefinite"])
def test_synthetic_document_verifies(pki: Pki, tagged: bool, indefinite: bool) -> None:
    document = mint(pki, tagged=tagged, indefinite=indefinite)
    assert document[:1] == (b"\xd2" if tagged else b"\x84")
    assert (b"\xbf" in document[:16]) == indefinite
    doc = verify(
        document, pki, expected_nonce=NONCE, max_age_ms=1000, pcr_policy=PcrPolicy({0: GOOD_PCRS[0]})
    )
    assert doc.pcrs == GOOD_PCRS and doc.nonce == NONCE and doc.cabundle == pki.cabundle


def test_indefinite_arrays_and_strings_decode(pki: Pki) -> None:
    fields = default_fields(pki)
    cabundle = b"\x9f" + b"".join(cbor2.dumps(c) for c in fields["cabundle"]) + b"\xff"
    module_id = b"\x7f" + cbor2.dumps("i-0123") + cbor2.dumps("-enc0456") + b"\xff"
    nonce = b"\x5f" + cbor2.dumps(NONCE[:10]) + cbor2.dumps(NONCE[10:]) + b"\xff"
    parts = {k: cbor2.dumps(v) for k, v in fields.items()}
    parts.update(cabundle=cabundle, module_id=module_id, nonce=nonce)
    payload = b"\xbf" + b"".join(cbor2.dumps(k) + v for k, v in parts.items()) + b"\xff"
    doc = verify(mint(pki, payload=payload), pki, expected_nonce=NONCE)
    assert doc.module_id == "i-0123-enc0456" and doc.cabundle == pki.cabundle


@pytest.mark.parametrize("absent", [None, b"", DROP], ids=["null", "empty", "missing"])
def test_null_empty_or_missing_optional_fields_mean_absent(pki: Pki, absent: object) -> None:
    doc = verify(mint(pki, public_key=absent, user_data=absent, nonce=absent), pki)
    assert (doc.public_key, doc.user_data, doc.nonce) == (None, None, None)
    with pytest.raises(AttestationError, match="nonce does not match"):
        verify(mint(pki, nonce=absent), pki, expected_nonce=NONCE)


def test_largest_optional_fields_are_accepted(pki: Pki) -> None:
    big = b"\x07" * 1024
    doc = verify(mint(pki, public_key=big, user_data=big, nonce=big), pki)
    assert doc.public_key == doc.user_data == doc.nonce == big


# --------------------------------------------------------------------------------------------------------
# Synthetic documents: PCR policy, nonce, freshness


def test_debug_pcr0_refused_unless_allowed(pki: Pki) -> None:
    debug = mint(pki, pcrs={**GOOD_PCRS, 0: bytes(48), 1: bytes(48), 2: bytes(48)})
    with pytest.raises(AttestationError, match="debug-mode"):
        verify(debug, pki)  # no policy given: the default policy refuses debug too
    with pytest.raises(AttestationError, match="debug-mode"):
        verify(debug, pki, pcr_policy=PcrPolicy())
    doc = verify(debug, pki, pcr_policy=PcrPolicy(allow_debug=True))
    assert not any(doc.pcrs[0])
    with pytest.raises(AttestationError, match="PCR0 mismatch"):
        verify(debug, pki, pcr_policy=PcrPolicy({0: GOOD_PCRS[0]}, allow_debug=True))


def test_missing_pcr0_is_refused(pki: Pki) -> None:
    without_pcr0 = {i: v for i, v in GOOD_PCRS.items() if i != 0}
    with pytest.raises(AttestationError, match="PCR0 is missing"):
        verify(mint(pki, pcrs=without_pcr0), pki, pcr_policy=PcrPolicy(allow_debug=True))


def test_pcr_policy_mismatch(pki: Pki) -> None:
    document = mint(pki)
    verify(document, pki, pcr_policy=PcrPolicy({1: GOOD_PCRS[1], 2: GOOD_PCRS[2]}))
    with pytest.raises(AttestationError, match="PCR2 mismatch"):
        verify(document, pki, pcr_policy=PcrPolicy({1: GOOD_PCRS[1], 2: GOOD_PCRS[1]}))


def test_pcr_policy_is_validated_and_copied() -> None:
    with pytest.raises(ValueError):
        PcrPolicy({32: bytes(48)})
    with pytest.raises(ValueError):
        PcrPolicy({0: bytes(47)})
    with pytest.raises(ValueError):
        PcrPolicy({True: bytes(48)})
    expected = {0: GOOD_PCRS[0]}
    policy = PcrPolicy(expected)
    expected[0] = bytes(48)  # mutating the caller's dict must not change the policy
    policy.check(GOOD_PCRS)


def test_nonce_mismatch(pki: Pki) -> None:
    document = mint(pki)
    with pytest.raises(AttestationError, match="nonce does not match"):
        verify(document, pki, expected_nonce=NONCE[:-1] + b"\x00")
    with pytest.raises(AttestationError, match="nonce does not match"):
        verify(document, pki, expected_nonce=NONCE + b"\x00")
    with pytest.raises(ValueError):
        verify(document, pki, expected_nonce=b"")


def test_freshness(pki: Pki) -> None:
    verify(mint(pki, timestamp=NOW_MS - 60_000), pki, max_age_ms=60_000)
    with pytest.raises(AttestationError, match="older than"):
        verify(mint(pki, timestamp=NOW_MS - 60_001), pki, max_age_ms=60_000)
    verify(mint(pki, timestamp=NOW_MS + 60_000), pki)  # within the clock skew
    with pytest.raises(AttestationError, match="in the future"):
        verify(mint(pki, timestamp=NOW_MS + 60_001), pki)


def test_now_ms_must_be_an_int(pki: Pki) -> None:
    for bad in (float(NOW_MS), True, -1):
        with pytest.raises(ValueError):
            verify(mint(pki), pki, now_ms=bad)


# --------------------------------------------------------------------------------------------------------
# Synthetic documents: syntactic checks (each document is validly signed, so only the named check fails)


# name -> (document built from a PKI, expected message). Built lazily: only the names are needed to collect.
FIELD_CASES: dict[str, tuple[Callable[[Pki], bytes], str]] = {
    "module-id-empty": (lambda p: mint(p, module_id=""), "module_id"),
    "module-id-bytes": (lambda p: mint(p, module_id=b"i-1"), "module_id"),
    "digest-sha256": (lambda p: mint(p, digest="SHA256"), "digest is 'SHA256'"),
    "timestamp-zero": (lambda p: mint(p, timestamp=0), "timestamp"),
    "timestamp-negative": (lambda p: mint(p, timestamp=-5), "timestamp"),
    "timestamp-text": (lambda p: mint(p, timestamp=str(NOW_MS)), "timestamp"),
    "timestamp-float": (lambda p: mint(p, timestamp=float(NOW_MS)), "float"),
    "timestamp-bool": (lambda p: mint(p, timestamp=True), "float"),
    "pcrs-empty": (lambda p: mint(p, pcrs={}), "pcrs is not a map of 1..32"),
    "pcrs-33": (lambda p: mint(p, pcrs={i: bytes(48) for i in range(33)}), "pcrs is not a map of 1..32"),
    "pcr-index-32": (lambda p: mint(p, pcrs={**GOOD_PCRS, 32: bytes(48)}), "PCR index 32"),
    "pcr-index-negative": (lambda p: mint(p, pcrs={**GOOD_PCRS, -1: bytes(48)}), "PCR index -1"),
    "pcr-index-text": (lambda p: mint(p, pcrs={**GOOD_PCRS, "1": bytes(48)}), "PCR index '1'"),
    "pcr-47-bytes": (lambda p: mint(p, pcrs={**GOOD_PCRS, 5: bytes(47)}), "PCR5 is not a byte string"),
    "pcr-text": (lambda p: mint(p, pcrs={**GOOD_PCRS, 5: "00" * 48}), "PCR5"),
    "pcrs-list": (lambda p: mint(p, pcrs=[bytes(48)]), "pcrs is not a map"),
    "certificate-empty": (lambda p: mint(p, certificate=b""), "certificate is not a byte string"),
    "certificate-1025": (lambda p: mint(p, certificate=b"\x30" * 1025), "certificate is not a byte string"),
    "cabundle-empty": (lambda p: mint(p, cabundle=[]), "cabundle is not a non-empty array"),
    "cabundle-bytes": (lambda p: mint(p, cabundle=p.cabundle[0]), "cabundle is not a non-empty array"),
    "cabundle-entry-empty": (lambda p: mint(p, cabundle=[*p.cabundle, b""]), r"cabundle\[3\]"),
    "cabundle-entry-text": (lambda p: mint(p, cabundle=["x"]), r"cabundle\[0\]"),
    "public-key-1025": (lambda p: mint(p, public_key=b"k" * 1025), "public_key"),
    "user-data-1025": (lambda p: mint(p, user_data=b"u" * 1025), "user_data"),
    "nonce-1025": (lambda p: mint(p, nonce=b"n" * 1025), "nonce is not null"),
    "nonce-text": (lambda p: mint(p, nonce="abc"), "nonce is not null"),
    "missing-module-id": (lambda p: mint(p, module_id=DROP), "'module_id' is missing"),
    "missing-digest": (lambda p: mint(p, digest=DROP), "'digest' is missing"),
    "missing-timestamp": (lambda p: mint(p, timestamp=DROP), "'timestamp' is missing"),
    "missing-pcrs": (lambda p: mint(p, pcrs=DROP), "'pcrs' is missing"),
    "missing-certificate": (lambda p: mint(p, certificate=DROP), "'certificate' is missing"),
    "missing-cabundle": (lambda p: mint(p, cabundle=DROP), "'cabundle' is missing"),
    "unknown-field": (lambda p: mint(p, extra=b""), "unknown payload field 'extra'"),
    "duplicate-field": (
        lambda p: mint(
            p,
            payload=encode_map(default_fields(p), indefinite=True)[:-1]
            + cbor2.dumps("nonce")
            + cbor2.dumps(b"x")
            + b"\xff",
        ),
        "duplicate map key 'nonce'",
    ),
    "payload-not-map": (lambda p: mint(p, payload=cbor2.dumps([1, 2])), "payload is not a CBOR map"),
    "payload-trailing": (
        lambda p: mint(p, payload=cbor2.dumps(default_fields(p)) + b"\x00"),
        "payload: 1 trailing bytes",
    ),
    "payload-tag": (
        lambda p: mint(p, payload=cbor2.dumps(default_fields(p)).replace(b"\xa9", b"\xc1\xa9", 1)),
        "tag 1",
    ),
    "payload-empty": (lambda p: mint(p, payload=b""), "payload is not a byte string of 1..16384"),
    "payload-16385": (lambda p: mint(p, payload=b"\x00" * 16385), "payload is not a byte string of 1..16384"),
    "protected-es256": (lambda p: mint(p, protected=b"\xa1\x01\x26"), r"protected header is not \{1: -35\}"),
    "protected-extra": (
        lambda p: mint(p, protected=b"\xa2\x01\x38\x22\x04\x41\x00"),
        "protected header is not",
    ),
    "protected-empty": (lambda p: mint(p, protected=b""), "protected header: truncated"),
    "protected-float": (lambda p: mint(p, protected=b"\xa1\xf9\x3c\x00\x38\x22"), "float"),
    "unprotected-kid": (lambda p: mint(p, unprotected=b"\xa1\x04\x41\x00"), "unprotected header"),
    "unprotected-list": (lambda p: mint(p, unprotected=b"\x80"), "unprotected header"),
    "signature-64": (lambda p: mint(p, signature=lambda data: es384(p.leaf_key, data)[:64]), "not 96 bytes"),
    "signature-der": (
        lambda p: mint(p, signature=lambda data: p.leaf_key.sign(data, ec.ECDSA(hashes.SHA384()))),
        "not 96 bytes",
    ),
    "document-trailing": (lambda p: mint(p, trailer=b"\x00"), "COSE_Sign1: 1 trailing bytes"),
    "document-tag-twice": (lambda p: b"\xd2" + mint(p, tagged=True), "tag 18"),
}


@pytest.mark.parametrize("name", sorted(FIELD_CASES))
def test_field_checks(pki: Pki, name: str) -> None:
    build, message = FIELD_CASES[name]
    document = build(pki)
    with pytest.raises(AttestationError, match=message) as excinfo:
        verify(document, pki)
    assert isinstance(excinfo.value, RequestError)


@pytest.mark.parametrize(
    "document,message",
    [
        (b"", "document size"),
        (b"\x83\x40\xa0\x40", "not an array of 4"),
        (b"\x85" + b"\x40" * 5, "not an array of 4"),
        (b"\xa0", "not an array of 4"),
        (b"\x84", "truncated"),
        (b"\x84\x5b" + b"\xff" * 8, "truncated"),
        (b"\x9f" * 50, "nested too deeply"),
        (b"\x84\x1c", "malformed CBOR head"),
        (b"\x84\xff", "unexpected CBOR break"),
        (b"\x84\x7a\x00\x00\x00\x02\xc3\x28", "not UTF-8"),
        (b"\x84\x5f\x60\xff", "bad chunk"),
        (b"\x81\xa1\x80\x00", "unsupported CBOR map key"),
    ],
)
def test_malformed_cbor(document: bytes, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        parse_attestation(document)


def test_non_bytes_document_is_refused() -> None:
    with pytest.raises(AttestationError, match="must be bytes"):
        parse_attestation("84")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Synthetic documents: certificate chain rules


def test_cabundle_must_start_with_the_pinned_root(pki: Pki) -> None:
    without_root = mint(pki, cabundle=pki.cabundle[1:])
    with pytest.raises(AttestationError, match=r"cabundle\[0\] is not the pinned root"):
        verify(without_root, pki)


def test_cabundle_out_of_order_fails(pki: Pki) -> None:
    swapped = mint(pki, cabundle=[pki.cabundle[0], pki.cabundle[2], pki.cabundle[1]])
    with pytest.raises(AttestationError, match=r"cabundle\[1\] is not signed by root"):
        verify(swapped, pki)


def test_leaf_signed_by_a_foreign_intermediate_fails(pki: Pki) -> None:
    stranger = make_pki()  # its instance CA is not in our chain
    forged = Pki(pki.root, pki.cabundle, stranger.leaf, stranger.leaf_key)
    with pytest.raises(AttestationError, match=r"certificate \(leaf\) is not signed by cabundle\[2\]"):
        verify(mint(forged), forged)


def test_document_signed_by_another_key_fails(pki: Pki) -> None:
    other_key = p384()
    document = mint(pki, signature=lambda data: es384(other_key, data))
    with pytest.raises(AttestationError, match="COSE signature does not verify"):
        verify(document, pki)


def test_expired_or_not_yet_valid_leaf(pki: Pki) -> None:
    late = make_pki(not_after=NOW - timedelta(milliseconds=1))
    with pytest.raises(AttestationError, match=r"certificate \(leaf\) is not valid at"):
        verify(mint(late), late)
    early = make_pki(not_before=NOW + timedelta(seconds=1))
    with pytest.raises(AttestationError, match=r"certificate \(leaf\) is not valid at"):
        verify(mint(early), early)


def test_root_must_be_valid_now(pki: Pki) -> None:
    with pytest.raises(AttestationError, match="root is not valid at"):
        verify(mint(pki), pki, now_ms=NOW_MS + 4 * 3600 * 1000)


def _chain(
    *,
    regional: dict[str, Any] | None = None,
    instance: dict[str, Any] | None = None,
    leaf: dict[str, Any] | None = None,
    leaf_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[Pki, bytes]:
    """A PKI whose certificates take the given make_cert options, and a document signed by its leaf."""
    root_key, regional_key, instance_key = p384(), p384(), p384()
    leaf_key = leaf_key or p384()
    root = make_cert("root", root_key, None, ca=True)
    reg = make_cert(
        "regional",
        regional_key,
        (root.subject, root_key),
        **{"ca": True, "path_length": 1, **(regional or {})},
    )
    inst = make_cert(
        "instance",
        instance_key,
        (reg.subject, regional_key),
        **{"ca": True, "path_length": 0, **(instance or {})},
    )
    lf = make_cert("leaf", leaf_key, (inst.subject, instance_key), **{"ca": False, **(leaf or {})})
    built = Pki(root, [c.public_bytes(Encoding.DER) for c in (root, reg, inst)], lf, leaf_key)
    return built, mint(built)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"regional": {"ca": False}}, r"cabundle\[1\] is not a CA"),
        ({"regional": {"basic_constraints": None}}, r"cabundle\[1\] is not a CA"),
        ({"regional": {"basic_constraints": False}}, r"cabundle\[1\] is not a CA"),
        ({"regional": {"path_length": 0}}, r"cabundle\[1\] path length 0 exceeded"),
        ({"instance": {"key_usage": _key_usage(sign=True, cert_sign=False)}}, "lacks keyCertSign"),
        ({"leaf": {"ca": True}}, r"certificate \(leaf\) is a CA"),
        ({"leaf": {"key_usage": _key_usage(sign=False, cert_sign=False)}}, "lacks digitalSignature"),
        ({"leaf": {"extra": x509.OCSPNoCheck()}}, "unsupported critical extension 1.3.6.1.5.5.7.48.1.5"),
        ({"leaf_key": ec.generate_private_key(ec.SECP256R1())}, "not a P-384 key"),
    ],
    ids=[
        "intermediate-not-ca",
        "intermediate-no-basic-constraints",
        "intermediate-basic-constraints-not-critical",
        "path-length",
        "intermediate-no-cert-sign",
        "leaf-is-ca",
        "leaf-no-digital-signature",
        "unknown-critical-extension",
        "leaf-p256",
    ],
)
def test_chain_rules(options: dict[str, Any], message: str) -> None:
    built, document = _chain(**options)
    with pytest.raises(AttestationError, match=message):
        verify(document, built)


def test_chain_rules_baseline() -> None:
    built, document = _chain()
    assert verify(document, built).certificate == built.leaf.public_bytes(Encoding.DER)


# --------------------------------------------------------------------------------------------------------
# Fuzzing


FUZZ_PKI = make_pki()
FUZZ_SEED = mint(FUZZ_PKI, indefinite=True)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_documents_raise_only_attestation_error(data: st.DataObject) -> None:
    document = bytearray(FUZZ_SEED)
    for _ in range(data.draw(st.integers(1, 3))):
        if not document:
            break  # mutated down to nothing: the empty document is still checked below
        position = data.draw(st.integers(0, len(document) - 1))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip":
            document[position] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            document[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del document[position : position + data.draw(st.integers(1, 4))]
        else:
            del document[max(position, 1) :]
    try:
        verify_attestation(bytes(document), root=FUZZ_PKI.root, now_ms=NOW_MS)
    except AttestationError:
        return
    # Only mutations that cancel out, or add the COSE tag (which is not signed), leave a valid document.
    assert bytes(document) in (FUZZ_SEED, b"\xd2" + FUZZ_SEED)
