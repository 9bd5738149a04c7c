"""go-opera / sonic validator keys made in the enclave, checked against go-opera's keyfile scheme.

The keyfiles are opened here with an implementation written from go-opera's and geth's source
(`valkeystore/encryption`, `accounts/keystore/passphrase.go`): hashlib's scrypt, AES-128-CTR from
`cryptography`, keccak from pycryptodome, and the public key from `cryptography`'s secp256k1. No clave
code and no eth-keyfile take part, so a bug shared by clave and eth-keyfile cannot hide.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import cbor2
import pytest
from Crypto.Hash import keccak
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from clave.enclave import opera_keys as validator
from clave.enclave import sealing
from tests.clients import KNOWN_SECRETS
from tests.stack import ClaveProcess

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


# -- an independent implementation of go-opera's validator keyfile -----------------------------------


class KeyfileError(Exception):
    pass


def _keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def opera_decrypt(text: str, password: str) -> bytes:
    """encryption.DecryptKey: type must be 192, then keystore.DecryptDataV3 (scrypt only here)."""
    keyfile = json.loads(text)
    if keyfile.get("type") != 192:
        raise KeyfileError("not supported key type")
    crypto = keyfile["crypto"]
    if crypto["cipher"] != "aes-128-ctr" or crypto["kdf"] != "scrypt":
        raise KeyfileError("cipher/kdf not supported")
    params = crypto["kdfparams"]
    derived = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(params["salt"]), n=params["n"], r=params["r"], p=params["p"],
        dklen=params["dklen"], maxmem=2**30,
    )
    ciphertext = bytes.fromhex(crypto["ciphertext"])
    if _keccak256(derived[16:32] + ciphertext).hex() != crypto["mac"]:
        raise KeyfileError("could not decrypt key with given password")
    decryptor = Cipher(algorithms.AES(derived[:16]), modes.CTR(bytes.fromhex(crypto["cipherparams"]["iv"]))).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()


def uncompressed_public_key(secret: bytes) -> bytes:
    scalar = int.from_bytes(secret, "big")
    assert len(secret) == 32 and 0 < scalar < SECP256K1_N
    key = ec.derive_private_key(scalar, ec.SECP256K1())
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def check_opera_keyfile(path: Path, password: str) -> bytes:
    """Everything go-opera relies on, plus the layout `opera validator new` writes. Returns the key."""
    text = path.read_text()
    secret = opera_decrypt(text, password)
    raw = uncompressed_public_key(secret)
    assert path.name == "c0" + raw.hex(), "file name is hex(pubkey.Bytes()) with no 0x"
    keyfile = json.loads(text)
    assert list(keyfile) == ["type", "pubkey", "crypto"]
    assert keyfile["pubkey"] == raw.hex()
    assert list(keyfile["crypto"]) == ["cipher", "ciphertext", "cipherparams", "kdf", "kdfparams", "mac"]
    assert keyfile["crypto"]["kdfparams"] == {
        "dklen": 32, "n": 1 << 18, "p": 1, "r": 8, "salt": keyfile["crypto"]["kdfparams"]["salt"]
    }
    assert len(bytes.fromhex(keyfile["crypto"]["kdfparams"]["salt"])) == 32
    assert text == json.dumps(keyfile, separators=(",", ":")), "Go's json.Marshal writes compact JSON"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    return secret


# -- the enclave side, without a running enclave ----------------------------------------------------


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
def test_keyfile_round_trip_and_wrong_password() -> None:
    secret = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    text = validator.opera_keyfile(secret, "pässword")
    assert opera_decrypt(text, "pässword") == secret
    with pytest.raises(KeyfileError, match="could not decrypt"):
        opera_decrypt(text, "password")
    assert json.loads(text)["pubkey"] == uncompressed_public_key(secret).hex()


def test_validator_records_are_not_account_records() -> None:
    master = os.urandom(32)
    secret = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    record = validator.seal_validator(master, secret, 1_700_000_000)
    assert record["origin"] == "validator" and secret not in cbor2.dumps(record)
    # The account path (EnclaveService.unseal) must refuse it: a validator key never signs as an account.
    with pytest.raises(sealing.SealError):
        sealing.unseal(master, record)
    assert validator.unseal_validator(master, record) == secret
    with pytest.raises(sealing.SealError):
        validator.unseal_validator(os.urandom(32), record)
    relabelled = dict(record, origin="generated")
    with pytest.raises(sealing.SealError):
        sealing.unseal(master, relabelled)  # the origin is bound as associated data
    account = sealing.seal(master, sealing.RecordMeta(record["address"], "generated", False, 1), secret)
    with pytest.raises(sealing.SealError, match="not a validator record"):
        validator.unseal_validator(master, account)


# -- the CLI against a running `clave up` -----------------------------------------------------------


def _validator_cli(clave: ClaveProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return clave.cli("validator", *args)


def test_validator_new_writes_opera_keyfile(clave: ClaveProcess, tmp_path: Path) -> None:
    password = "validator pw \u00e9 41"
    (tmp_path / "pw").write_text(password + "\r\nsecond line is ignored\n")
    keystore = tmp_path / "keystore"
    result = _validator_cli(clave, "new", "--keystore", str(keystore), "--password-file", str(tmp_path / "pw"))
    assert result.returncode == 0, result.stderr
    pubkey = result.stdout.split("Public key:")[1].split()[0]
    files = list((keystore / "validator").iterdir())
    assert [f.name for f in files] == [pubkey[2:]], "one keyfile, named by the 0xc0… key, no temp file left"
    secret = check_opera_keyfile(files[0], password)
    KNOWN_SECRETS.update({secret.hex(), password})
    assert pubkey == "0xc0" + uncompressed_public_key(secret).hex()
    # Not an account: clef's account_list and the operator's list do not show it.
    address = "0x" + _keccak256(uncompressed_public_key(secret)[1:])[12:].hex()
    assert address not in clave.rpc("account_list")
    assert address[2:] not in clave.cli("account", "list").stdout.lower()

    # Restore from the sealed backup into another keystore, with another password.
    (tmp_path / "pw2").write_text("another password 42\n")
    restored = _validator_cli(clave, "restore", pubkey, "--keystore", str(tmp_path / "ks2"),
                              "--password-file", str(tmp_path / "pw2"))
    assert restored.returncode == 0, restored.stderr
    assert check_opera_keyfile(tmp_path / "ks2" / "validator" / pubkey[2:], "another password 42") == secret
    KNOWN_SECRETS.add("another password 42")

    # Never overwrite a key (go-opera's ErrAlreadyExists); unknown keys and empty passwords are refused.
    again = _validator_cli(clave, "restore", pubkey, "--keystore", str(keystore), "--password-file", str(tmp_path / "pw"))
    assert again.returncode != 0 and "already exists" in again.stderr
    unknown = _validator_cli(clave, "restore", "0xc004" + "ab" * 64, "--keystore", str(tmp_path / "ks3"),
                             "--password-file", str(tmp_path / "pw"))
    assert unknown.returncode != 0 and "no sealed backup" in unknown.stderr
    (tmp_path / "empty").write_text("\n")
    empty = _validator_cli(clave, "new", "--keystore", str(tmp_path / "ks4"), "--password-file", str(tmp_path / "empty"))
    assert empty.returncode != 0 and "empty" in empty.stderr
    assert not (tmp_path / "ks4" / "validator").exists() or not any((tmp_path / "ks4" / "validator").iterdir())
    assert clave.rpc("account_version") == "6.1.0"


def test_opera_methods_are_ipc_only(clave: ClaveProcess) -> None:
    from tests.stack import RpcFailure

    for method, params in (("clave_validatorNew", ["0x00"]), ("clave_validatorKeyfile", ["0xc0", "0x00"])):
        with pytest.raises(RpcFailure) as err:
            clave.rpc(method, *params)
        assert err.value.code == -32601


@pytest.mark.slow  # starts processes itself
def test_backup_survives_restart(tmp_path: Path) -> None:
    proc = ClaveProcess(tmp_path / "clave")
    proc.start()
    try:
        (tmp_path / "pw").write_text("restart pw 5\n")
        made = proc.cli("validator", "new", "--keystore", str(tmp_path / "ks"), "--password-file", str(tmp_path / "pw"))
        assert made.returncode == 0, made.stderr
        pubkey = made.stdout.split("Public key:")[1].split()[0]
        proc.stop()
        proc.start()
        restored = proc.cli("validator", "restore", pubkey, "--keystore", str(tmp_path / "ks2"),
                            "--password-file", str(tmp_path / "pw"))
        assert restored.returncode == 0, restored.stderr
        original = check_opera_keyfile(tmp_path / "ks" / "validator" / pubkey[2:], "restart pw 5")
        assert check_opera_keyfile(tmp_path / "ks2" / "validator" / pubkey[2:], "restart pw 5") == original
        assert proc.rpc("account_list") == []
    finally:
        proc.stop()


# -- the password FIFO --------------------------------------------------------------------------------


def _read_with_timeout(path: Path, timeout: float = 10.0) -> str:
    box: list[str] = []

    def read() -> None:
        with open(path) as handle:  # blocks until the writer opens its end, as the node's read does
            box.append(handle.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert box, f"no password from {path} within {timeout}s"
    return box[0]


@pytest.mark.slow  # starts processes itself
def test_password_fifo_serves_every_reader_until_sigterm(tmp_path: Path) -> None:
    password = "fifo password 7 \u00fc"
    (tmp_path / "pw").write_text(password + "\nignored\n")
    fifo = tmp_path / "run" / "password"
    fifo.parent.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clave.cli", "validator", "password-fifo", "--fifo", str(fifo),
         "--password-file", str(tmp_path / "pw")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("password-fifo serving"), proc.stderr.read() if proc.stderr else ""
        mode = fifo.lstat().st_mode
        assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o600
        # sonic reads the password file once per unlock attempt (three attempts): every open gets it. A
        # reader may rarely get it twice; go-opera and sonic use line 0, and no line is ever anything else.
        for _ in range(3):
            lines = _read_with_timeout(fifo).split("\n")
            assert lines[0] == password and set(lines) <= {password, ""}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "after 3 reader(s)" in out
    assert not fifo.exists(), "the FIFO is removed on stop"


@pytest.mark.slow  # starts processes itself
def test_password_fifo_refuses_to_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x\n")
    (tmp_path / "password").write_text("not a fifo")
    result = subprocess.run(
        [sys.executable, "-m", "clave.cli", "validator", "password-fifo", "--fifo", str(tmp_path / "password"),
         "--password-file", str(tmp_path / "pw")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0 and "not a FIFO" in result.stderr
    assert (tmp_path / "password").read_text() == "not a fifo"
