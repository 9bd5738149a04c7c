"""The Nitro Security Module: its CBOR message API, typed helpers, and the /dev/nsm client.

Every NSM speaks the messages of aws-nitro-enclaves-nsm-api `src/api/mod.rs` as serde encodes them:
externally tagged enums, so a unit variant is a bare text string (`"DescribeNSM"`, `"GetRandom"`, the
responses `"LockPCR"`/`"LockPCRs"`) and a struct variant is a one-entry map
(`{"DescribePCR": {"index": 3}}`). Errors come back as `{"Error": "<ErrorCode>"}` with a successful
ioctl. `Nsm.request` takes and returns those decoded CBOR values, so the device and the software NSM
(`soft_nsm.py`) are interchangeable and the helpers below are the only place that interprets them.
"""

from __future__ import annotations

import ctypes
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cbor2

from clave.core.errors import InfraError

NSM_DEVICE = "/dev/nsm"
# _IOWR(0x0A, 0, struct nsm_raw) with a 32-byte struct: include/uapi/linux/nsm.h.
NSM_IOCTL_RAW = 0xC0200A00
NSM_REQUEST_MAX = 0x1000  # the driver refuses larger requests with EMSGSIZE
NSM_RESPONSE_MAX = 0x3000  # the response buffer size every NSM client passes
NSM_RANDOM_MAX = 256  # one GetRandom answers at most this many bytes (nsm-lib)
NSM_FIELD_MAX = 1024  # user_data / nonce / public_key, as the hardware check tool uses them

ERROR_CODES = frozenset(
    {
        "InvalidArgument",
        "InvalidIndex",
        "InvalidResponse",
        "ReadOnlyIndex",
        "InvalidOperation",
        "BufferTooSmall",
        "InputTooLarge",
        "InternalError",
    }
)


class NsmError(InfraError):
    """The NSM refused or failed a request; `nsm_code` is its ErrorCode (or a local reason)."""

    remedy = "restart the enclave; if it persists, the enclave image and its NSM driver do not match"

    def __init__(self, nsm_code: str, message: str = "", remedy: str = "") -> None:
        super().__init__(message or f"NSM error: {nsm_code}", remedy)
        self.nsm_code = nsm_code


class Nsm(Protocol):
    """Anything that answers NSM requests: decoded CBOR value in, decoded CBOR value out."""

    def request(self, req: object) -> object: ...


# --- CBOR framing shared by every NSM implementation -------------------------------------------


def encode_request(req: object) -> bytes:
    data = cbor2.dumps(req)
    if len(data) > NSM_REQUEST_MAX:
        # The kernel would fail the ioctl with EMSGSIZE; say it the NSM way for both implementations.
        raise NsmError("InputTooLarge", f"NSM request is {len(data)} bytes, limit {NSM_REQUEST_MAX}")
    return data


def decode_exact(data: bytes) -> Any:
    """Decode one CBOR item that must fill `data` (cbor2.loads silently ignores trailing bytes)."""
    fp = io.BytesIO(data)
    value = cbor2.CBORDecoder(fp).decode()
    if fp.tell() != len(data):
        raise ValueError("trailing bytes after CBOR item")
    return value


def decode_response(data: bytes) -> object:
    try:
        return decode_exact(data)
    except (cbor2.CBORError, ValueError) as exc:
        raise NsmError("InvalidResponse", f"NSM answered undecodable CBOR: {exc}") from exc


# --- typed helpers -------------------------------------------------------------------------------


def _call(nsm: Nsm, req: object, expect: str) -> Any:
    resp = nsm.request(req)
    if isinstance(resp, dict) and "Error" in resp:
        code = resp["Error"]
        raise NsmError(str(code), f"NSM refused {expect}: {code}")
    if resp == expect:  # unit responses ("LockPCR", "LockPCRs") are bare strings
        return None
    if isinstance(resp, dict) and len(resp) == 1 and expect in resp:
        return resp[expect]
    raise NsmError("InvalidResponse", f"NSM answered {expect} with an unexpected shape")


def _field(body: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get(name), kind):
        raise NsmError("InvalidResponse", f"NSM response lacks a valid {name!r}")
    return body[name]


@dataclass(frozen=True)
class NsmDescription:
    version: tuple[int, int, int]
    module_id: str
    max_pcrs: int
    locked_pcrs: frozenset[int]
    digest: str


def describe_nsm(nsm: Nsm) -> NsmDescription:
    body = _call(nsm, "DescribeNSM", "DescribeNSM")
    return NsmDescription(
        version=(
            _field(body, "version_major", int),
            _field(body, "version_minor", int),
            _field(body, "version_patch", int),
        ),
        module_id=_field(body, "module_id", str),
        max_pcrs=_field(body, "max_pcrs", int),
        locked_pcrs=frozenset(_field(body, "locked_pcrs", list)),
        digest=_field(body, "digest", str),
    )


def describe_pcr(nsm: Nsm, index: int) -> tuple[bool, bytes]:
    """Return (locked, value) of PCR `index`."""
    body = _call(nsm, {"DescribePCR": {"index": index}}, "DescribePCR")
    return _field(body, "lock", bool), _field(body, "data", bytes)


def extend_pcr(nsm: Nsm, index: int, data: bytes) -> bytes:
    """Extend PCR `index` with `data`; returns the new value SHA384(old || data)."""
    body = _call(nsm, {"ExtendPCR": {"index": index, "data": bytes(data)}}, "ExtendPCR")
    return _field(body, "data", bytes)


def lock_pcr(nsm: Nsm, index: int) -> None:
    _call(nsm, {"LockPCR": {"index": index}}, "LockPCR")


def lock_pcrs(nsm: Nsm, range_: int) -> None:
    """Lock PCRs [0, range_)."""
    _call(nsm, {"LockPCRs": {"range": range_}}, "LockPCRs")


def attestation(
    nsm: Nsm,
    *,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    public_key: bytes | None = None,
) -> bytes:
    """Ask for a signed attestation document (untagged COSE_Sign1 bytes)."""
    for name, value in (("user_data", user_data), ("nonce", nonce), ("public_key", public_key)):
        if value is not None and len(value) > NSM_FIELD_MAX:
            raise NsmError(
                "InputTooLarge", f"attestation {name} is {len(value)} bytes, limit {NSM_FIELD_MAX}"
            )
    req = {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}}
    body = _call(nsm, req, "Attestation")
    return _field(body, "document", bytes)


def get_random(nsm: Nsm, n: int) -> bytes:
    """Return exactly `n` bytes from the NSM's RNG (it answers at most 256 per call)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    out = bytearray()
    while len(out) < n:
        chunk = _field(_call(nsm, "GetRandom", "GetRandom"), "random", bytes)
        if not chunk:
            raise NsmError("InternalError", "NSM GetRandom returned no bytes")
        out += chunk
    return bytes(out[:n])


# --- the real device -------------------------------------------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class NsmRaw(ctypes.Structure):
    """struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; } (32 bytes)."""

    _fields_ = [("request", _Iovec), ("response", _Iovec)]


IoctlFn = Callable[[int, int, Any], Any]


def raw_call(fd: int, request: bytes, ioctl: IoctlFn) -> bytes:
    """One NSM_IOCTL_RAW round trip: the kernel reads `request` and rewrites `response.len`."""
    if len(request) > NSM_REQUEST_MAX:
        raise NsmError("InputTooLarge", f"NSM request is {len(request)} bytes, limit {NSM_REQUEST_MAX}")
    # Both buffers must stay referenced until ioctl returns: the struct holds bare addresses.
    req_buf = ctypes.create_string_buffer(request, len(request))
    resp_buf = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
    msg = NsmRaw(
        _Iovec(ctypes.addressof(req_buf), len(request)),
        _Iovec(ctypes.addressof(resp_buf), NSM_RESPONSE_MAX),
    )
    try:
        # A ctypes object is a writable buffer, so fcntl.ioctl mutates `msg` in place (mutate_flag).
        ioctl(fd, NSM_IOCTL_RAW, msg)
    except OSError as exc:
        raise NsmError(
            "InternalError", f"NSM ioctl failed: {exc}", remedy="check that /dev/nsm is the Nitro NSM device"
        ) from exc
    size = msg.response.len
    if size > NSM_RESPONSE_MAX:
        raise NsmError("BufferTooSmall", f"NSM response of {size} bytes overflows the buffer")
    return resp_buf.raw[:size]


class DeviceNsm:
    """The NSM of a real Nitro Enclave, over /dev/nsm. Only usable inside an enclave."""

    def __init__(self, path: str = NSM_DEVICE, *, ioctl: IoctlFn | None = None) -> None:
        if ioctl is None:
            import fcntl  # POSIX only; imported here so the module loads anywhere

            ioctl = fcntl.ioctl
        self._ioctl = ioctl
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise NsmError(
                "InternalError",
                f"cannot open {path}: {exc.strerror}",
                remedy="run inside a Nitro Enclave, or use the software NSM for local runs",
            ) from exc

    def request(self, req: object) -> object:
        return decode_response(raw_call(self._fd, encode_request(req), self._ioctl))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DeviceNsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
