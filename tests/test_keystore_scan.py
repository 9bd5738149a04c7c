"""Which files of a keystore directory `clave account import DIR` picks (geth's rules, plus foundry's
address-less V3 keyfiles). Keyfiles are made by eth-keyfile; the real `cast wallet new DIR` import is in
tests/test_client_matrix.py."""

from __future__ import annotations

import json
from pathlib import Path

from eth_keyfile import create_keyfile_json

from clave.cli.keystore_scan import scan

KEY = bytes(range(1, 33))


def _keyfile(directory: Path, name: str, *, address: bool = True) -> Path:
    keyfile = create_keyfile_json(KEY, b"pw", kdf="scrypt", iterations=1 << 4)
    if not address:
        del keyfile["address"]  # what foundry writes
    path = directory / name
    path.write_text(json.dumps(keyfile))
    return path


def test_directory_scan_takes_foundry_keyfiles_and_skips_the_rest(tmp_path: Path) -> None:
    geth = _keyfile(tmp_path, "UTC--2024--geth")
    foundry = _keyfile(tmp_path, "0b6f3c1e-8d41-4a52-9a3c-5f2d1c0e7a11", address=False)
    _keyfile(tmp_path, ".hidden-foundry", address=False)
    _keyfile(tmp_path, "backup~", address=False)
    (tmp_path / "notes.json").write_text(json.dumps({"version": 3, "id": "x"}))  # JSON, but no keyfile
    (tmp_path / "sub").mkdir()
    found = {c.path.name: c for c in scan(tmp_path)}
    usable = sorted(name for name, c in found.items() if c.problem is None and c.text is not None)
    assert usable == sorted([geth.name, foundry.name])
    assert found[".hidden-foundry"].skipped and found["backup~"].skipped and found["sub"].skipped
    assert found["notes.json"].problem == "keyfile has no address" and not found["notes.json"].skipped


def test_named_file_without_address_still_imports(tmp_path: Path) -> None:
    path = _keyfile(tmp_path, "alone", address=False)
    (candidate,) = scan(path)
    assert candidate.problem is None and candidate.text == path.read_text()
