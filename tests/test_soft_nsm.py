"""The software NSM against the sidecar's verifier, real Nitro documents, and the NSM message API.

Oracles not written here: the real attestation document in ../shared/vectors/nitro (key order, COSE
shape, and the PCR4 formula checked against hardware output), and `sidecar.attestation`, the verifier
production uses. The /dev/nsm client is driven through a fake ioctl that reads and writes the buffers
the ctypes struct points at, exactly as the kernel driver does.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from clave.dev.image import build_app_dir
from clave.dev.soft_nsm import SoftwareNsm, measure_code, root_pem
from clave.enclave.nitro import nsm as api
from clave.enclave.nitro.nsm import NSM_IOCTL_RAW, DeviceNsm, NsmError, NsmRaw
from clave.sidecar.trust.attestation import AttestationError, load_root, verify_attestation
from tests.vectors import vector

REAL_DOC = "nitro/aws_nitro_document.cbor"
NINE_KEYS = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]
T0 = 1_800_000_000.0  # a fixed clock: 2027-01-15


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _payload_keys(payload: bytes) -> list[str]:
    return list(cbor2.loads(payload).keys())


def _verify(doc: bytes, state: Path, now: float = T0, **kw: Any):  # type: ignore[no-untyped-def]
    root = load_root(root_pem(state))
    return verify_attestation(doc, root=root, now_ms=int(now * 1000), **kw)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "nsm"


@pytest.fixture
def nsm(state: Path) -> SoftwareNsm:
    return SoftwareNsm(state, clock=Clock())


# --- document shape -----------------------------------------------------------------------------------


def test_document_has_nitros_exact_cose_shape(nsm: SoftwareNsm) -> None:
    doc = api.attestation(nsm)
    envelope = cbor2.loads(doc)
    assert doc[:1] == b"\x84"  # untagged array of 4, like the NSM (no 0xd2)
    protected, unprotected, payload, signature = envelope
    assert protected == bytes.fromhex("a1013822") and doc[1:6] == bytes.fromhex("44a1013822")
    assert unprotected == {}
    assert len(signature) == 96 and doc.endswith(signature) and doc[-98:-96] == b"\x58\x60"
    # The outer payload map is indefinite-length (current hardware), inner items definite.
    assert payload[:1] == b"\xbf" and payload[-1:] == b"\xff"
    assert _payload_keys(payload) == NINE_KEYS
    fields = cbor2.loads(payload)
    assert fields["digest"] == "SHA384"
    assert fields["timestamp"] == int(T0 * 1000)
    assert fields["public_key"] is None and fields["user_data"] is None and fields["nonce"] is None
    assert b"\x6apublic_key\xf6\x69user_data\xf6\x65nonce\xf6\xff" in payload
    assert sorted(fields["pcrs"]) == list(range(16)) and all(len(v) == 48 for v in fields["pcrs"].values())
    assert payload.index(b"\x64pcrs\xb0") > 0  # pcrs: a definite map of 16


def test_key_order_and_envelope_match_a_real_nitro_document(nsm: SoftwareNsm) -> None:
    real = vector(REAL_DOC).read_bytes()
    mine = api.attestation(nsm, nonce=b"n" * 32, user_data=b"u" * 32)
    real_env, my_env = cbor2.loads(real), cbor2.loads(mine)
    assert real[:6] == mine[:6]  # 84 44 a1013822
    assert [type(x) for x in real_env] == [type(x) for x in my_env]
    assert real_env[0] == my_env[0] and real_env[1] == my_env[1] and len(real_env[3]) == len(my_env[3])
    assert _payload_keys(real_env[2]) == _payload_keys(my_env[2])
    real_fields, my_fields = cbor2.loads(real_env[2]), cbor2.loads(my_env[2])
    assert len(real_fields["cabundle"]) == len(my_fields["cabundle"]) == 4
    assert sorted(real_fields["pcrs"]) == sorted(my_fields["pcrs"])


def test_definite_payload_variant_is_the_older_a9_form(state: Path) -> None:
    doc = api.attestation(SoftwareNsm(state, clock=Clock(), definite_payload=True))
    payload = cbor2.loads(doc)[2]
    assert payload[:1] == b"\xa9" and _payload_keys(payload) == NINE_KEYS
    _verify(doc, state)


def test_documents_verify_with_the_sidecar_verifier(nsm: SoftwareNsm, state: Path) -> None:
    doc = api.attestation(nsm, user_data=b"ud", nonce=b"challenge", public_key=b"\x30spki")
    verified = _verify(doc, state, expected_nonce=b"challenge", max_age_ms=1000)
    assert verified.user_data == b"ud" and verified.public_key == b"\x30spki"
    assert verified.module_id == nsm.module_id and verified.module_id.startswith(nsm.instance_id + "-enc")
    assert verified.pcrs == {i: v for i, v in nsm.pcrs.items() if i < 16}
    root = load_root(root_pem(state))
    assert verified.cabundle[0] == root.public_bytes(Encoding.DER)
    leaf = x509.load_der_x509_certificate(verified.certificate)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=3)


def test_a_foreign_root_refuses_the_document(nsm: SoftwareNsm, tmp_path: Path) -> None:
    doc = api.attestation(nsm)
    other = load_root(root_pem(tmp_path / "other"))
    with pytest.raises(AttestationError, match="pinned root"):
        verify_attestation(doc, root=other, now_ms=int(T0 * 1000))


def test_any_payload_edit_breaks_the_signature(nsm: SoftwareNsm, state: Path) -> None:
    doc = bytearray(api.attestation(nsm))
    pcr0 = nsm.pcrs[0]
    at = bytes(doc).index(pcr0)
    doc[at] ^= 1
    with pytest.raises(AttestationError, match="signature"):
        _verify(bytes(doc), state)


def test_leaf_is_per_process_and_renewed_before_it_expires(state: Path) -> None:
    clock = Clock()
    a, b = SoftwareNsm(state, clock=clock), SoftwareNsm(state, clock=clock)

    def leaf(n: SoftwareNsm) -> bytes:
        return cbor2.loads(cbor2.loads(api.attestation(n))[2])["certificate"]

    first = leaf(a)
    assert first != leaf(b)  # fresh leaf per process
    assert leaf(a) == first  # reused while fresh
    clock.now += 3 * 3600 - 60  # inside the renewal window
    renewed = api.attestation(a)
    assert cbor2.loads(cbor2.loads(renewed)[2])["certificate"] != first
    _verify(renewed, state, now=clock.now)


def test_pki_is_persisted_with_private_modes(state: Path) -> None:
    first = SoftwareNsm(state, clock=Clock())
    second = SoftwareNsm(state, clock=Clock())
    assert first.root_pem == second.root_pem == (state / "root.pem").read_bytes() == root_pem(state)
    assert first.instance_id == second.instance_id and first.module_id != second.module_id
    for name in ("root.key", "regional.key", "zonal.key", "root.pem", "instance-id"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


# --- PCRs ------------------------------------------------------------------------------------------


def test_a_code_change_changes_pcr0_and_pcr2_but_not_pcr1(tmp_path: Path) -> None:
    code = build_app_dir(tmp_path / "app")
    before = SoftwareNsm(tmp_path / "s1", code_root=code, clock=Clock()).pcrs
    assert before[0] == measure_code(code)[0] and any(before[0])
    with (code / "clave" / "core" / "errors.py").open("a") as f:
        f.write("\n# one more line\n")
    after = SoftwareNsm(tmp_path / "s2", code_root=code, clock=Clock()).pcrs
    assert after[0] != before[0] and after[2] != before[2] and after[1] == before[1]
    # Renaming a file (same bytes) is a different application too; caches are not code.
    (code / "clave" / "core" / "errors.py").rename(code / "clave" / "core" / "errors2.py")
    assert measure_code(code)[0] != after[0]
    (code / "__pycache__").mkdir(exist_ok=True)
    (code / "__pycache__" / "x.py").write_text("cache")
    renamed = measure_code(code)[0]
    assert measure_code(code)[0] == renamed


def test_the_default_measures_exactly_the_image_files(nsm: SoftwareNsm, tmp_path: Path) -> None:
    app = build_app_dir(tmp_path / "app")
    assert {i: nsm.pcrs[i] for i in (0, 1, 2)} == measure_code(app)
    assert measure_code(app) == measure_code(None)


def test_pcr4_is_computed_as_nitro_does_from_the_instance_id(tmp_path: Path) -> None:
    real = cbor2.loads(cbor2.loads(vector(REAL_DOC).read_bytes())[2])
    instance_id = real["module_id"].split("-enc")[0]
    mine = SoftwareNsm(tmp_path / "s", instance_id=instance_id, clock=Clock())
    assert mine.pcrs[4] == real["pcrs"][4]  # the hardware's own value for that instance


def test_pcr3_and_pcr8_are_zero_unless_a_role_and_a_signing_cert_are_given(tmp_path: Path) -> None:
    plain = SoftwareNsm(tmp_path / "a", clock=Clock())
    assert plain.pcrs[3] == plain.pcrs[8] == bytes(48)
    cert = b"\x30\x82 not really a certificate"
    arn = "arn:aws:iam::111122223333:role/x"
    signed = SoftwareNsm(tmp_path / "b", clock=Clock(), signing_cert=cert, role_arn=arn)
    zero = bytes(48)
    assert signed.pcrs[8] == hashlib.sha384(zero + hashlib.sha384(cert).digest()).digest()
    assert signed.pcrs[3] == hashlib.sha384(zero + arn.encode()).digest()


def test_debug_mode_reads_zero_pcr0_to_2(tmp_path: Path) -> None:
    debug = SoftwareNsm(tmp_path / "d", clock=Clock(), debug=True)
    assert debug.pcrs[0] == debug.pcrs[1] == debug.pcrs[2] == bytes(48)
    doc = api.attestation(debug)
    with pytest.raises(AttestationError, match="debug"):
        _verify(doc, tmp_path / "d")


def test_pcr_locking_and_extension_follow_nitro(nsm: SoftwareNsm, state: Path) -> None:
    for i in (0, 15):
        locked, _ = api.describe_pcr(nsm, i)
        assert locked
        with pytest.raises(NsmError) as exc:
            api.extend_pcr(nsm, i, b"x")
        assert exc.value.nsm_code == "ReadOnlyIndex"
    locked, value = api.describe_pcr(nsm, 16)
    assert not locked and value == bytes(48)
    new = api.extend_pcr(nsm, 16, b"app")
    assert new == hashlib.sha384(bytes(48) + b"app").digest()
    assert api.describe_pcr(nsm, 16) == (False, new)
    api.lock_pcr(nsm, 16)
    with pytest.raises(NsmError, match="ReadOnlyIndex"):
        api.lock_pcr(nsm, 16)
    with pytest.raises(NsmError, match="ReadOnlyIndex"):
        api.extend_pcr(nsm, 16, b"more")
    api.lock_pcrs(nsm, 18)
    assert api.describe_nsm(nsm).locked_pcrs == frozenset(range(18))
    fields = _verify(api.attestation(nsm), state)
    assert sorted(fields.pcrs) == list(range(18)) and fields.pcrs[16] == new
    for bad in (32, 1000):
        with pytest.raises(NsmError) as exc:
            api.describe_pcr(nsm, bad)
        assert exc.value.nsm_code == "InvalidIndex"


def test_describe_nsm(nsm: SoftwareNsm) -> None:
    raw = nsm.request("DescribeNSM")
    assert list(raw["DescribeNSM"]) == [  # type: ignore[index]
        "version_major",
        "version_minor",
        "version_patch",
        "module_id",
        "max_pcrs",
        "locked_pcrs",
        "digest",
    ]
    info = api.describe_nsm(nsm)
    assert info.max_pcrs == 32 and info.digest == "SHA384" and info.module_id == nsm.module_id
    assert info.locked_pcrs == frozenset(range(16))


# --- the message API -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"GetRandom": {}}, "InvalidOperation"),  # a unit variant is a bare string, as serde encodes it
        ("Bogus", "InvalidOperation"),
        ({"DescribePCR": {"index": "0"}}, "InvalidArgument"),
        ({"DescribePCR": {"index": -1}}, "InvalidArgument"),
        ({"ExtendPCR": {"index": 20, "data": "text"}}, "InvalidArgument"),
        ({"LockPCRs": {"range": 33}}, "InvalidIndex"),
        ({"Attestation": {"user_data": "text", "nonce": None, "public_key": None}}, "InvalidArgument"),
        ({"Attestation": {"user_data": b"u" * 1025, "nonce": None, "public_key": None}}, "InputTooLarge"),
        ({"DescribePCR": {"index": 0}, "LockPCR": {"index": 1}}, "InvalidOperation"),
    ],
)
def test_bad_requests_get_nsm_error_codes(nsm: SoftwareNsm, request_: object, code: str) -> None:
    assert nsm.request(request_) == {"Error": code}


def test_raw_requests_are_strict_cbor(nsm: SoftwareNsm) -> None:
    assert cbor2.loads(nsm.request_raw(cbor2.dumps("DescribeNSM") + b"\x00")) == {"Error": "InvalidOperation"}
    assert cbor2.loads(nsm.request_raw(b"\xff")) == {"Error": "InvalidOperation"}
    assert cbor2.loads(nsm.request_raw(b"\x40" * 5000)) == {"Error": "InputTooLarge"}
    with pytest.raises(NsmError, match="InputTooLarge|limit"):
        nsm.request({"ExtendPCR": {"index": 20, "data": b"x" * 5000}})


def test_helpers_reject_oversized_fields_before_asking(nsm: SoftwareNsm) -> None:
    with pytest.raises(NsmError) as exc:
        api.attestation(nsm, nonce=b"n" * 1025)
    assert exc.value.nsm_code == "InputTooLarge"


def test_get_random_collects_exactly_n_bytes(nsm: SoftwareNsm) -> None:
    raw = nsm.request("GetRandom")
    assert len(raw["GetRandom"]["random"]) == 256  # type: ignore[index]
    for n in (0, 1, 256, 600):
        assert len(api.get_random(nsm, n)) == n
    assert api.get_random(nsm, 32) != api.get_random(nsm, 32)


def test_error_responses_become_nsm_errors() -> None:
    class Broken:
        def request(self, req: object) -> object:
            return {"Error": "InternalError"}

    class Odd:
        def request(self, req: object) -> object:
            return {"Attestation": {"doc": b""}}

    with pytest.raises(NsmError) as exc:
        api.get_random(Broken(), 8)
    assert exc.value.nsm_code == "InternalError"
    with pytest.raises(NsmError) as exc:
        api.attestation(Odd())
    assert exc.value.nsm_code == "InvalidResponse"


# --- /dev/nsm client with a fake ioctl ----------------------------------------------------------------


class FakeDriver:
    """Does what drivers/misc/nsm.c does with struct nsm_raw, backed by a software NSM."""

    def __init__(self, backend: SoftwareNsm | None, *, claim_len: int | None = None) -> None:
        self.backend = backend
        self.claim_len = claim_len
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd: int, op: int, msg: Any) -> int:
        assert op == NSM_IOCTL_RAW and isinstance(msg, NsmRaw)
        self.calls.append((msg.request.len, msg.response.len))
        request = ctypes.string_at(msg.request.addr, msg.request.len)
        if self.backend is None:
            raise OSError(5, "Input/output error")
        response = self.backend.request_raw(request)
        assert len(response) <= msg.response.len
        ctypes.memmove(msg.response.addr, response, len(response))
        msg.response.len = self.claim_len if self.claim_len is not None else len(response)
        return 0


@pytest.fixture
def devnode(tmp_path: Path) -> str:
    path = tmp_path / "nsm-device"
    path.write_bytes(b"")
    return str(path)


def test_ioctl_struct_layout() -> None:
    assert ctypes.sizeof(NsmRaw) == 32
    # _IOWR(type 0x0A, nr 0, size 32): dir (read|write = 3) << 30 | size << 16 | type << 8 | nr
    assert NSM_IOCTL_RAW == (3 << 30) | (32 << 16) | (0x0A << 8) | 0


def test_device_client_round_trips_through_the_ioctl(nsm: SoftwareNsm, state: Path, devnode: str) -> None:
    driver = FakeDriver(nsm)
    with DeviceNsm(devnode, ioctl=driver) as dev:
        doc = api.attestation(dev, nonce=b"abc")
        assert _verify(doc, state, expected_nonce=b"abc").nonce == b"abc"
        assert len(api.get_random(dev, 300)) == 300
        assert api.describe_pcr(dev, 3)[0] is True
    assert all(resp == 0x3000 for _, resp in driver.calls)  # full response buffer offered each time


def test_device_client_refuses_oversized_requests_before_the_ioctl(devnode: str) -> None:
    driver = FakeDriver(None)
    with DeviceNsm(devnode, ioctl=driver) as dev, pytest.raises(NsmError, match="InputTooLarge|limit"):
        dev.request({"ExtendPCR": {"index": 16, "data": b"x" * 4096}})
    assert driver.calls == []


def test_device_client_maps_ioctl_and_response_failures(nsm: SoftwareNsm, devnode: str) -> None:
    with DeviceNsm(devnode, ioctl=FakeDriver(None)) as dev, pytest.raises(NsmError, match="ioctl"):
        dev.request("DescribeNSM")
    with DeviceNsm(devnode, ioctl=FakeDriver(nsm, claim_len=0x3001)) as dev, pytest.raises(NsmError) as exc:
        dev.request("DescribeNSM")
    assert exc.value.nsm_code == "BufferTooSmall"
    with DeviceNsm(devnode, ioctl=FakeDriver(nsm, claim_len=3)) as dev, pytest.raises(NsmError) as exc:
        dev.request("DescribeNSM")
    assert exc.value.nsm_code == "InvalidResponse"


def test_missing_device_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NsmError) as exc:
        DeviceNsm(str(tmp_path / "absent"))
    assert "software NSM" in exc.value.remedy
    assert not os.path.exists(tmp_path / "absent")
