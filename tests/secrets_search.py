"""Searching logs and datadirs for plaintext keys and passwords.

Tests register every private key and password they hand to clave in KNOWN_SECRETS. `search` looks for
each one in a list of (name, bytes) haystacks, in the forms a leak would take: the text itself and, for a
32-byte hex key, its raw bytes, upper-case hex and base64. A leak is reported by a description of the
secret ("key #3 (raw bytes)", "password #5") and the haystack's name, never by the secret itself, so the
report is safe to print in CI logs.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.stack import ClaveProcess

_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class KnownSecrets:
    """The secrets handed to clave in this session, each with a description made when it was added
    (its kind and its number in the order of registration). A set to its users: add, update, in, len."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}

    def add(self, secret: str, label: str | None = None) -> None:
        if not secret or secret in self._labels:
            return
        kind = "key" if _HEX_KEY.match(secret) else "password"
        self._labels[secret] = label or f"{kind} #{len(self._labels) + 1}"

    def update(self, secrets: Iterable[str]) -> None:
        for secret in sorted(secrets):
            self.add(secret)

    def label(self, secret: str) -> str:
        return self._labels[secret]

    def __contains__(self, secret: object) -> bool:
        return secret in self._labels

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._labels))

    def __len__(self) -> int:
        return len(self._labels)


# Every key and password a test hands to the shared `clave up` (see the `clave` fixture in conftest.py).
KNOWN_SECRETS = KnownSecrets()


@dataclass(frozen=True)
class Needle:
    description: str  # what to print: never the secret
    value: bytes


@dataclass(frozen=True)
class Leak:
    description: str
    where: str


def needles(secrets: KnownSecrets) -> list[Needle]:
    found: list[Needle] = []
    for secret in secrets:
        label = secrets.label(secret)
        found.append(Needle(label, secret.encode()))
        if _HEX_KEY.match(secret):
            hex_text = secret.removeprefix("0x")
            raw = bytes.fromhex(hex_text)
            found += [
                Needle(f"{label} (lower-case hex)", hex_text.lower().encode()),
                Needle(f"{label} (upper-case hex)", hex_text.upper().encode()),
                Needle(f"{label} (raw bytes)", raw),
                Needle(f"{label} (base64)", base64.b64encode(raw)),
            ]
    return found


def files_under(directory: Path, *, relative_to: Path | None = None) -> list[tuple[str, bytes]]:
    """Every regular file below `directory` as (name, contents); names relative to `relative_to`."""
    base = relative_to or directory
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.append((str(path.relative_to(base)), path.read_bytes()))
    return found


def clave_haystack(clave: ClaveProcess) -> list[tuple[str, bytes]]:
    """What a `clave up` left on the parent: its output, and every file in its datadir (logs included)."""
    return [("clave up output", "".join(clave.output).encode())] + files_under(
        clave.datadir, relative_to=clave.datadir.parent
    )


def search(haystack: Iterable[tuple[str, bytes]], secrets: KnownSecrets) -> list[Leak]:
    wanted = needles(secrets)
    leaks = []
    for where, data in haystack:
        for needle in wanted:
            if needle.value in data:
                leaks.append(Leak(needle.description, where))
    return leaks


def describe(leaks: list[Leak]) -> str:
    return "; ".join(f"{leak.description} in {leak.where}" for leak in leaks)
