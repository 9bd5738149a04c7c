"""The enclave's TLS session to KMS, over a stream the parent relays (vsock-proxy on Nitro, TCP locally).

TLS ends here, so the parent relays bytes it can neither read nor forge. Which servers count as KMS is
fixed per NSM: the image (hardware NSM) trusts only the Amazon Trust Services roots of the pinned `certifi`
release (measured into the image with it) and only `kms[-fips].<region>.amazonaws.com[.cn]` names; the
software-NSM enclave of local mode trusts the dev CA that `clave up` made for the KMS emulator, and nothing
else.
"""

from __future__ import annotations

import http.client
import re
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path

from clave.core.errors import RequestError
from clave.enclave.kms import MAX_ANSWER, PreparedCall
from clave.link.sockets import Address, connect_blocking

AWS_KMS_HOST = re.compile(r"^kms(-fips)?\.[a-z]{2}(-[a-z]+)+-\d+\.amazonaws\.com(\.cn)?$")
# KMS's certificates chain to Amazon Trust Services (Amazon Root CA 1–4, cross-signed by Starfield
# Services G2 for old clients). Trusting the whole public bundle would let any CA that a parent could get a
# certificate from (for a look-alike name it registers) stand in for KMS.
AMAZON_ROOTS = frozenset(
    {
        "Amazon Root CA 1",
        "Amazon Root CA 2",
        "Amazon Root CA 3",
        "Amazon Root CA 4",
        "Starfield Services Root Certificate Authority - G2",
    }
)
TIMEOUT = 30.0
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


class KmsTlsError(RequestError):
    """The exchange with KMS failed in a way that retrying the same way cannot fix (not KMS, or no TLS)."""


class KmsTransport:
    """Sends one prepared call through a proxy address and returns (HTTP status, body)."""

    def __init__(self, context: ssl.SSLContext, allowed_host: Callable[[str], bool], *, timeout: float = TIMEOUT) -> None:
        self._context = context
        self._allowed_host = allowed_host
        self._timeout = timeout

    def check_endpoint(self, endpoint: str) -> None:
        if not isinstance(endpoint, str) or not self._allowed_host(endpoint):
            raise RequestError(f"endpoint: {endpoint!r} is not a KMS endpoint this enclave trusts")

    def exchange(self, proxy: Address, call: PreparedCall, headers: dict[str, str]) -> tuple[int, bytes]:
        self.check_endpoint(call.endpoint)
        connection = _ProxiedHttps(call.server_name, proxy, self._context, self._timeout)
        try:
            connection.request("POST", "/", body=call.body, headers=headers)
            response = connection.getresponse()
            body = response.read(MAX_ANSWER + 1)
        except ssl.SSLCertVerificationError as exc:
            raise KmsTlsError(f"KMS endpoint {call.endpoint}: its certificate is not trusted ({exc.verify_message})") from None
        except ssl.SSLError as exc:
            raise KmsTlsError(f"KMS endpoint {call.endpoint}: TLS failed ({exc.reason or exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise KmsTlsError(f"KMS endpoint {call.endpoint} through {proxy}: {type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        if len(body) > MAX_ANSWER:
            raise KmsTlsError(f"KMS endpoint {call.endpoint}: answer larger than {MAX_ANSWER} bytes")
        return response.status, body


class _ProxiedHttps(http.client.HTTPSConnection):
    """HTTPS whose TCP leg is the parent's proxy stream; the TLS server name is KMS's."""

    def __init__(self, server_name: str, proxy: Address, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(server_name, 443, context=context, timeout=timeout)
        self._proxy = proxy
        self._tls = context

    def connect(self) -> None:
        raw = connect_blocking(self._proxy, self.timeout if isinstance(self.timeout, float) else TIMEOUT)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _context(cadata: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname check and CERT_REQUIRED by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=cadata)
    return context


def amazon_roots(bundle: bytes) -> str:
    """The Amazon Trust Services roots of a PEM bundle (certifi's), as PEM."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    found: dict[str, str] = {}
    for block in _PEM.findall(bundle):
        with warnings.catch_warnings():  # the public bundle has old roots that cryptography grumbles about
            warnings.simplefilter("ignore")
            cert = x509.load_pem_x509_certificate(block)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        if name in AMAZON_ROOTS:
            found[name] = block.decode()
    missing = AMAZON_ROOTS - found.keys()
    if missing:
        raise RuntimeError(f"the CA bundle lacks {', '.join(sorted(missing))}")
    return "\n".join(found[name] for name in sorted(found)) + "\n"


def aws_transport() -> KmsTransport:
    """The image's transport: Amazon's roots from the pinned certifi, AWS KMS host names only."""
    import certifi

    return KmsTransport(
        _context(amazon_roots(Path(certifi.where()).read_bytes())),
        lambda endpoint: AWS_KMS_HOST.match(endpoint) is not None,
    )


def dev_transport(ca_pem: bytes) -> KmsTransport:
    """Local mode's transport: the KMS emulator's dev CA only (whatever name its certificate carries)."""
    return KmsTransport(_context(ca_pem.decode()), lambda endpoint: bool(endpoint) and len(endpoint) < 256)
