"""A software NSM for local runs and CI: same CBOR messages, same attestation format, its own PKI.

What it reproduces from a real Nitro NSM (aws-nitro-enclaves-nsm-api: `src/api/mod.rs`, `docs/attestation_process.md`):
- the request/response messages of `nsm.py` with the same size limits and error codes;
- 32 SHA-384 PCRs, 0–15 locked from "boot", 16–31 extendable and lockable by the application;
- attestation documents byte-shaped like the hardware's: untagged COSE_Sign1
  `[bstr {1: -35}, {}, payload, r||s]`, ES384 by a fresh 3-hour leaf, a payload map with all nine keys
  in Nitro's order (module_id, digest, timestamp, pcrs, certificate, cabundle, public_key, user_data,
  nonce; absent options as null) and, like current hardware, an indefinite-length outer map
  (`definite_payload=True` gives the older `a9` form);
- a chain root → regional → zonal → instance → leaf with the extensions and path lengths the real
  certificates carry, so verifiers exercise the same checks.

Measurements (the local stand-in for an EIF, see `measure_code`):
- "application" bytes A: for every `*.py` file of the image (`clave.dev.image`: `clave/__init__.py` and
  the `core`, `link` and `enclave` rooms, as laid out under the image's /app; or every `*.py` under an
  explicit `code_root`, `__pycache__` skipped), sorted by relative POSIX path: u64be(len(path)) ‖ path ‖ u64be(len(data)) ‖ data;
- "bootstrap" bytes B: a tag plus the Python implementation and version (the "kernel" that runs A);
- PCR0 = extend(SHA384(B ‖ A)), PCR1 = extend(SHA384(B)), PCR2 = extend(SHA384(A)), where
  extend(d) = SHA384(0^48 ‖ d) — the same composition as nitro-cli's (image / bootstrap / application).
So any edit to any image source file changes PCR0 and PCR2. PCR3 = extend(role ARN) if given, PCR4 =
extend(instance id) (persisted per state_dir, like a parent instance), PCR8 = extend(SHA384(signing cert
DER)) if given, otherwise zeros; `debug=True` zeroes PCR0–2 as a debug-mode enclave reads.
PCRs are measured once, at construction, like a boot: later edits show up only in a new process.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import secrets
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from clave.dev.image import image_files
from clave.enclave.nitro.nsm import (
    NSM_FIELD_MAX,
    NSM_RANDOM_MAX,
    NSM_REQUEST_MAX,
    NSM_RESPONSE_MAX,
    NsmError,
    decode_exact,
    decode_response,
    encode_request,
)
from clave.sidecar.secretfiles import write_private

MAX_PCRS = 32
BOOT_LOCKED = range(16)  # locked from boot on real hardware (nsm-check.rs)
PCR_SIZE = 48
LEAF_LIFETIME = dt.timedelta(hours=3)  # real leaves are valid exactly 3 h
LEAF_RENEW_BEFORE = dt.timedelta(minutes=10)  # mint a new leaf rather than sign with a dying one
PROTECTED_ES384 = cbor2.dumps({1: -35})  # a1 01 38 22
VERSION = (1, 0, 0)
ROOT_FILE = "root.pem"

Clock = Callable[[], float]


def pcr_extend(old: bytes, data: bytes) -> bytes:
    return hashlib.sha384(old + data).digest()


def _fresh(data: bytes) -> bytes:
    """Extend an all-zero register once: how Nitro derives every measured PCR."""
    return pcr_extend(bytes(PCR_SIZE), data)


def _framed(chunks: list[bytes]) -> bytes:
    return b"".join(struct.pack(">Q", len(c)) + c for c in chunks)


def application_bytes(files: dict[str, bytes]) -> bytes:
    ordered = sorted(files.items(), key=lambda item: item[0].encode())
    return b"".join(_framed([name.encode(), data]) for name, data in ordered)


def app_dir_files(code_root: Path) -> dict[str, bytes]:
    """The `*.py` files under an image's application directory, by relative POSIX path."""
    return {
        path.relative_to(code_root).as_posix(): path.read_bytes()
        for path in code_root.rglob("*.py")
        if "__pycache__" not in path.relative_to(code_root).parts and path.is_file()
    }


def bootstrap_bytes() -> bytes:
    impl = sys.implementation
    ver = ".".join(str(v) for v in impl.version[:3])
    return _framed([b"clave-soft-nsm/1", impl.name.encode(), ver.encode()])


def measure_code(code_root: Path | None = None) -> dict[int, bytes]:
    """PCR0–2 the software NSM reports (nitro-cli's Measurements) for an image application directory, by
    default for the installed image files (`clave.dev.image`), laid out as the image has them."""
    if code_root is None:
        files = {rel: path.read_bytes() for rel, path in image_files().items()}
    else:
        files = app_dir_files(code_root)
    app = application_bytes(files)
    boot = bootstrap_bytes()
    return {
        0: _fresh(hashlib.sha384(boot + app).digest()),
        1: _fresh(hashlib.sha384(boot).digest()),
        2: _fresh(hashlib.sha384(app).digest()),
    }


# --- PKI ---------------------------------------------------------------------------------------------


@dataclass
class _Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clave"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "soft-nsm"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Ca | None,
    not_before: dt.datetime,
    lifetime: dt.timedelta,
    path_length: int | None,
    ca: bool = True,
) -> x509.Certificate:
    signer = issuer.key if issuer else key
    pub = key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    if ca:
        usage.update(key_cert_sign=True, crl_sign=True)
        b = b.add_extension(x509.KeyUsage(digital_signature=True, **usage), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    else:
        # The real leaf: digitalSignature + nonRepudiation, not critical, no SKI.
        usage.update(content_commitment=True)
        b = b.add_extension(x509.KeyUsage(digital_signature=True, **usage), critical=False)
    if issuer:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return b.sign(signer, hashes.SHA384())


class _Pki:
    """root, regional and zonal CAs persisted in state_dir (0600); instance CA and leaf per process."""

    # (file stem, CN suffix, path length, lifetime): path lengths as in real Nitro chains.
    LEVELS = (
        ("root", "root.soft-nsm.clave", None, dt.timedelta(days=365 * 30)),
        ("regional", "local.soft-nsm.clave", 2, dt.timedelta(days=365)),
        ("zonal", "zonal.local.soft-nsm.clave", 1, dt.timedelta(days=180)),
    )

    def __init__(self, state_dir: Path, now: dt.datetime) -> None:
        self.state_dir = state_dir
        self.cas = self._load_or_create(now)

    def _load_or_create(self, now: dt.datetime) -> list[_Ca]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self.state_dir / ".pki.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Two local processes may start at once on an empty state_dir: let one create the PKI.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            cas: list[_Ca] = []
            renew_below = False
            for stem, cn, pathlen, lifetime in self.LEVELS:
                ca = None if renew_below else self._load(stem)
                if ca is not None and ca.cert.not_valid_after_utc < now + LEAF_LIFETIME * 2:
                    ca = None  # about to expire: reissue it and everything under it
                if ca is None:
                    renew_below = True
                    key = ec.generate_private_key(ec.SECP384R1())
                    issuer = cas[-1] if cas else None
                    start = now - dt.timedelta(days=1)
                    ca = _Ca(key, _issue(cn, key, issuer, start, lifetime, pathlen))
                    self._save(stem, ca)
                cas.append(ca)
            return cas
        finally:
            os.close(lock_fd)

    def _load(self, stem: str) -> _Ca | None:
        try:
            key_pem = (self.state_dir / f"{stem}.key").read_bytes()
            cert_pem = (self.state_dir / f"{stem}.pem").read_bytes()
        except FileNotFoundError:
            return None
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise NsmError("InternalError", f"{stem}.key in {self.state_dir} is not an EC key")
        return _Ca(key, x509.load_pem_x509_certificate(cert_pem))

    def _save(self, stem: str, ca: _Ca) -> None:
        key_pem = ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(self.state_dir / f"{stem}.key", key_pem, replace=True)
        write_private(self.state_dir / f"{stem}.pem", ca.cert.public_bytes(serialization.Encoding.PEM), replace=True)


def root_pem(state_dir: Path) -> bytes:
    """The software NSM's root certificate (created on first use): what the sidecar pins locally."""
    _Pki(state_dir, dt.datetime.now(dt.UTC))
    return (state_dir / ROOT_FILE).read_bytes()


def _instance_id(state_dir: Path) -> str:
    """A stable fake EC2 instance id per state_dir, so PCR4 behaves like one parent instance."""
    path = state_dir / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = "i-" + secrets.token_hex(9)[:17]
        write_private(path, value.encode(), replace=True)
        return value


# --- the NSM -----------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class SoftwareNsm:
    """An in-process NSM with the hardware's message API (see module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        code_root: Path | None = None,
        clock: Clock = time.time,
        instance_id: str | None = None,
        role_arn: str | None = None,
        signing_cert: bytes | None = None,
        debug: bool = False,
        definite_payload: bool = False,
    ) -> None:
        self._clock = clock
        self._definite = definite_payload
        state_dir = Path(state_dir)
        self._pki = _Pki(state_dir, self._now())
        self.instance_id = instance_id or _instance_id(state_dir)
        # Real module ids are "<instance id>-enc<16 hex>", a fresh enclave id per launch.
        self.module_id = f"{self.instance_id}-enc{secrets.token_hex(8)}"

        pcrs = [bytes(PCR_SIZE)] * MAX_PCRS
        if not debug:
            for i, value in measure_code(code_root).items():
                pcrs[i] = value
        if role_arn:
            pcrs[3] = _fresh(role_arn.encode())
        pcrs[4] = _fresh(self.instance_id.encode("ascii"))
        if signing_cert:
            pcrs[8] = _fresh(hashlib.sha384(signing_cert).digest())
        self._pcrs = pcrs
        self._locked = set(BOOT_LOCKED)
        self._instance_ca: _Ca | None = None
        self._leaf: _Ca | None = None

    # -- the NSM API

    def request(self, req: object) -> object:
        return decode_response(self.request_raw(encode_request(req)))

    def request_raw(self, data: bytes) -> bytes:
        """CBOR request bytes in, CBOR response bytes out: what the /dev/nsm ioctl carries."""
        if len(data) > NSM_REQUEST_MAX:
            resp: object = {"Error": "InputTooLarge"}
        else:
            try:
                resp = self._dispatch(decode_exact(data))
            except _Refused as r:
                resp = {"Error": r.code}
            except (cbor2.CBORError, ValueError):
                resp = {"Error": "InvalidOperation"}
        out = cbor2.dumps(resp)
        if len(out) > NSM_RESPONSE_MAX:
            out = cbor2.dumps({"Error": "BufferTooSmall"})
        return out

    @property
    def root_pem(self) -> bytes:
        return self._pki.cas[0].cert.public_bytes(serialization.Encoding.PEM)

    @property
    def pcrs(self) -> dict[int, bytes]:
        return dict(enumerate(self._pcrs))

    # -- dispatch

    def _dispatch(self, req: Any) -> object:
        if req == "DescribeNSM":
            return {
                "DescribeNSM": {
                    "version_major": VERSION[0],
                    "version_minor": VERSION[1],
                    "version_patch": VERSION[2],
                    "module_id": self.module_id,
                    "max_pcrs": MAX_PCRS,
                    "locked_pcrs": sorted(self._locked),
                    "digest": "SHA384",
                }
            }
        if req == "GetRandom":
            return {"GetRandom": {"random": os.urandom(NSM_RANDOM_MAX)}}
        if not (isinstance(req, dict) and len(req) == 1):
            raise _Refused("InvalidOperation")
        ((op, body),) = req.items()
        if not isinstance(body, dict):
            raise _Refused("InvalidOperation")
        if op == "DescribePCR":
            i = self._index(body)
            return {"DescribePCR": {"lock": i in self._locked, "data": self._pcrs[i]}}
        if op == "ExtendPCR":
            i = self._index(body)
            data = body.get("data")
            if not isinstance(data, bytes):
                raise _Refused("InvalidArgument")
            if i in self._locked:
                raise _Refused("ReadOnlyIndex")
            self._pcrs[i] = pcr_extend(self._pcrs[i], data)
            return {"ExtendPCR": {"data": self._pcrs[i]}}
        if op == "LockPCR":
            i = self._index(body)
            if i in self._locked:
                raise _Refused("ReadOnlyIndex")
            self._locked.add(i)
            return "LockPCR"
        if op == "LockPCRs":
            n = body.get("range")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise _Refused("InvalidArgument")
            if n > MAX_PCRS:
                raise _Refused("InvalidIndex")
            self._locked.update(range(n))
            return "LockPCRs"
        if op == "Attestation":
            return {"Attestation": {"document": self._attest(body)}}
        raise _Refused("InvalidOperation")

    @staticmethod
    def _index(body: dict) -> int:
        i = body.get("index")
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise _Refused("InvalidArgument")
        if i >= MAX_PCRS:
            raise _Refused("InvalidIndex")
        return i

    # -- attestation

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC)

    def _signer(self, now: dt.datetime) -> tuple[_Ca, _Ca]:
        """The leaf to sign with at `now` and its issuer, minting fresh ones when needed."""
        leaf, inst = self._leaf, self._instance_ca
        if (
            leaf is None
            or inst is None
            or not (leaf.cert.not_valid_before_utc <= now < leaf.cert.not_valid_after_utc - LEAF_RENEW_BEFORE)
        ):
            start = now.replace(microsecond=0)
            if inst is None or inst.cert.not_valid_after_utc < now + LEAF_LIFETIME:
                key = ec.generate_private_key(ec.SECP384R1())
                cert = _issue(
                    f"{self.instance_id}.local.soft-nsm.clave",
                    key,
                    self._pki.cas[-1],
                    start - dt.timedelta(hours=1),
                    dt.timedelta(days=1),
                    0,
                )
                inst = self._instance_ca = _Ca(key, cert)
            key = ec.generate_private_key(ec.SECP384R1())
            cert = _issue(f"{self.module_id}.local.clave", key, inst, start, LEAF_LIFETIME, None, ca=False)
            leaf = self._leaf = _Ca(key, cert)
        return leaf, inst

    def _attest(self, body: dict) -> bytes:
        fields: dict[str, bytes | None] = {}
        for name in ("public_key", "user_data", "nonce"):
            value = body.get(name)
            if value is not None and not isinstance(value, bytes):
                raise _Refused("InvalidArgument")
            if value is not None and len(value) > NSM_FIELD_MAX:
                raise _Refused("InputTooLarge")
            fields[name] = value
        now = self._now()
        leaf, instance_ca = self._signer(now)
        der = serialization.Encoding.DER
        # cabundle is root first, the leaf's issuer last, as on real hardware.
        chain = [ca.cert.public_bytes(der) for ca in (*self._pki.cas, instance_ca)]
        # Key order is AttestationDoc's field order in nsm-api; pcrs lists every locked register.
        doc: dict[str, Any] = {
            "module_id": self.module_id,
            "digest": "SHA384",
            "timestamp": int(now.timestamp() * 1000),
            "pcrs": {i: self._pcrs[i] for i in sorted(self._locked)},
            "certificate": leaf.cert.public_bytes(der),
            "cabundle": chain,
            **fields,
        }
        payload = self._encode_payload(doc)
        to_sign = cbor2.dumps(["Signature1", PROTECTED_ES384, b"", payload])
        r, s = decode_dss_signature(leaf.key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return cbor2.dumps([PROTECTED_ES384, {}, payload, signature])

    def _encode_payload(self, doc: dict[str, Any]) -> bytes:
        if self._definite:
            return cbor2.dumps(doc)
        # Current hardware emits the outer map with indefinite length (bf … ff), inner items definite.
        return b"\xbf" + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in doc.items()) + b"\xff"
