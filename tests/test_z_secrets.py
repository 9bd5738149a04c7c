"""No plaintext key or password reaches the parent's disk or logs.

Runs last (file name) so it also covers every key and password the other tests handed to the shared
`clave up`; it makes its own imports, exports and signatures first so that it never searches for nothing.
"""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from tests.clients import KNOWN_SECRETS, import_key
from tests.stack import ClaveProcess


def _haystack(clave: ClaveProcess) -> list[tuple[str, bytes]]:
    found = [("clave up output", clave.logs().encode())]
    for path in clave.datadir.rglob("*"):
        if path.is_file():
            found.append((str(path), path.read_bytes()))
    return found


def test_no_key_or_password_in_logs_or_datadir(clave: ClaveProcess, tmp_path: Path) -> None:
    key = Account.create().key
    password = "secret-search password 7"
    address = import_key(clave, key, tmp_path, exportable=True, password=password)
    pw = tmp_path / "export-pw"
    export_password = "secret-search export 9"
    pw.write_text(export_password)
    result = clave.cli("account", "export", address, "--password-file", str(pw), "--out", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    clave.rpc("eth_sign", address, "0x00")
    KNOWN_SECRETS.update({key.hex(), password, export_password})

    needles: list[tuple[str, bytes]] = []
    for secret in KNOWN_SECRETS:
        needles.append((secret, secret.encode()))
        if len(secret) == 64:
            try:
                raw = bytes.fromhex(secret)
            except ValueError:
                continue
            needles += [(secret + " (raw bytes)", raw), (secret + " (upper hex)", secret.upper().encode())]
    haystack = _haystack(clave)
    assert len(haystack) > 3 and any("keystore.sqlite" in name for name, _ in haystack)
    leaks = [(needle, name) for needle, value in needles for name, data in haystack if value in data]
    assert not leaks, f"secrets found on the parent: {leaks}"
    assert len(needles) >= 6
