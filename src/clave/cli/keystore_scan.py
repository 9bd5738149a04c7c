"""Which files of a keystore directory are keyfiles, by geth's rules (`accounts/keystore/account_cache.go`):
skip hidden files, `~` backups, directories and non-regular files; a keyfile in a directory must be JSON
whose `address` field holds a non-zero address.

One exception to geth's rule: foundry (`cast wallet new DIR`, `~/.foundry/keystores`) writes V3 keyfiles
with no `address` at all. A file that is plainly one (version 3, a `crypto` object with a kdf, a ciphertext
and a MAC) is imported anyway; the enclave learns the address when it decrypts the key, as it does for a
keyfile named alone. The CLI never decrypts a key itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Candidate:
    path: Path
    text: str | None  # None when the file is skipped or unreadable
    problem: str | None  # why the file cannot be imported; None for a usable keyfile
    skipped: bool = False  # skipped silently, as geth does (hidden, backup, directory)
    addressed: bool = True  # False for a keyfile without `address` (foundry): the enclave learns it


def scan(path: Path) -> list[Candidate]:
    if path.is_dir():
        return [_inspect(p, in_directory=True) for p in sorted(path.iterdir())]
    return [_inspect(path, in_directory=False)]


def _inspect(path: Path, *, in_directory: bool) -> Candidate:
    name = path.name
    if in_directory and (name.startswith(".") or name.endswith("~")):
        return Candidate(path, None, "hidden or backup file", skipped=True)
    if path.is_dir() or (path.exists() and not path.is_file()):
        return Candidate(path, None, "not a regular file", skipped=True)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return Candidate(path, None, f"cannot read: {getattr(exc, 'strerror', None) or exc}")
    try:
        keyfile = json.loads(text)
    except ValueError:
        return Candidate(path, None, "not a JSON keyfile")
    if not isinstance(keyfile, dict):
        return Candidate(path, None, "not a JSON keyfile")
    address = keyfile.get("address")
    if (address is None or address == "") and (
        (not in_directory and isinstance(keyfile.get("crypto"), dict)) or _looks_like_v3(keyfile)
    ):
        # A keyfile without an address (foundry's `cast wallet new` writes none) is still imported: the
        # enclave derives the address from the decrypted key.
        return Candidate(path, text, None, addressed=False)
    if not isinstance(address, str) or not address:
        return Candidate(path, None, "keyfile has no address")
    try:
        raw = bytes.fromhex(address.removeprefix("0x"))
    except ValueError:
        return Candidate(path, None, "keyfile address is not hex")
    if len(raw) != 20 or raw == bytes(20):
        return Candidate(path, None, "keyfile address is zero or malformed")
    return Candidate(path, text, None)


def _looks_like_v3(keyfile: dict[str, object]) -> bool:
    """Web3 Secret Storage V3, as foundry writes it: enough to tell a keyfile from any other JSON file."""
    crypto = keyfile.get("crypto", keyfile.get("Crypto"))
    return (
        keyfile.get("version") == 3
        and isinstance(crypto, dict)
        and all(isinstance(crypto.get(k), str) and crypto[k] for k in ("ciphertext", "kdf", "mac"))
        and isinstance(crypto.get("kdfparams"), dict)
    )
