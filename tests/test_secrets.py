"""No plaintext key or password reaches the parent's disk or logs.

Independent of test order: the shared `clave up` is searched for every secret the tests handed it when
the session fixture stops it (tests/conftest.py); the tests here make their own imports, exports and
signatures and search right away, on their own `clave up` (slow tier) and on the in-process stack (fast
tier). The searcher itself is proved on planted leaks: it must find them, and its report must not quote
them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from eth_account import Account
from eth_keyfile import create_keyfile_json

from clave.core.envelope import seal_to
from clave.sidecar.trust.attestation import PcrPolicy, load_root, verify_attestation
from tests.clients import import_key
from tests.inproc import running_stack
from tests.secrets_search import KnownSecrets, clave_haystack, describe, files_under, needles, search
from tests.stack import Admin, ClaveProcess

KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


def _forms(secret: str) -> list[bytes]:
    raw = bytes.fromhex(secret)
    return [secret.encode(), secret.upper().encode(), raw, base64.b64encode(raw)]


# --- the searcher, on planted leaks ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["hex", "upper-case hex", "raw bytes", "base64", "0x-prefixed in a log line"])
def test_the_searcher_finds_a_planted_key_in_every_form(tmp_path: Path, form: str) -> None:
    secrets = KnownSecrets()
    secrets.add("an unrelated password 1")
    secrets.add(KEY_HEX)
    raw = bytes.fromhex(KEY_HEX)
    planted = {"hex": KEY_HEX.encode(), "upper-case hex": KEY_HEX.upper().encode(), "raw bytes": raw,
               "base64": base64.b64encode(raw), "0x-prefixed in a log line": f"key=0x{KEY_HEX}\n".encode()}[form]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "enclave.log").write_bytes(b"2026-01-01 enclave INFO started\n" + planted + b"\nmore\n")
    (tmp_path / "keystore.sqlite").write_bytes(os.urandom(4096))
    leaks = search(files_under(tmp_path), secrets)
    assert leaks, f"a planted key ({form}) was not found"
    assert {leak.where for leak in leaks} == {"logs/enclave.log"}
    assert all(leak.description.startswith("key #2") for leak in leaks)
    report = describe(leaks)
    for value in _forms(KEY_HEX):
        assert value.decode(errors="replace") not in report, "the report must not quote the secret"


def test_the_searcher_finds_a_planted_password_and_names_only_its_description(tmp_path: Path) -> None:
    secrets = KnownSecrets()
    secrets.update({"first password 1", "pässword two"})
    secrets.add("first password 1")  # registering twice changes nothing
    assert len(secrets) == 2 and "pässword two" in secrets
    (tmp_path / "a.log").write_text("nothing here\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"p": "pässword two"}, ensure_ascii=False))
    leaks = search(files_under(tmp_path), secrets)
    assert [(leak.description, leak.where) for leak in leaks] == [(secrets.label("pässword two"), "sub/b.json")]
    assert describe(leaks) == f"{secrets.label('pässword two')} in sub/b.json" and "pässword" not in describe(leaks)
    assert search(files_under(tmp_path), KnownSecrets()) == []


def test_the_session_check_searches_output_logs_and_datadir(tmp_path: Path) -> None:
    """`clave_haystack` is what the `clave` fixture searches at the end of the session."""
    datadir = tmp_path / "clave0"
    (datadir / "logs").mkdir(parents=True)
    (datadir / "logs" / "kms.log").write_text("quiet\n")
    (datadir / "keystore.sqlite").write_bytes(b"SQLite format 3\x00" + bytes.fromhex(KEY_HEX))
    fake = SimpleNamespace(output=["clave ready\n", "imported with password hunter22\n"], datadir=datadir)
    secrets = KnownSecrets()
    secrets.update({KEY_HEX, "password hunter22"})
    leaks = search(clave_haystack(fake), secrets)  # type: ignore[arg-type]
    assert {(leak.description.split(" (")[0], leak.where) for leak in leaks} == {
        (secrets.label("password hunter22"), "clave up output"), (secrets.label(KEY_HEX), "clave0/keystore.sqlite")}
    assert len(needles(secrets)) == 6


# --- the in-process stack (fast) ---------------------------------------------------------------------------


async def test_in_process_import_export_and_sign_leave_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="clave")
    secrets = KnownSecrets()
    key = Account.create().key
    password, export_password = "in-process import password 4", "in-process export password 8"
    admin = Account.create()
    secrets.update({key.hex(), password, export_password, admin.key.hex()})
    async with running_stack(tmp_path / "stack", admins=[bytes.fromhex(admin.address[2:])]) as stack:
        nonce = os.urandom(32)
        document = bytes.fromhex((await stack.rpc("clave_attest", "0x" + nonce.hex()))[2:])
        public_key = verify_attestation(document, root=load_root(stack.root_pem), now_ms=int(time.time() * 1000),
                                        pcr_policy=PcrPolicy(allow_debug=True), expected_nonce=nonce).public_key
        assert public_key is not None
        keyfile = json.dumps(create_keyfile_json(key, password.encode(), kdf="scrypt", iterations=1 << 12))
        wrong = seal_to(public_key, {"keyfile": keyfile, "password": password + "!"})
        with pytest.raises(Exception, match="could not decrypt"):
            await stack.rpc("clave_importKeyfile", "0x" + wrong.hex())
        sealed = seal_to(public_key, {"keyfile": keyfile, "password": password})
        address = await stack.rpc("clave_importKeyfile", "0x" + sealed.hex(), True)
        export = seal_to(public_key, {"password": export_password})
        (tmp_path / "exported.json").write_text(await stack.export(address, "0x" + export.hex(), admin))
        await stack.rpc("eth_sign", address, "0x00")
        await stack.http_rpc("eth_sign", address, "0x01")
    haystack = files_under(tmp_path / "stack") + [("captured log records", caplog.text.encode())]
    names = [name for name, _ in haystack]
    assert "clave/keystore.sqlite" in names and "clave/logs/sidecar.log" in names
    assert b"eth_sign" in dict(haystack)["clave/logs/sidecar.log"], "the request log was written"
    leaks = search(haystack, secrets)
    assert not leaks, f"secrets found on the parent: {describe(leaks)}"
    assert len(needles(secrets)) >= 6


# --- its own `clave up` (slow) ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_key_or_password_in_logs_or_datadir(tmp_path: Path) -> None:
    admin = Admin(tmp_path / "admin")
    clave = ClaveProcess(tmp_path / "clave", extra=["--admin", admin.address])
    clave.start()
    try:
        key = Account.create().key
        password = "secret-search password 7"
        address = import_key(clave, key, tmp_path, exportable=True, password=password)
        pw = tmp_path / "export-pw"
        export_password = "secret-search export 9"
        pw.write_text(export_password)
        result = clave.cli("account", "export", address, "--password-file", str(pw), "--out", str(tmp_path / "out.json"),
                           *admin.export_args)
        assert result.returncode == 0, result.stderr
        clave.rpc("eth_sign", address, "0x00")
    finally:
        clave.stop()
    secrets = KnownSecrets()
    secrets.update({key.hex(), password, export_password, admin.key.hex(), Admin.PASSWORD})
    haystack = clave_haystack(clave)
    assert len(haystack) > 3 and any("keystore.sqlite" in name for name, _ in haystack)
    leaks = search(haystack, secrets)
    assert not leaks, f"secrets found on the parent: {describe(leaks)}"
    assert len(needles(secrets)) >= 6
