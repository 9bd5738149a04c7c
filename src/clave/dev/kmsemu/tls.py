"""The KMS emulator's TLS identity: a dev CA made once per emulator datadir, and a server certificate under it.

The CA's private key signs the server certificate and is then dropped (never written), so no second
certificate can ever chain to this CA: a process that takes the emulator's port cannot pass for it, to the
enclave (which trusts this CA alone, and only in local mode) or to the sidecar's own KMS client.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clave.sidecar.secretfiles import write_private

CA_FILE = "ca.pem"
CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
VALIDITY = datetime.timedelta(days=3650)
NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")


def ca_path(kms_dir: Path) -> Path:
    return Path(kms_dir) / CA_FILE


def ensure_tls(kms_dir: Path) -> Path:
    """Make the dev CA and the server certificate unless both exist; returns the CA's path."""
    kms_dir = Path(kms_dir)
    kms_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if all((kms_dir / name).exists() for name in (CA_FILE, CERT_FILE, KEY_FILE)):
        return kms_dir / CA_FILE
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clave local KMS emulator dev CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clave local KMS emulator")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_private(
        kms_dir / KEY_FILE,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        replace=True,
    )
    write_private(kms_dir / CERT_FILE, cert.public_bytes(pem), replace=True)
    write_private(kms_dir / CA_FILE, ca.public_bytes(pem), replace=True)  # last: its presence means "complete"
    return kms_dir / CA_FILE


def server_context(kms_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(Path(kms_dir) / CERT_FILE, Path(kms_dir) / KEY_FILE)
    return context
