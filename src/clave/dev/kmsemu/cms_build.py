"""Build `CiphertextForRecipient` in the exact BER shape real KMS returns (aws-nitro-enclaves-sdk-c `source/cms.c`).

ContentInfo(envelopedData) → EnvelopedData v2 with one KeyTransRecipientInfo v2 (rid = 32-byte
subjectKeyIdentifier, RSAES-OAEP with SHA-256 and MGF1-SHA-256, RSA-encrypted 32-byte CEK) and an
EncryptedContentInfo (id-data, AES-256-CBC with the IV as parameter, PKCS#7 padded content). The outer
ContentInfo, its [0], EnvelopedData and EncryptedContentInfo use indefinite lengths; everything inside
is definite, byte for byte like the two real blobs in vectors/nitro/kms_cms_envelopes.json.

The content comes in one of the two encodings KMS has been seen to use: constructed `[0]` holding
OCTET STRING chunks (`a0 80 04 .. 00 00`, the "plain" sample) or primitive `[0]` IMPLICIT
(`80 ..`, the "with_context" sample). What real KMS puts in the rid is undocumented; we use
SHA-256 of the recipient's SubjectPublicKeyInfo, which is 32 bytes like theirs and ignored by readers.
`cryptography` cannot write this (OAEP + SKI rid + BER), hence the hand-rolled TLVs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

EOC = b"\x00\x00"
CHUNK = 1024  # how we split long constructed content; KMS's own split size is unknown


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    """Definite-length DER-style element."""
    return bytes([tag]) + _len(len(content)) + content


def indefinite(tag: int, content: bytes) -> bytes:
    """BER constructed element with indefinite length, closed by end-of-contents."""
    return bytes([tag, 0x80]) + content + EOC


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        septets = [arc & 0x7F]
        arc >>= 7
        while arc:
            septets.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(septets))
    return tlv(0x06, bytes(out))


def _integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def _seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


NULL = b"\x05\x00"
SHA256_ALG = _seq(oid(OID_SHA256), NULL)
# RSAES-OAEP-params { hashFunc [0] sha256, maskGenFunc [1] mgf1(sha256) }, pSourceFunc left default.
OAEP_SHA256_ALG = _seq(
    oid(OID_RSAES_OAEP),
    _seq(tlv(0xA0, SHA256_ALG), tlv(0xA1, _seq(oid(OID_MGF1), SHA256_ALG))),
)

OAEP = asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def recipient_key_id(public_key: rsa.RSAPublicKey) -> bytes:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def build_enveloped_data(
    plaintext: bytes,
    recipient: rsa.RSAPublicKey,
    *,
    constructed: bool = True,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt `plaintext` to `recipient` as KMS does for Recipient requests."""
    cek, iv = random(32), random(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()

    ktri = _seq(
        _integer(2),  # version 2: the rid is a subjectKeyIdentifier
        tlv(0x80, recipient_key_id(recipient)),
        OAEP_SHA256_ALG,
        tlv(0x04, recipient.encrypt(cek, OAEP)),
    )
    if constructed:
        chunks = [ciphertext[i : i + CHUNK] for i in range(0, len(ciphertext), CHUNK)]
        content = indefinite(0xA0, b"".join(tlv(0x04, c) for c in chunks))
    else:
        content = tlv(0x80, ciphertext)
    encrypted_content_info = indefinite(
        0x30,
        oid(OID_DATA) + _seq(oid(OID_AES256_CBC), tlv(0x04, iv)) + content,
    )
    enveloped = indefinite(0x30, _integer(2) + tlv(0x31, ktri) + encrypted_content_info)
    return indefinite(0x30, oid(OID_ENVELOPED_DATA) + indefinite(0xA0, enveloped))
