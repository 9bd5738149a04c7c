"""The CLI mistakes that need a running clave (the shared `clave up`) or a real pipe: still one line, a
non-zero status, no traceback, and nothing done before the mistake is found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients import KNOWN_SECRETS, light_keyfile
from tests.stack import ClaveProcess

pytestmark = pytest.mark.slow  # the shared `clave up`, and `clave up`s of its own


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_up_on_a_taken_port(clave: ClaveProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clave.cli", "up", "--datadir", str(tmp_path / "second"), "--http.port", str(clave.port)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    line = _one_line(result)
    assert "address already in use" in line and "choose another port (--http.port)" in line, line
    assert clave.rpc("account_version") == "6.1.0"


def test_attest_into_a_closed_pipe(clave: ClaveProcess) -> None:
    """`clave attest | head -c 0`: the reader is gone before the document is printed (attesting takes the
    CLI far longer than head takes to exit)."""
    result = subprocess.run(
        f"{sys.executable} -m clave.cli attest --datadir {clave.datadir} | head -c 0; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
    )
    assert result.stderr == "", result.stderr  # no traceback, nothing to say: the reader left
    assert result.returncode == 141  # as a shell reports SIGPIPE


def test_export_into_a_missing_directory_asks_nothing_of_the_enclave(clave: ClaveProcess, tmp_path: Path) -> None:
    assert clave.admin is not None
    address = clave.cli("account", "new", "--exportable").stdout.split()[-1]
    (tmp_path / "pw").write_text("export password for a missing dir 41\n")
    KNOWN_SECRETS.add("export password for a missing dir 41")
    before = clave.logs().count("clave_exportChallenge")
    result = clave.cli("account", "export", address, "--out", "/nonexistent/x.json", "--password-file",
                       str(tmp_path / "pw"), *clave.admin.export_args)
    assert result.returncode == 1
    assert "directory /nonexistent does not exist; create it or choose another --out" in _one_line(result)
    assert clave.logs().count("clave_exportChallenge") == before  # refused before the enclave was asked


def test_import_with_the_password_on_stdin_and_list_in_eip55(clave: ClaveProcess, tmp_path: Path) -> None:
    from eth_account import Account

    key = bytes.fromhex("5d" * 32)
    password = "stdin import password 17"
    keyfile = light_keyfile(key, password, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "clave.cli", "account", "import", str(keyfile), "--password-file", "-",
         "--datadir", str(clave.datadir)],
        input=password + "\n", capture_output=True, text=True, timeout=120,
    )
    address = Account.from_key(key).address  # EIP-55
    assert result.returncode == 0 or "already exists" in result.stderr, result.stderr
    listed = clave.cli("account", "list")
    assert listed.returncode == 0, listed.stderr
    assert "{" + address[2:] + "}" in listed.stdout  # as geth prints it: mixed case, no 0x


def test_http_beyond_the_loopback_without_a_token_warns(tmp_path: Path) -> None:
    exposed = ClaveProcess(tmp_path / "exposed", extra=["--http.addr", "0.0.0.0"])
    exposed.start()
    try:
        assert exposed.rpc("account_version") == "6.1.0"  # it serves: a warning, not a refusal
    finally:
        exposed.stop()
    warnings = [line for line in exposed.logs().splitlines() if "without a token" in line]
    assert len(warnings) == 1, exposed.logs()[-3000:]
    assert "WARNING" in warnings[0] and "--http.auth-token-file" in warnings[0]

    quiet = ClaveProcess(tmp_path / "loopback")
    quiet.start()
    quiet.stop()
    assert "without a token" not in quiet.logs()
