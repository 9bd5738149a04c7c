"""enclave.nitro.cms against real KMS `CiphertextForRecipient` blobs and envelopes built here.

The real blobs (aws-nitro-enclaves-sdk-c `tests/kmstool-enclaves/cms_test.c`) come without a private key,
so they prove parsing only; decryption is proven with envelopes this file builds in exactly the same BER
shape (the builder reproduces the real blobs byte for byte, which is what makes the round trip meaningful).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clave.enclave.nitro.cms import (
    MAX_CMS_SIZE,
    CmsError,
    EnvelopedParts,
    open_enveloped_data,
    parse_enveloped_data,
)
from tests.vectors import available, vector

CMS_VECTORS = "nitro/kms_cms_envelopes.json"


def _load_cases() -> list[dict[str, str]]:
    if not available(CMS_VECTORS):
        return []
    cases: list[dict[str, str]] = json.loads(vector(CMS_VECTORS).read_text())["cases"]
    return cases


@pytest.fixture(scope="module")
def cms_vectors() -> None:
    vector(CMS_VECTORS)  # skipped when absent, a failure in CI (tests/vectors.py)


CASES = _load_cases()
needs_vectors = pytest.mark.usefixtures("cms_vectors")
case_params = pytest.mark.parametrize(
    "case", CASES or [{}], ids=[c.get("name", "none") for c in CASES] or ["none"]
)

# --------------------------------------------------------------------------------------------------------
# A BER builder in the shape KMS emits (aws-nitro-enclaves-sdk-c source/cms.c), with every part overridable for negative tests.

OID_ENVELOPED = "2a864886f70d010703"
OID_SIGNED = "2a864886f70d010702"
OID_DATA = "2a864886f70d010701"
OID_RSAES_OAEP = "2a864886f70d010107"
OID_RSA_PKCS1 = "2a864886f70d010101"
OID_MGF1 = "2a864886f70d010108"
OID_SHA256 = "608648016503040201"
OID_SHA1 = "2b0e03021a"
OID_AES256_CBC = "60864801650304012a"
OID_AES128_CBC = "608648016503040102"
OID_AES256_GCM = "60864801650304012e"


def tlv(tag: int, content: bytes) -> bytes:
    """Definite, minimal length (what KMS uses for every element that is not indefinite)."""
    n = len(content)
    if n < 0x80:
        head = bytes([n])
    elif n < 0x100:
        head = b"\x81" + bytes([n])
    else:
        head = b"\x82" + n.to_bytes(2, "big")
    return bytes([tag]) + head + content


def indefinite(tag: int, *children: bytes) -> bytes:
    return bytes([tag, 0x80]) + b"".join(children) + b"\x00\x00"


def oid(hex_oid: str) -> bytes:
    return tlv(0x06, bytes.fromhex(hex_oid))


def sha_alg(hex_oid: str) -> bytes:
    return tlv(0x30, oid(hex_oid) + b"\x05\x00")


@dataclass(frozen=True)
class Shape:
    rid: bytes = bytes(range(32))
    encrypted_key: bytes = b"\x01" * 256
    iv: bytes = b"\x02" * 16
    ciphertext: bytes = b"\x03" * 48
    content: str = "chunks"  # "chunks" (constructed [0], indefinite) or "primitive" ([0] IMPLICIT)
    chunk_size: int = 1000
    content_info_oid: str = OID_ENVELOPED
    env_version: bytes = b"\x02"
    ri_version: bytes = b"\x02"
    recipients: int = 1
    oaep_oid: str = OID_RSAES_OAEP
    oaep_hash: str = OID_SHA256
    mgf_oid: str = OID_MGF1
    mgf_hash: str = OID_SHA256
    extra_oaep_param: bytes = b""  # e.g. a pSourceFunc [2]
    content_type: str = OID_DATA
    cipher_oid: str = OID_AES256_CBC
    originator: bytes = b""  # originatorInfo [0] before recipientInfos
    unprotected: bytes = b""  # unprotectedAttrs [1] after encryptedContentInfo


def build(shape: Shape) -> bytes:
    oaep_params = tlv(
        0x30,
        tlv(0xA0, sha_alg(shape.oaep_hash))
        + tlv(0xA1, tlv(0x30, oid(shape.mgf_oid) + sha_alg(shape.mgf_hash)))
        + shape.extra_oaep_param,
    )
    recipient = tlv(
        0x30,
        tlv(0x02, shape.ri_version)
        + tlv(0x80, shape.rid)
        + tlv(0x30, oid(shape.oaep_oid) + oaep_params)
        + tlv(0x04, shape.encrypted_key),
    )
    if shape.content == "primitive":
        content = tlv(0x80, shape.ciphertext)
    else:
        step = shape.chunk_size
        chunks = [shape.ciphertext[i : i + step] for i in range(0, len(shape.ciphertext), step)]
        content = indefinite(0xA0, *(tlv(0x04, c) for c in chunks))
    encrypted_content_info = indefinite(
        0x30,
        oid(shape.content_type),
        tlv(0x30, oid(shape.cipher_oid) + tlv(0x04, shape.iv)),
        content,
    )
    enveloped = indefinite(
        0x30,
        tlv(0x02, shape.env_version),
        shape.originator,
        tlv(0x31, recipient * shape.recipients),
        encrypted_content_info,
        shape.unprotected,
    )
    return indefinite(0x30, oid(shape.content_info_oid), indefinite(0xA0, enveloped))


def seal(public_key: rsa.RSAPublicKey, plaintext: bytes, cek: bytes | None = None, **shape: Any) -> bytes:
    """Encrypts like KMS does: random AES-256 key, CBC + PKCS#7, key wrapped with RSA-OAEP-SHA256."""
    padder = sym_padding.PKCS7(128).padder()
    return seal_padded(public_key, padder.update(plaintext) + padder.finalize(), cek, **shape)


def seal_padded(public_key: rsa.RSAPublicKey, padded: bytes, cek: bytes | None = None, **shape: Any) -> bytes:
    """Like `seal`, with the caller's own (possibly wrong) padding already applied."""
    cek = os.urandom(32) if cek is None else cek
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = public_key.encrypt(cek, oaep)
    return build(Shape(encrypted_key=wrapped, iv=iv, ciphertext=ciphertext, **shape))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rid_from_real(blob: bytes) -> bytes:
    # In the KeyTransRecipientInfo the 32-byte rid [0] follows its version: 02 01 02 80 20.
    at = blob.index(bytes.fromhex("0201028020")) + 5
    return blob[at : at + 32]


# --------------------------------------------------------------------------------------------------------
# Real KMS blobs


@needs_vectors
@case_params
def test_real_kms_blob_parses_to_recorded_parts(case: dict[str, str]) -> None:
    parts = parse_enveloped_data(bytes.fromhex(case["input_ber"]))
    assert parts == EnvelopedParts(
        encrypted_key=bytes.fromhex(case["encrypted_key"]),
        iv=bytes.fromhex(case["iv"]),
        ciphertext=bytes.fromhex(case["ciphertext"]),
    )


@needs_vectors
@case_params
def test_builder_reproduces_real_kms_blob(case: dict[str, str]) -> None:
    """The synthetic envelopes below are KMS-shaped: the builder rebuilds each real blob byte for byte."""
    blob = bytes.fromhex(case["input_ber"])
    ciphertext = bytes.fromhex(case["ciphertext"])
    shape = Shape(
        rid=_rid_from_real(blob),
        encrypted_key=bytes.fromhex(case["encrypted_key"]),
        iv=bytes.fromhex(case["iv"]),
        ciphertext=ciphertext,
        content="primitive" if tlv(0x80, ciphertext) in blob else "chunks",
    )
    assert build(shape) == blob


@needs_vectors
@case_params
def test_every_truncation_of_real_blob_is_refused(case: dict[str, str]) -> None:
    blob = bytes.fromhex(case["input_ber"])
    for end in range(len(blob)):
        with pytest.raises(CmsError):
            parse_enveloped_data(blob[:end])


@needs_vectors
@case_params
def test_every_single_byte_flip_of_real_blob_is_refused_or_changes_one_value(case: dict[str, str]) -> None:
    """Flipping a structural byte must be refused; flipping a content byte may parse, changing only it."""
    blob = bytes.fromhex(case["input_ber"])
    original = parse_enveloped_data(blob)
    refused = 0
    for position in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            mutated = bytearray(blob)
            mutated[position] ^= mask
            try:
                parts = parse_enveloped_data(bytes(mutated))
            except CmsError:
                refused += 1
                continue
            changed = [
                sum(a != b for a, b in zip(getattr(parts, f), getattr(original, f), strict=True))
                for f in ("encrypted_key", "iv", "ciphertext")
            ]
            # Either a byte of the rid (not returned) or exactly one byte of one returned value changed.
            assert sorted(changed) in ([0, 0, 0], [0, 0, 1]), (position, mask)
    assert refused > 0


# --------------------------------------------------------------------------------------------------------
# Round trips with envelopes built here


@pytest.mark.parametrize(
    "shape",
    [
        {"content": "chunks"},
        {"content": "chunks", "chunk_size": 16},
        {"content": "primitive"},
    ],
    ids=["one-chunk", "many-chunks", "primitive"],
)
@pytest.mark.parametrize("size", [0, 1, 15, 16, 32, 100, 4096])
def test_round_trip(rsa_key: rsa.RSAPrivateKey, shape: dict[str, Any], size: int) -> None:
    plaintext = os.urandom(size)
    blob = seal(rsa_key.public_key(), plaintext, **shape)
    assert open_enveloped_data(blob, rsa_key) == plaintext
    assert open_enveloped_data(blob, rsa_key, expected_size=size) == plaintext


def test_largest_kms_decrypt_plaintext_fits(rsa_key: rsa.RSAPrivateKey) -> None:
    # KMS Decrypt returns at most 4096 bytes of plaintext: its envelope must stay under MAX_CMS_SIZE.
    blob = seal(rsa_key.public_key(), b"\x00" * 4096, chunk_size=1000)
    assert len(blob) <= MAX_CMS_SIZE


def test_wrong_private_key_is_refused_opaquely(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    blob = seal(rsa_key.public_key(), b"secret" * 5)
    with pytest.raises(CmsError) as excinfo:
        open_enveloped_data(blob, other)
    assert excinfo.value.message == "CMS: envelope could not be decrypted"


def test_key_size_mismatch_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    bigger = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with pytest.raises(CmsError, match="could not be decrypted"):
        open_enveloped_data(seal(rsa_key.public_key(), b"x" * 32), bigger)


def test_bad_padding_and_wrong_size_give_the_same_opaque_error(rsa_key: rsa.RSAPrivateKey) -> None:
    blob = seal(rsa_key.public_key(), b"k" * 32, content="primitive")
    parts = parse_enveloped_data(blob)
    # In CBC a flip in the second-to-last block flips the same byte of the last plaintext block:
    # its last byte, the padding length 0x10, becomes 0x45, which is not valid PKCS#7.
    ciphertext = bytearray(parts.ciphertext)
    ciphertext[-17] ^= 0x55
    broken_padding = build(
        Shape(
            encrypted_key=parts.encrypted_key, iv=parts.iv, ciphertext=bytes(ciphertext), content="primitive"
        )
    )
    errors = []
    for candidate, size in ((broken_padding, None), (blob, 31)):
        with pytest.raises(CmsError) as excinfo:
            open_enveloped_data(candidate, rsa_key, expected_size=size)
        errors.append(excinfo.value.message)
    assert errors == ["CMS: envelope could not be decrypted"] * 2


@pytest.mark.parametrize(
    "padded,plaintext",
    [
        (b"a" * 15 + b"\x01", b"a" * 15),
        (b"a" * 16 + b"\x10" * 16, b"a" * 16),
        (b"a" * 15 + b"\x00", None),  # zero is not a padding length
        (b"\x11" * 32, None),  # 17 > block size, although the last 17 bytes are all 0x11
        (b"a" * 14 + b"b\x02", None),  # 0x02 needs two 0x02 bytes
        (b"a" * 16 + b"\x10" * 15 + b"\x20", None),
    ],
    ids=["one-byte", "full-block", "zero", "longer-than-block", "inconsistent", "too-long"],
)
def test_strict_pkcs7_unpadding(rsa_key: rsa.RSAPrivateKey, padded: bytes, plaintext: bytes | None) -> None:
    blob = seal_padded(rsa_key.public_key(), padded)
    if plaintext is not None:
        assert open_enveloped_data(blob, rsa_key) == plaintext
        return
    with pytest.raises(CmsError, match="could not be decrypted"):
        open_enveloped_data(blob, rsa_key)


def test_content_key_of_wrong_length_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    blob = seal(rsa_key.public_key(), b"x" * 32, cek=os.urandom(16))  # AES-128 key in an AES-256 envelope
    with pytest.raises(CmsError, match="could not be decrypted"):
        open_enveloped_data(blob, rsa_key)


def test_non_rsa_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    blob = seal(rsa_key.public_key(), b"x")
    with pytest.raises(CmsError):
        open_enveloped_data(blob, ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Shapes KMS never produces


def _swap(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def edit(blob: bytes) -> bytes:
        assert blob.count(old) == 1
        return blob.replace(old, new)

    return edit


REFUSED_SHAPES: dict[str, tuple[Shape, str]] = {
    "content-info-signed-data": (Shape(content_info_oid=OID_SIGNED), "ContentInfo contentType"),
    "enveloped-version-0": (Shape(env_version=b"\x00"), "EnvelopedData version"),
    "enveloped-version-3": (Shape(env_version=b"\x03"), "EnvelopedData version"),
    "recipient-version-0": (Shape(ri_version=b"\x00"), "KeyTransRecipientInfo version"),
    "two-recipients": (Shape(recipients=2), "exactly one recipient"),
    "no-recipient": (Shape(recipients=0), "exactly one recipient"),
    "rsa-pkcs1-v1_5": (Shape(oaep_oid=OID_RSA_PKCS1), "keyEncryptionAlgorithm"),
    "oaep-sha1": (Shape(oaep_hash=OID_SHA1), "OAEP hashFunc"),
    "mgf1-sha1": (Shape(mgf_hash=OID_SHA1), "MGF1 hash"),
    "mgf-not-mgf1": (Shape(mgf_oid=OID_SHA256), "maskGenFunc"),
    "oaep-label": (Shape(extra_oaep_param=tlv(0xA2, b"")), "RSAES-OAEP parameters"),
    "aes128-cbc": (Shape(cipher_oid=OID_AES128_CBC), "contentEncryptionAlgorithm"),
    "aes256-gcm": (Shape(cipher_oid=OID_AES256_GCM), "contentEncryptionAlgorithm"),
    "content-type-not-data": (Shape(content_type=OID_ENVELOPED), "EncryptedContentInfo contentType"),
    "iv-8-bytes": (Shape(iv=b"\x00" * 8), "IV"),
    "iv-17-bytes": (Shape(iv=b"\x00" * 17), "IV"),
    "empty-rid": (Shape(rid=b""), "subjectKeyIdentifier"),
    "empty-encrypted-key": (Shape(encrypted_key=b""), "encryptedKey"),
    "empty-content": (Shape(ciphertext=b""), "multiple of 16"),
    "content-not-block-multiple": (Shape(ciphertext=b"\x00" * 47), "multiple of 16"),
    "originator-info": (Shape(originator=tlv(0xA0, b"")), "EnvelopedData"),
    "unprotected-attrs": (Shape(unprotected=tlv(0xA1, b"")), "EnvelopedData"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_SHAPES))
def test_shapes_kms_never_produces_are_refused(name: str) -> None:
    shape, message = REFUSED_SHAPES[name]
    assert parse_enveloped_data(build(Shape())).iv == Shape().iv  # the unmodified shape is fine
    with pytest.raises(CmsError, match=message):
        parse_enveloped_data(build(shape))


GOOD = build(Shape(content="primitive"))
CHUNKED = build(Shape())

REFUSED_ENCODINGS: dict[str, tuple[bytes, str]] = {
    "trailing-byte": (CHUNKED + b"\x00", "trailing"),
    "trailing-eoc": (CHUNKED + b"\x00\x00", "trailing"),
    "trailing-element": (CHUNKED + tlv(0x04, b""), "trailing"),
    "empty": (b"", "size"),
    "oversize": (CHUNKED + b"\x00" * (MAX_CMS_SIZE - len(CHUNKED) + 1), "size"),
    "oversize-well-formed": (build(Shape(ciphertext=b"\x00" * 6144)), "size"),
    "non-minimal-length": (
        _swap(tlv(0x04, b"\x02" * 16), b"\x04\x81\x10" + b"\x02" * 16)(GOOD),
        "non-minimal",
    ),
    "long-length-3-bytes": (
        _swap(tlv(0x04, b"\x02" * 16), b"\x04\x83\x00\x00\x10" + b"\x02" * 16)(GOOD),
        "length",
    ),
    "indefinite-primitive": (
        _swap(tlv(0x80, b"\x03" * 48), b"\x80\x80" + b"\x03" * 48 + b"\x00\x00")(GOOD),
        "primitive",
    ),
    "nested-constructed-chunk": (
        _swap(tlv(0x04, b"\x03" * 48), indefinite(0x24, tlv(0x04, b"\x03" * 48)))(CHUNKED),
        "chunk",
    ),
    "high-tag-number": (
        _swap(tlv(0x80, b"\x03" * 48), b"\x9f\x00" + tlv(0x80, b"\x03" * 48)[1:])(GOOD),
        "high tag",
    ),
    "eoc-inside-definite": (
        _swap(
            tlv(0x30, oid(OID_AES256_CBC) + tlv(0x04, b"\x02" * 16)),
            tlv(0x30, oid(OID_AES256_CBC) + b"\x00\x00" + tlv(0x04, b"\x02" * 16)),
        )(GOOD),
        "end-of-contents",
    ),
    "child-overruns-parent": (
        _swap(
            tlv(0x30, oid(OID_AES256_CBC) + tlv(0x04, b"\x02" * 16)),
            b"\x30\x1c" + oid(OID_AES256_CBC) + tlv(0x04, b"\x02" * 16),
        )(GOOD),
        "truncated",
    ),
    "deep-nesting": (b"\x30\x80" * 40 + b"\x00\x00" * 40, "deeply"),
    "not-a-sequence": (tlv(0x04, b"\x00" * 32), "ContentInfo"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_ENCODINGS))
def test_encodings_kms_never_produces_are_refused(name: str) -> None:
    blob, message = REFUSED_ENCODINGS[name]
    with pytest.raises(CmsError, match=message):
        parse_enveloped_data(blob)


@pytest.mark.parametrize("value", ["3080", 12, None, ["x"]])
def test_non_bytes_input_is_refused(value: object) -> None:
    with pytest.raises(CmsError):
        parse_enveloped_data(value)  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_accepted() -> None:
    assert (
        parse_enveloped_data(bytearray(GOOD))
        == parse_enveloped_data(memoryview(GOOD))
        == parse_enveloped_data(GOOD)
    )


def test_definite_lengths_are_accepted_too() -> None:
    """BER allows definite lengths on the constructed elements; the content is the same."""
    shape = Shape()
    recipient_set = build(shape).split(b"\x31\x82", 1)[1]
    set_len = int.from_bytes(recipient_set[:2], "big")
    recipients = b"\x31\x82" + recipient_set[: 2 + set_len]
    eci = tlv(
        0x30,
        oid(OID_DATA) + tlv(0x30, oid(OID_AES256_CBC) + tlv(0x04, shape.iv)) + tlv(0x80, shape.ciphertext),
    )
    blob = tlv(0x30, oid(OID_ENVELOPED) + tlv(0xA0, tlv(0x30, tlv(0x02, b"\x02") + recipients + eci)))
    assert parse_enveloped_data(blob) == EnvelopedParts(shape.encrypted_key, shape.iv, shape.ciphertext)


# --------------------------------------------------------------------------------------------------------
# Fuzzing: whatever the mutation, the only exception is CmsError


def _seeds() -> list[bytes]:
    return [bytes.fromhex(c["input_ber"]) for c in CASES] + [GOOD, CHUNKED, build(Shape(chunk_size=16))]


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    blob = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set-length-byte"]))
        position = draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del blob[position:]
        elif kind == "insert":
            blob[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del blob[position : position + draw(st.integers(1, 8))]
        elif blob:
            blob[position] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x81, 0x82, 0x83, 0xFF]))
    return bytes(blob)


def _parse_or_refuse(blob: bytes) -> EnvelopedParts | None:
    try:
        parts = parse_enveloped_data(blob)
    except CmsError:
        return None
    # Whatever parses honours the shape's invariants.
    assert len(parts.iv) == 16 and parts.encrypted_key
    assert parts.ciphertext and len(parts.ciphertext) % 16 == 0
    return parts


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutations_raise_only_cms_error(blob: bytes) -> None:
    _parse_or_refuse(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_raise_only_cms_error(blob: bytes) -> None:
    _parse_or_refuse(blob)


_SEALED: dict[int, bytes] = {}


def _sealed_for(key: rsa.RSAPrivateKey) -> bytes:
    # One envelope per key for the whole run: sealing in every example would dominate the fuzz time.
    return _SEALED.setdefault(id(key), seal(key.public_key(), b"data key " * 4))


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 10_000), mask=st.integers(1, 255))
def test_fuzz_open_raises_only_cms_error(rsa_key: rsa.RSAPrivateKey, position: int, mask: int) -> None:
    blob = bytearray(_sealed_for(rsa_key))
    blob[position % len(blob)] ^= mask
    try:
        open_enveloped_data(bytes(blob), rsa_key)
    except CmsError:
        pass
