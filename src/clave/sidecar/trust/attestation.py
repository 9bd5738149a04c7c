"""The one Nitro attestation-document verifier (sidecar, CLI, KMS emulator and tests all use it).

A document is an untagged (or tag-18) COSE_Sign1 whose payload is a CBOR map signed with ES384 by a leaf
("infrastructure") certificate that chains through `cabundle` to the AWS Nitro root
(aws-nitro-enclaves-nsm-api `docs/attestation_process.md`). Verification is I/O-free and clock-free: the
caller injects the trusted root and the time, so a fixed-clock test and production run the same code.

Order of checks: CBOR/COSE shape and field limits (`parse_attestation`), certificate chain at `now_ms`,
the COSE signature over the payload bytes as received, then the application's policy (PCRs, nonce,
freshness). Every failure is an `AttestationError` whose message names the check that failed.

CBOR is decoded by a small strict reader here instead of `cbor2`: the document needs only integers,
strings, arrays, maps (definite or indefinite) and null, and the reader refuses everything else (tags
inside the document, floats, duplicate map keys, trailing bytes) identically on every cbor2 version.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from clave.core.errors import RequestError

# SHA-256 of the DER of "AWS Nitro Enclaves Root-G1" (CN=aws.nitro-enclaves); nsm-api docs, verify-root.html.
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

# Limits from attestation_process.md: payload bstr 1..16384, cert 1..1024, PCR lengths, PCR indices.
MAX_PAYLOAD_SIZE = 16384
# Whole document: payload plus the COSE envelope (protected header, signature, CBOR heads) — refuse
# anything larger before decoding it.
MAX_DOCUMENT_SIZE = MAX_PAYLOAD_SIZE + 512
MAX_CERT_SIZE = 1024
# The spec's §3.2.2.2 says 512 for user_data/nonce, but real hardware accepts 1024 for each
# (nsm-test `nsm-check.rs`), so a verifier that refused 513..1024 would refuse genuine enclaves.
MAX_OPTIONAL_FIELD_SIZE = 1024
PCR_SIZES = frozenset({32, 48, 64})
PCR_COUNT = 32
# A document timestamped in the future by more than this means a broken clock or a forgery attempt.
MAX_CLOCK_SKEW_MS = 60_000

ES384_SIGNATURE_SIZE = 96  # raw r||s, 48 bytes each (not DER)
COSE_ALG_ES384 = -35
_MAX_CBOR_DEPTH = 8  # the document nests 3 deep; anything deeper is not an attestation document

_REQUIRED_FIELDS = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL_FIELDS = ("public_key", "user_data", "nonce")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What cryptography raises for a certificate it cannot parse; several are not ValueError subclasses.
_CERT_PARSE_ERRORS = (
    ValueError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


class AttestationError(RequestError):
    """The attestation document is malformed, untrusted or refused by policy; the message says which."""


# --------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class PcrPolicy:
    """Which enclave measurements are acceptable.

    `expected` pins PCR index -> exact value. A debug-mode enclave reports PCR0 as all zeros and can be
    inspected from the parent, so it is refused unless `allow_debug` is set (dev setups only).
    """

    expected: Mapping[int, bytes] = field(default_factory=dict)
    allow_debug: bool = False

    def __post_init__(self) -> None:
        for index, value in self.expected.items():
            if type(index) is not int or not 0 <= index < PCR_COUNT:
                raise ValueError(f"PCR index must be an int in 0..{PCR_COUNT - 1}, got {index!r}")
            if not isinstance(value, bytes) or len(value) not in PCR_SIZES:
                raise ValueError(f"expected PCR{index} must be 32, 48 or 64 bytes")
        # Copy so a caller mutating its dict later cannot change a policy already in use.
        object.__setattr__(self, "expected", MappingProxyType(dict(self.expected)))

    def check(self, pcrs: Mapping[int, bytes]) -> None:
        pcr0 = pcrs.get(0)
        if pcr0 is None:
            raise AttestationError("attestation: PCR0 is missing")
        if not self.allow_debug and not any(pcr0):
            raise AttestationError(
                "attestation: PCR0 is all zeros (debug-mode enclave) and debug is not allowed"
            )
        for index in sorted(self.expected):
            actual = pcrs.get(index)
            if actual is None:
                raise AttestationError(f"attestation: PCR{index} is missing")
            if not hmac.compare_digest(actual, self.expected[index]):
                raise AttestationError(
                    f"attestation: PCR{index} mismatch: expected {self.expected[index].hex()}, got {actual.hex()}"
                )


@dataclass(frozen=True)
class AttestationDocument:
    """The payload fields, checked for type and size. Optional fields that were null or empty are None."""

    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    certificate: bytes  # DER of the leaf that signed the document
    cabundle: list[bytes]  # DER, root first, the leaf's issuer last
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    payload: bytes  # raw payload bytes as received: what the signature covers


# --------------------------------------------------------------------------------------------------------
# Strict CBOR reader


class _CborReader:
    """Decodes the CBOR subset an attestation document uses; `what` names the object in error messages.

    Why not cbor2 here (it is used everywhere else): a verifier must refuse what cbor2 accepts silently —
    trailing bytes after the document, duplicate map keys (refused only from cbor2 6.1 on), and tags that
    cbor2 turns into dates or decimals. This reader knows only the types a Nitro document can contain.
    """

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def fail(self, reason: str) -> AttestationError:
        return AttestationError(f"attestation: {self.what}: {reason}")

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail("truncated CBOR")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int | None]:
        """Returns (major type, argument); argument None means indefinite length (or break for major 7)."""
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info
        if info in (24, 25, 26, 27):
            return major, int.from_bytes(self.take(1 << (info - 24)), "big")
        if info == 31 and major in (2, 3, 4, 5, 7):
            return major, None
        raise self.fail(f"malformed CBOR head 0x{initial:02x}")

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_CBOR_DEPTH:
            raise self.fail("CBOR nested too deeply")
        major, arg = self.head()
        if major == 0 and arg is not None:
            return arg
        if major == 1 and arg is not None:
            return -1 - arg
        if major in (2, 3):
            return self.string(major, arg)
        if major == 4:
            return self.array(arg, depth)
        if major == 5:
            return self.map(arg, depth)
        if major == 6:
            raise self.fail(f"unexpected CBOR tag {arg}")
        if major == 7 and arg == 22:
            return None
        if major == 7 and arg is None:
            raise self.fail("unexpected CBOR break")
        raise self.fail("unsupported CBOR simple value or float")

    def string(self, major: int, arg: int | None) -> bytes | str:
        if arg is not None:
            raw = self.take(arg)
        else:  # indefinite: definite chunks of the same major type until break
            parts = []
            while not self.at_break():
                chunk_major, chunk_len = self.head()
                if chunk_major != major or chunk_len is None:
                    raise self.fail("bad chunk in indefinite-length string")
                parts.append(self.take(chunk_len))
            raw = b"".join(parts)
        if major == 2:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("text string is not UTF-8") from None

    def at_break(self) -> bool:
        if self.pos >= len(self.data):
            raise self.fail("truncated CBOR")
        if self.data[self.pos] == 0xFF:
            self.pos += 1
            return True
        return False

    def array(self, count: int | None, depth: int) -> list[Any]:
        items: list[Any] = []
        while (len(items) < count) if count is not None else not self.at_break():
            items.append(self.value(depth + 1))
        return items

    def map(self, count: int | None, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        seen = 0
        while (seen < count) if count is not None else not self.at_break():
            key = self.value(depth + 1)
            if not isinstance(key, (str, int, bytes)):
                raise self.fail("unsupported CBOR map key type")
            if key in result:
                raise self.fail(f"duplicate map key {key!r}")
            result[key] = self.value(depth + 1)
            seen += 1
        return result

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes after CBOR")


def _decode_cbor(data: bytes, what: str, *, allow_cose_tag: bool = False) -> Any:
    reader = _CborReader(data, what)
    # COSE_Sign1 may carry tag 18 (0xd2) at the very top; the NSM omits it. No other tag is allowed.
    if allow_cose_tag and data[:1] == b"\xd2":
        reader.pos = 1
    result = reader.value()
    reader.finish()
    return result


def _cbor_bstr_head(length: int) -> bytes:
    if length < 24:
        return bytes([0x40 | length])
    for info, size in ((24, 1), (25, 2), (26, 4)):
        if length < 1 << (8 * size):
            return bytes([0x40 | info]) + length.to_bytes(size, "big")
    return b"\x5b" + length.to_bytes(8, "big")


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    """COSE Sig_structure ["Signature1", protected, h'', payload], canonically encoded (RFC 9052 §4.4)."""
    return (
        b"\x84\x6aSignature1"
        + _cbor_bstr_head(len(protected))
        + protected
        + b"\x40"
        + _cbor_bstr_head(len(payload))
        + payload
    )


# --------------------------------------------------------------------------------------------------------
# Parsing and field checks


def parse_attestation(document: bytes) -> tuple[AttestationDocument, bytes, bytes]:
    """Decodes the COSE_Sign1 envelope and checks every payload field; does not verify anything.

    Returns (document, protected header bytes, raw 96-byte r||s signature).
    """
    if not isinstance(document, bytes):
        raise AttestationError("attestation: document must be bytes")
    if not 0 < len(document) <= MAX_DOCUMENT_SIZE:
        raise AttestationError(f"attestation: document size {len(document)} outside 1..{MAX_DOCUMENT_SIZE}")
    protected, payload, signature = _parse_cose_sign1(document)
    fields = _decode_cbor(payload, "payload")
    if not isinstance(fields, dict):
        raise AttestationError("attestation: payload is not a CBOR map")
    return _check_fields(fields, payload), protected, signature


def _parse_cose_sign1(document: bytes) -> tuple[bytes, bytes, bytes]:
    envelope = _decode_cbor(document, "COSE_Sign1", allow_cose_tag=True)
    if not isinstance(envelope, list) or len(envelope) != 4:
        raise AttestationError("attestation: COSE_Sign1 is not an array of 4")
    protected, unprotected, payload, signature = envelope
    if not isinstance(protected, bytes):
        raise AttestationError("attestation: protected header is not a byte string")
    _check_protected_header(protected)
    # The NSM puts nothing in the unprotected header; anything there would be unauthenticated input.
    if unprotected != {}:
        raise AttestationError("attestation: unprotected header is not an empty map")
    if not isinstance(payload, bytes) or not 1 <= len(payload) <= MAX_PAYLOAD_SIZE:
        raise AttestationError(f"attestation: payload is not a byte string of 1..{MAX_PAYLOAD_SIZE} bytes")
    if not isinstance(signature, bytes) or len(signature) != ES384_SIGNATURE_SIZE:
        raise AttestationError(f"attestation: signature is not {ES384_SIGNATURE_SIZE} bytes (ES384 r||s)")
    return protected, payload, signature


def _check_protected_header(protected: bytes) -> None:
    # The reader yields no floats or booleans, so plain equality cannot be fooled by {1.0: -35} or {True: -35}.
    if _decode_cbor(protected, "protected header") != {1: COSE_ALG_ES384}:
        raise AttestationError("attestation: protected header is not {1: -35} (alg ES384)")


def _check_fields(fields: dict[Any, Any], payload: bytes) -> AttestationDocument:
    unknown = sorted(repr(k) for k in fields if k not in _REQUIRED_FIELDS + _OPTIONAL_FIELDS)
    if unknown:
        raise AttestationError(f"attestation: unknown payload field {unknown[0]}")
    missing = [name for name in _REQUIRED_FIELDS if name not in fields]
    if missing:
        raise AttestationError(f"attestation: payload field {missing[0]!r} is missing")
    return AttestationDocument(
        module_id=_check_module_id(fields["module_id"]),
        digest=_check_digest(fields["digest"]),
        timestamp_ms=_check_timestamp(fields["timestamp"]),
        pcrs=_check_pcrs(fields["pcrs"]),
        certificate=_check_cert_bytes(fields["certificate"], "certificate"),
        cabundle=_check_cabundle(fields["cabundle"]),
        public_key=_check_optional(fields.get("public_key"), "public_key"),
        user_data=_check_optional(fields.get("user_data"), "user_data"),
        nonce=_check_optional(fields.get("nonce"), "nonce"),
        payload=payload,
    )


def _check_module_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise AttestationError("attestation: module_id is not a non-empty text string")
    return value


def _check_digest(value: object) -> str:
    if value != "SHA384":
        raise AttestationError(f"attestation: digest is {value!r}, expected 'SHA384'")
    return "SHA384"


def _check_timestamp(value: object) -> int:
    if type(value) is not int or not 0 < value < 1 << 64:
        raise AttestationError("attestation: timestamp is not a positive 64-bit integer")
    return value


def _check_pcrs(value: object) -> dict[int, bytes]:
    if not isinstance(value, dict) or not 1 <= len(value) <= PCR_COUNT:
        raise AttestationError(f"attestation: pcrs is not a map of 1..{PCR_COUNT} entries")
    for index, pcr in value.items():
        if type(index) is not int or not 0 <= index < PCR_COUNT:
            raise AttestationError(
                f"attestation: PCR index {index!r} is not an integer in 0..{PCR_COUNT - 1}"
            )
        if not isinstance(pcr, bytes) or len(pcr) not in PCR_SIZES:
            raise AttestationError(f"attestation: PCR{index} is not a byte string of 32, 48 or 64 bytes")
    return dict(sorted(value.items()))


def _check_cert_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_CERT_SIZE:
        raise AttestationError(f"attestation: {name} is not a byte string of 1..{MAX_CERT_SIZE} bytes")
    return value


def _check_cabundle(value: object) -> list[bytes]:
    if not isinstance(value, list) or not value:
        raise AttestationError("attestation: cabundle is not a non-empty array")
    return [_check_cert_bytes(der, f"cabundle[{i}]") for i, der in enumerate(value)]


def _check_optional(value: object, name: str) -> bytes | None:
    # Real documents carry absent fields as null (2022) or as an empty byte string (2021): both mean absent.
    if value is None or value == b"":
        return None
    if not isinstance(value, bytes) or len(value) > MAX_OPTIONAL_FIELD_SIZE:
        raise AttestationError(
            f"attestation: {name} is not null or a byte string of at most {MAX_OPTIONAL_FIELD_SIZE} bytes"
        )
    return value


# --------------------------------------------------------------------------------------------------------
# Trust anchor


def load_root(data: bytes, *, fingerprint: str | None = None) -> x509.Certificate:
    """Loads the trust anchor from PEM (exactly one certificate) or DER, optionally pinned by SHA-256."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise AttestationError(f"attestation: root PEM holds {len(certs)} certificates, expected 1")
            root = certs[0]
        else:
            root = x509.load_der_x509_certificate(data)
    except _CERT_PARSE_ERRORS as exc:
        raise AttestationError(f"attestation: root certificate cannot be parsed: {exc}") from None
    if fingerprint is not None:
        want = fingerprint.replace(":", "").strip().lower()
        got = hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest()
        if got != want:  # a public value: no need for a constant-time comparison
            raise AttestationError(f"attestation: root certificate SHA-256 is {got}, pinned {want}")
    return root


# --------------------------------------------------------------------------------------------------------
# Certificate chain


def _ms_to_datetime(ms: int) -> datetime:
    # timedelta keeps millisecond precision exactly; float seconds would not for large values.
    return _EPOCH + timedelta(milliseconds=ms)


def _load_cert(der: bytes, name: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.extensions  # noqa: B018 - parse extensions now so malformed ones fail here, not later
    except _CERT_PARSE_ERRORS as exc:
        raise AttestationError(f"attestation: {name} is not a valid certificate: {exc}") from None
    return cert


def _check_validity(cert: x509.Certificate, name: str, at: datetime) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise AttestationError(
            f"attestation: {name} is not valid at {at.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})"
        )


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[Any] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _check_critical_extensions(cert: x509.Certificate, name: str) -> None:
    # RFC 5280 §4.2: a critical extension the verifier does not process must make the chain fail.
    understood = {x509.BasicConstraints.oid, x509.KeyUsage.oid}
    for ext in cert.extensions:
        if ext.critical and ext.oid not in understood:
            raise AttestationError(
                f"attestation: {name} has unsupported critical extension {ext.oid.dotted_string}"
            )


def _check_ca(cert: x509.Certificate, name: str, cas_below: int) -> None:
    """An issuer must be a CA (critical BasicConstraints), may sign certificates, and allow the depth used."""
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.critical or not constraints.value.ca:
        raise AttestationError(f"attestation: {name} is not a CA certificate (critical basicConstraints CA)")
    path_length = constraints.value.path_length
    if path_length is not None and path_length < cas_below:
        raise AttestationError(
            f"attestation: {name} path length {path_length} exceeded ({cas_below} CAs below)"
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.value.key_cert_sign:
        raise AttestationError(f"attestation: {name} key usage lacks keyCertSign")


def _check_leaf(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:
        raise AttestationError("attestation: certificate (leaf) is a CA certificate")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.value.digital_signature:
        raise AttestationError("attestation: certificate (leaf) key usage lacks digitalSignature")
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise AttestationError("attestation: certificate (leaf) public key cannot be loaded") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("attestation: certificate (leaf) key is not a P-384 key (ES384)")
    return key


def _check_issued_by(
    child: x509.Certificate, child_name: str, issuer: x509.Certificate, issuer_name: str
) -> None:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise AttestationError(f"attestation: {child_name} is not signed by {issuer_name}") from None


def _verify_chain(
    doc: AttestationDocument, root: x509.Certificate, at: datetime
) -> ec.EllipticCurvePublicKey:
    """Walks root -> cabundle[1..] -> certificate; returns the leaf's key. cabundle[0] must be the pin."""
    if doc.cabundle[0] != root.public_bytes(Encoding.DER):
        raise AttestationError("attestation: cabundle[0] is not the pinned root certificate")
    names = ["root"] + [f"cabundle[{i}]" for i in range(1, len(doc.cabundle))] + ["certificate (leaf)"]
    chain = [root] + [_load_cert(der, name) for der, name in zip(doc.cabundle[1:], names[1:-1], strict=True)]
    chain.append(_load_cert(doc.certificate, names[-1]))
    for cert, name in zip(chain, names, strict=True):
        _check_validity(cert, name, at)
        _check_critical_extensions(cert, name)
    _check_issued_by(root, "root", root, "itself")
    cas = len(chain) - 1
    for depth in range(cas):
        # CA certificates that follow this one before the leaf: what pathLenConstraint limits.
        _check_ca(chain[depth], names[depth], cas_below=cas - 1 - depth)
        _check_issued_by(chain[depth + 1], names[depth + 1], chain[depth], names[depth])
    return _check_leaf(chain[-1])


# --------------------------------------------------------------------------------------------------------
# Verification


def _verify_signature(
    key: ec.EllipticCurvePublicKey, protected: bytes, payload: bytes, signature: bytes
) -> None:
    half = ES384_SIGNATURE_SIZE // 2
    der = encode_dss_signature(
        int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    )
    try:
        key.verify(der, _sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError(
            "attestation: COSE signature does not verify with the leaf certificate"
        ) from None


def _check_nonce(doc: AttestationDocument, expected_nonce: bytes) -> None:
    if doc.nonce is None or not hmac.compare_digest(doc.nonce, expected_nonce):
        raise AttestationError("attestation: nonce does not match the challenge")


def _check_freshness(doc: AttestationDocument, now_ms: int, max_age_ms: int | None) -> None:
    if doc.timestamp_ms - now_ms > MAX_CLOCK_SKEW_MS:
        raise AttestationError(f"attestation: timestamp {doc.timestamp_ms} is in the future (now {now_ms})")
    if max_age_ms is not None and now_ms - doc.timestamp_ms > max_age_ms:
        raise AttestationError(
            f"attestation: document is {now_ms - doc.timestamp_ms} ms old, older than {max_age_ms} ms"
        )


def verify_attestation(
    document: bytes,
    *,
    root: x509.Certificate,
    now_ms: int,
    pcr_policy: PcrPolicy | None = None,
    expected_nonce: bytes | None = None,
    max_age_ms: int | None = None,
) -> AttestationDocument:
    """Verifies `document` against the trusted `root` at time `now_ms` (ms since the epoch, UTC).

    `pcr_policy=None` means `PcrPolicy()`: any measurements, but never a debug-mode enclave.
    `expected_nonce`, when given, must equal the document's nonce; `max_age_ms` bounds its age.
    """
    if type(now_ms) is not int or now_ms < 0:
        raise ValueError("now_ms must be a non-negative int (ms since the epoch)")
    if expected_nonce is not None and not expected_nonce:
        raise ValueError("expected_nonce must not be empty")
    doc, protected, signature = parse_attestation(document)
    leaf_key = _verify_chain(doc, root, _ms_to_datetime(now_ms))
    _verify_signature(leaf_key, protected, doc.payload, signature)
    (pcr_policy if pcr_policy is not None else PcrPolicy()).check(doc.pcrs)
    if expected_nonce is not None:
        _check_nonce(doc, expected_nonce)
    _check_freshness(doc, now_ms, max_age_ms)
    return doc


def describe(doc: AttestationDocument) -> dict[str, Any]:
    """A printable (JSON-friendly) summary for the CLI: PCRs and byte fields in hex."""

    def hex_or_none(value: bytes | None) -> str | None:
        return value.hex() if value is not None else None

    return {
        "module_id": doc.module_id,
        "digest": doc.digest,
        "timestamp_ms": doc.timestamp_ms,
        "timestamp": _ms_to_datetime(doc.timestamp_ms).isoformat().replace("+00:00", "Z"),
        "pcrs": {index: value.hex() for index, value in sorted(doc.pcrs.items())},
        "public_key": hex_or_none(doc.public_key),
        "user_data": hex_or_none(doc.user_data),
        "nonce": hex_or_none(doc.nonce),
    }
