"""Strict reader for KMS's `CiphertextForRecipient`: BER CMS EnvelopedData that only the enclave can open.

KMS answers a call carrying `Recipient` with a CMS EnvelopedData (RFC 5652) encrypted to the public key of
the attestation document. `cryptography` cannot read it (BER indefinite lengths, a subjectKeyIdentifier
recipient, RSAES-OAEP key transport), so this module walks the BER itself. It accepts exactly the shape
KMS emits (aws-nitro-enclaves-sdk-c `source/cms.c` and the real blobs of
`tests/kmstool-enclaves/cms_test.c`) and nothing else:

    ContentInfo SEQUENCE {
      contentType  OID envelopedData
      [0] EXPLICIT EnvelopedData SEQUENCE {
        version INTEGER 2
        recipientInfos SET { exactly one KeyTransRecipientInfo SEQUENCE {
          version INTEGER 2
          rid [0] subjectKeyIdentifier
          keyEncryptionAlgorithm { OID rsaesOaep, { [0] sha256, [1] mgf1(sha256) } }
          encryptedKey OCTET STRING } }
        encryptedContentInfo SEQUENCE {
          contentType OID data
          contentEncryptionAlgorithm { OID aes256-CBC, OCTET STRING iv(16) }
          encryptedContent [0] IMPLICIT OCTET STRING  (primitive, or constructed of primitive chunks) } } }

Constructed elements may use definite or indefinite lengths (KMS uses indefinite for the outer ones);
primitive ones must use minimal definite lengths. Every failure is a `CmsError`; decryption failures all
carry one opaque message so a caller cannot be used as a padding or OAEP oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from clave.core.errors import RequestError

# botocore's model caps CiphertextForRecipient at 6144 bytes; anything larger did not come from KMS.
MAX_CMS_SIZE = 6144
IV_SIZE = 16
CEK_SIZE = 32  # AES-256
AES_BLOCK = 16
_MAX_DEPTH = 12  # the KMS shape nests 11 levels (ContentInfo down to MGF1's hash OID)

# DER contents of the object identifiers KMS uses, compared byte for byte.
OID_ENVELOPED_DATA = bytes.fromhex("2a864886f70d010703")  # 1.2.840.113549.1.7.3
OID_DATA = bytes.fromhex("2a864886f70d010701")  # 1.2.840.113549.1.7.1
OID_RSAES_OAEP = bytes.fromhex("2a864886f70d010107")  # 1.2.840.113549.1.1.7
OID_MGF1 = bytes.fromhex("2a864886f70d010108")  # 1.2.840.113549.1.1.8
OID_SHA256 = bytes.fromhex("608648016503040201")  # 2.16.840.1.101.3.4.2.1
OID_AES256_CBC = bytes.fromhex("60864801650304012a")  # 2.16.840.1.101.3.4.1.42

# Tag octets (class, constructed bit and number in one byte; the KMS shape needs no high tag numbers).
SEQUENCE, SET, INTEGER, OCTET_STRING, NULL, OID = 0x30, 0x31, 0x02, 0x04, 0x05, 0x06
CTX0_PRIMITIVE, CTX0_CONSTRUCTED, CTX1_CONSTRUCTED = 0x80, 0xA0, 0xA1
_CONSTRUCTED_BIT = 0x20

_DECRYPT_FAILED = "CMS: envelope could not be decrypted"


class CmsError(RequestError):
    """The CMS blob is malformed, not KMS-shaped, or cannot be opened with the enclave's key."""


@dataclass(frozen=True)
class EnvelopedParts:
    encrypted_key: bytes  # RSA-OAEP(SHA-256) of the AES-256 content key
    iv: bytes  # 16 bytes
    ciphertext: bytes  # AES-256-CBC, PKCS#7 padded, chunks concatenated


@dataclass(frozen=True)
class _Node:
    """One BER element: `value` for primitives, `children` for constructed elements."""

    tag: int
    value: bytes = b""
    children: tuple[_Node, ...] = ()

    @property
    def constructed(self) -> bool:
        return bool(self.tag & _CONSTRUCTED_BIT)


# --------------------------------------------------------------------------------------------------------
# BER reader


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise CmsError("CMS: truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise CmsError("CMS: truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def length(self) -> int | None:
        """Definite length, or None for the indefinite form (0x80)."""
        first = self.byte()
        if first < 0x80:
            return first
        if first == 0x80:
            return None
        size = first & 0x7F
        if size > 2:  # 65535 bytes is far beyond MAX_CMS_SIZE
            raise CmsError("CMS: length too large")
        value = int.from_bytes(self.take(size), "big")
        # Non-minimal lengths (81 05, 82 00 80) have two encodings of one value: KMS never sends them.
        if value < 0x80 or (size == 2 and value < 0x100):
            raise CmsError("CMS: non-minimal length")
        return value

    def element(self, depth: int) -> _Node:
        if depth > _MAX_DEPTH:
            raise CmsError("CMS: nested too deeply")
        tag = self.byte()
        if tag & 0x1F == 0x1F:
            raise CmsError("CMS: high tag numbers are not used by KMS")
        if tag == 0:
            raise CmsError("CMS: unexpected end-of-contents")
        length = self.length()
        if not tag & _CONSTRUCTED_BIT:
            if length is None:
                raise CmsError("CMS: indefinite length on a primitive element")
            return _Node(tag, value=self.take(length))
        if length is None:
            return _Node(tag, children=self.indefinite_children(depth))
        return _Node(tag, children=self.definite_children(length, depth))

    def indefinite_children(self, depth: int) -> tuple[_Node, ...]:
        children: list[_Node] = []
        while True:
            if self.data[self.pos : self.pos + 2] == b"\x00\x00":
                self.pos += 2
                return tuple(children)
            children.append(self.element(depth + 1))

    def definite_children(self, length: int, depth: int) -> tuple[_Node, ...]:
        # Parse the contents on their own so a child cannot run past its parent's end.
        inner = _Reader(self.take(length))
        children: list[_Node] = []
        while inner.pos < len(inner.data):
            children.append(inner.element(depth + 1))
        return tuple(children)


def _parse_ber(blob: bytes) -> _Node:
    reader = _Reader(blob)
    root = reader.element(0)
    if reader.pos != len(blob):
        raise CmsError(f"CMS: {len(blob) - reader.pos} trailing bytes")
    return root


# --------------------------------------------------------------------------------------------------------
# Shape checks


def _expect(node: _Node, tag: int, what: str, count: int | None = None) -> tuple[_Node, ...]:
    """Checks the tag (and, for constructed nodes, the number of children); returns the children."""
    if node.tag != tag:
        raise CmsError(f"CMS: {what}: unexpected tag 0x{node.tag:02x}")
    if count is not None and len(node.children) != count:
        raise CmsError(f"CMS: {what}: expected {count} elements, got {len(node.children)}")
    return node.children


def _expect_value(node: _Node, tag: int, value: bytes, what: str) -> None:
    _expect(node, tag, what)
    if node.value != value:
        raise CmsError(f"CMS: {what}: unsupported value {node.value.hex()}")


def _sha256_algorithm(node: _Node, what: str) -> None:
    # AlgorithmIdentifier { sha256, NULL }, with the explicit NULL parameters KMS sends.
    oid, params = _expect(node, SEQUENCE, what, 2)
    _expect_value(oid, OID, OID_SHA256, f"{what} algorithm")
    _expect_value(params, NULL, b"", f"{what} parameters")


def _check_key_encryption_algorithm(node: _Node) -> None:
    """RSAES-OAEP with hashFunc SHA-256 and MGF1-SHA-256; pSourceFunc absent (empty label)."""
    oid, params = _expect(node, SEQUENCE, "keyEncryptionAlgorithm", 2)
    _expect_value(oid, OID, OID_RSAES_OAEP, "keyEncryptionAlgorithm")
    hash_func, mask_gen = _expect(params, SEQUENCE, "RSAES-OAEP parameters", 2)
    (hash_alg,) = _expect(hash_func, CTX0_CONSTRUCTED, "OAEP hashFunc", 1)
    _sha256_algorithm(hash_alg, "OAEP hashFunc")
    (mgf,) = _expect(mask_gen, CTX1_CONSTRUCTED, "OAEP maskGenFunc", 1)
    mgf_oid, mgf_hash = _expect(mgf, SEQUENCE, "OAEP maskGenFunc", 2)
    _expect_value(mgf_oid, OID, OID_MGF1, "OAEP maskGenFunc")
    _sha256_algorithm(mgf_hash, "MGF1 hash")


def _recipient_encrypted_key(recipient_infos: _Node) -> bytes:
    children = _expect(recipient_infos, SET, "recipientInfos")
    if len(children) != 1:
        raise CmsError(f"CMS: expected exactly one recipient, got {len(children)}")
    version, rid, algorithm, encrypted_key = _expect(children[0], SEQUENCE, "KeyTransRecipientInfo", 4)
    # Version 2 means the recipient is named by subjectKeyIdentifier ([0]); the enclave has one key.
    _expect_value(version, INTEGER, b"\x02", "KeyTransRecipientInfo version")
    _expect(rid, CTX0_PRIMITIVE, "recipient subjectKeyIdentifier")
    if not rid.value:
        raise CmsError("CMS: recipient subjectKeyIdentifier is empty")
    _check_key_encryption_algorithm(algorithm)
    _expect(encrypted_key, OCTET_STRING, "encryptedKey")
    if not encrypted_key.value:
        raise CmsError("CMS: encryptedKey is empty")
    return encrypted_key.value


def _content(node: _Node) -> bytes:
    """encryptedContent [0]: one primitive string, or constructed of primitive OCTET STRING chunks."""
    if node.tag == CTX0_PRIMITIVE:
        ciphertext = node.value
    else:
        chunks = _expect(node, CTX0_CONSTRUCTED, "encryptedContent")
        for chunk in chunks:
            _expect(chunk, OCTET_STRING, "encryptedContent chunk")
        ciphertext = b"".join(chunk.value for chunk in chunks)
    if not ciphertext or len(ciphertext) % AES_BLOCK:
        raise CmsError(f"CMS: encrypted content length {len(ciphertext)} is not a positive multiple of 16")
    return ciphertext


def _encrypted_content(node: _Node) -> tuple[bytes, bytes]:
    content_type, algorithm, content = _expect(node, SEQUENCE, "EncryptedContentInfo", 3)
    _expect_value(content_type, OID, OID_DATA, "EncryptedContentInfo contentType")
    oid, iv = _expect(algorithm, SEQUENCE, "contentEncryptionAlgorithm", 2)
    _expect_value(oid, OID, OID_AES256_CBC, "contentEncryptionAlgorithm")
    _expect(iv, OCTET_STRING, "AES-CBC IV")
    if len(iv.value) != IV_SIZE:
        raise CmsError(f"CMS: AES-CBC IV is {len(iv.value)} bytes, expected {IV_SIZE}")
    return iv.value, _content(content)


def parse_enveloped_data(blob: bytes | bytearray | memoryview) -> EnvelopedParts:
    """Extracts encryptedKey, IV and ciphertext from a KMS-shaped BER ContentInfo(EnvelopedData)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CmsError("CMS: input must be bytes")
    blob = bytes(blob)
    if not 0 < len(blob) <= MAX_CMS_SIZE:
        raise CmsError(f"CMS: size {len(blob)} outside 1..{MAX_CMS_SIZE}")
    content_type, wrapper = _expect(_parse_ber(blob), SEQUENCE, "ContentInfo", 2)
    _expect_value(content_type, OID, OID_ENVELOPED_DATA, "ContentInfo contentType")
    (enveloped,) = _expect(wrapper, CTX0_CONSTRUCTED, "ContentInfo content", 1)
    # Exactly version, recipientInfos, encryptedContentInfo: no originatorInfo, no unprotectedAttrs.
    version, recipient_infos, encrypted_content_info = _expect(enveloped, SEQUENCE, "EnvelopedData", 3)
    _expect_value(version, INTEGER, b"\x02", "EnvelopedData version")
    encrypted_key = _recipient_encrypted_key(recipient_infos)
    iv, ciphertext = _encrypted_content(encrypted_content_info)
    return EnvelopedParts(encrypted_key=encrypted_key, iv=iv, ciphertext=ciphertext)


# --------------------------------------------------------------------------------------------------------
# Decryption


def _unpad(padded: bytes) -> bytes:
    """Strict PKCS#7: the last n bytes (1 <= n <= 16) all equal n."""
    n = padded[-1]
    if not 1 <= n <= AES_BLOCK or padded[-n:] != bytes([n]) * n:
        raise CmsError(_DECRYPT_FAILED)
    return padded[:-n]


def open_enveloped_data(
    blob: bytes | bytearray | memoryview, private_key: rsa.RSAPrivateKey, *, expected_size: int | None = None
) -> bytes:
    """Unwraps the content key with RSA-OAEP(SHA-256, MGF1-SHA-256), then AES-256-CBC decrypts and unpads.

    `expected_size`, when given, is the exact plaintext length the caller needs (32 for a data key).
    Checking it here, behind the same opaque error as a bad padding, means a parent that replays edited
    ciphertexts learns nothing from which ones "open".
    """
    parts = parse_enveloped_data(blob)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise CmsError("CMS: recipient key is not an RSA private key")
    if len(parts.encrypted_key) != (private_key.key_size + 7) // 8:
        raise CmsError(_DECRYPT_FAILED)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        content_key = private_key.decrypt(parts.encrypted_key, oaep)
    except ValueError:
        raise CmsError(_DECRYPT_FAILED) from None
    if len(content_key) != CEK_SIZE:
        raise CmsError(_DECRYPT_FAILED)
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(parts.iv)).decryptor()
    plaintext = _unpad(decryptor.update(parts.ciphertext) + decryptor.finalize())
    if expected_size is not None and len(plaintext) != expected_size:
        raise CmsError(_DECRYPT_FAILED)
    return plaintext
