"""Bad input and failures: each gets a clear error, the service keeps running, no record is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.accounts import new_account
from tests.clients import light_keyfile
from tests.stack import ClaveProcess, RpcFailure
from tests.vectors import vector

pytestmark = pytest.mark.slow  # every test here starts `clave up` (or other processes) itself

GOOD = {
    "UTC--2016-03-22T12-57-55.920751759Z--7ef5a6135f1fd6a02593eedc869c6d41d934aef8": "0x7ef5a6135f1fd6a02593eedc869c6d41d934aef8",
    "aaa": "0xf466859ead1932d743d622cb74fc058882e8648a",
    "zzz": "0x289d485d9771714cce91d3393d764e1311907acc",
}


def _record_count(clave: ClaveProcess) -> int:
    with sqlite3.connect(clave.datadir / "keystore.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def test_import_geth_keystore_directory(clave: ClaveProcess, tmp_path: Path) -> None:
    keystore = tmp_path / "keystore"
    shutil.copytree(vector("geth/keystore"), keystore)
    (keystore / "swapfile~").write_text("{}")  # geth skips backups; the vector dir cannot hold one
    password = tmp_path / "pw"
    password.write_text("foobar\n")
    result = clave.cli("account", "import", str(keystore), "--password-file", str(password))
    assert result.returncode == 1  # some files were bad
    for name, address in GOOD.items():
        assert f"Imported {address} from {keystore / name}" in result.stdout
    for bad in ("no-address", "garbage", "empty", "zero"):
        assert f"{keystore / bad}:" in result.stderr, bad
    # geth skips "no-address" (its scan needs the field); clave decrypts it like a foundry keyfile, after the
    # files that name their address, and finds "aaa"'s key again.
    assert f"{keystore / 'no-address'}: account already exists: 0xf466859ead1932d743d622cb74fc058882e8648a" in (
        result.stderr), result.stderr
    for skipped in (".hiddenfile", "swapfile~", "foo"):
        assert str(keystore / skipped) not in result.stderr + result.stdout
    listed = clave.rpc("account_list")
    assert all(address in listed for address in GOOD.values())
    # importing the same key again is refused by name and changes nothing
    before = _record_count(clave)
    again = clave.cli("account", "import", str(keystore / "aaa"), "--password-file", str(password))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert _record_count(clave) == before


def test_wrong_password_and_corrupt_keyfile_are_named(clave: ClaveProcess, tmp_path: Path) -> None:
    key = Account.create().key
    keyfile = light_keyfile(key, "the right password", tmp_path, "good.json")
    wrong = tmp_path / "wrong-pw"
    wrong.write_text("not the password")
    before = _record_count(clave)
    result = clave.cli("account", "import", str(keyfile), "--password-file", str(wrong))
    assert result.returncode == 1
    assert f"{keyfile}: could not decrypt key with given password" in result.stderr

    corrupt = tmp_path / "corrupt.json"
    data = json.loads(keyfile.read_text())
    data["crypto"]["ciphertext"] = data["crypto"]["ciphertext"][:-4]
    corrupt.write_text(json.dumps(data))
    right = tmp_path / "right-pw"
    right.write_text("the right password")
    result = clave.cli("account", "import", str(corrupt), "--password-file", str(right))
    assert result.returncode == 1 and f"{corrupt}:" in result.stderr

    truncated = tmp_path / "truncated.json"
    truncated.write_text(keyfile.read_text()[:40])
    result = clave.cli("account", "import", str(truncated), "--password-file", str(right))
    assert result.returncode == 1 and f"{truncated}: skipped: not a JSON keyfile" in result.stderr

    missing = clave.cli("account", "import", str(tmp_path / "nope.json"), "--password-file", str(right))
    assert missing.returncode != 0 and "nope.json: no such file" in missing.stderr
    assert _record_count(clave) == before
    assert clave.rpc("account_version") == "6.1.0"


def _enclave_pid(datadir: Path) -> int:
    marker = str(datadir / "enclave.sock").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"enclave" in cmdline and marker in cmdline and b"--listen" in cmdline:
            return int(entry.name)
    raise AssertionError("enclave process not found")


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.getpgid(int(entry.name)) == pgid and state != "Z":  # zombies are dead, just unreaped
                    members.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return members


def test_killed_enclave_fails_fast_then_recovers(tmp_path: Path) -> None:
    clave = ClaveProcess(tmp_path / "kill")
    clave.start()
    try:
        address = new_account(clave)
        records = _record_count(clave)
        killed = _enclave_pid(clave.datadir)
        os.kill(killed, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RpcFailure) as err:
            clave.rpc("eth_sign", address, "0x01")
        elapsed = time.monotonic() - start
        assert err.value.code == -32000 and "enclave" in err.value.message
        assert err.value.status == 503
        assert elapsed < 5, f"a dead enclave must fail fast, took {elapsed:.1f}s"
        deadline = time.monotonic() + 30
        while True:  # clave up restarts the enclave and unseals again, as the Nitro watchdog does
            try:
                signature = clave.rpc("eth_sign", address, "0x01")
                break
            except RpcFailure:
                assert time.monotonic() < deadline, "enclave did not come back"
                time.sleep(0.2)
        assert Account.recover_message(encode_defunct(b"\x01"), signature=signature).lower() == address
        assert _record_count(clave) == records
        assert not _group_members(killed), "the dead enclave's helper processes must not outlive it"
    finally:
        clave.stop()


def test_restart_unseals_same_accounts(tmp_path: Path) -> None:
    clave = ClaveProcess(tmp_path / "restart")
    clave.start()
    try:
        addresses = [new_account(clave) for _ in range(3)]
    finally:
        assert clave.stop() == 0  # SIGTERM stops cleanly
    clave.start()
    try:
        assert clave.rpc("account_list") == addresses
        signature = clave.rpc("eth_sign", addresses[1], "0xbeef")
        assert Account.recover_message(encode_defunct(b"\xbe\xef"), signature=signature).lower() == addresses[1]
    finally:
        clave.stop()
