"""The store of sealed key records. It never sees a plaintext key: records are opaque CBOR blobs that
only the enclave can open, plus the public metadata needed to list them.

`KeyStore` is the interface (a DynamoDB backend for fleets implements the same methods); `SqliteStore`
is the default: one file under the datadir, WAL journal, each write one transaction.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cbor2

from clave.core.errors import InfraError, RequestError


@dataclass(frozen=True)
class StoredRecord:
    address: bytes
    origin: str
    exportable: bool
    created: int
    blob: bytes  # the sealed record as CBOR
    position: int = 0  # where it sits in the store (0 until stored)

    @classmethod
    def from_sealed(cls, record: dict[str, object]) -> StoredRecord:
        return cls(
            address=bytes(record["address"]),  # type: ignore[call-overload]
            origin=str(record["origin"]),
            exportable=bool(record["exportable"]),
            created=int(record["created"]),  # type: ignore[call-overload]
            blob=cbor2.dumps(record),
        )

    def sealed(self) -> dict[str, object]:
        """The sealed record to hand to the enclave, after the checks the parent can make without the key:
        the blob decodes to a CBOR map, and the address inside it is the row's. Raises `CorruptRecord`.

        The enclave checks again and authenticates everything (AES-GCM with the metadata as associated
        data); these checks only make sure that one damaged row is refused alone and named by its row,
        rather than failing the whole batch or being reported under an address it does not have."""
        if len(self.address) != 20:
            raise CorruptRecord("the row's address is unreadable")
        try:
            sealed = cbor2.loads(self.blob)
        except Exception as exc:  # cbor2 raises several kinds (decode errors, EOF, recursion, values)
            raise CorruptRecord(f"the sealed blob does not decode ({type(exc).__name__})") from None
        if not isinstance(sealed, dict):
            raise CorruptRecord("the sealed blob is not a CBOR map")
        inner = sealed.get("address")
        if not isinstance(inner, bytes) or len(inner) != 20:
            raise CorruptRecord("the sealed blob carries no 20-byte address")
        if inner != self.address:
            raise CorruptRecord(f"the sealed blob names 0x{inner.hex()}, not the row's address")
        return sealed


class CorruptRecord(Exception):
    """A stored record the sidecar can tell is damaged before the enclave sees it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _stored(row: tuple[object, ...]) -> StoredRecord:
    """A row as a record, whatever its columns hold: a damaged row must reach the check in `sealed()`
    (and be refused alone) instead of failing the read of every record."""
    address, origin, exportable, created, blob, position = row
    return StoredRecord(
        address=_blob(address),
        origin=origin if isinstance(origin, str) else "",
        exportable=bool(exportable),
        created=created if isinstance(created, int) else 0,
        blob=_blob(blob),
        position=int(position),  # type: ignore[call-overload]
    )


def _blob(value: object) -> bytes:
    # bytes(5) would be five zero bytes, and bytes(10**12) a terabyte: only a BLOB column is bytes.
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else b""


class StoreError(InfraError):
    remedy = "check the data directory's disk (space, permissions) and keystore.sqlite"


class DuplicateAccount(RequestError):
    def __init__(self, address: bytes) -> None:
        super().__init__(f"account already exists: 0x{address.hex()}")


@dataclass(frozen=True)
class ListedAccount:
    """A record's public metadata, without the sealed blob, with its position in the store."""

    position: int
    address: bytes
    origin: str
    exportable: bool
    created: int


class KeyStore(Protocol):
    def add_records(self, records: Iterable[StoredRecord]) -> None: ...
    def records(self) -> list[StoredRecord]: ...
    def accounts_after(self, position: int) -> list[ListedAccount]: ...
    def get_meta(self, name: str) -> bytes | None: ...
    def set_meta(self, name: str, value: bytes) -> None: ...
    def ping(self) -> float: ...
    def close(self) -> None: ...


class SqliteStore:
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS records (
        address BLOB PRIMARY KEY,
        origin TEXT NOT NULL,
        exportable INTEGER NOT NULL,
        created INTEGER NOT NULL,
        blob BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._lock = threading.Lock()
        try:
            # 0600 before SQLite opens it: SQLite creates the -wal and -shm files with the database's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            for existing in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
                if existing.exists():
                    existing.chmod(0o600)
        except OSError as exc:
            raise StoreError(f"cannot open key store {path}: {exc.strerror or exc}") from None
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(self.SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open key store {path}: {exc}") from None

    def add_records(self, records: Iterable[StoredRecord]) -> None:
        rows = [(r.address, r.origin, int(r.exportable), r.created, r.blob) for r in records]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO records (address, origin, exportable, created, blob) VALUES (?, ?, ?, ?, ?)", rows
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                duplicate = next((r[0] for r in rows if self._has(r[0])), rows[0][0] if rows else b"")
                raise DuplicateAccount(duplicate) from exc
            except sqlite3.Error as exc:
                # The rollback may fail too (a closed or broken connection): the write failed either way.
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                raise StoreError(f"key store write failed: {exc}") from None

    def _has(self, address: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM records WHERE address = ?", (address,)).fetchone() is not None

    def records(self) -> list[StoredRecord]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT address, origin, exportable, created, blob, rowid FROM records ORDER BY rowid"
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"key store read failed: {exc}") from None
        return [_stored(row) for row in rows]

    def accounts_after(self, position: int) -> list[ListedAccount]:
        """Records added after `position` (0: all), oldest first. Records are never deleted or rewritten, so
        another process sharing the file catches up with what it has not seen yet by its last position."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT rowid, address, origin, exportable, created FROM records WHERE rowid > ? ORDER BY rowid",
                    (position,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"key store read failed: {exc}") from None
        return [ListedAccount(p, _blob(a), o, bool(e), c) for p, a, o, e, c in rows]

    def get_meta(self, name: str) -> bytes | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"key store read failed: {exc}") from None
        return bytes(row[0]) if row else None

    def set_meta(self, name: str, value: bytes) -> None:
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))
            except sqlite3.Error as exc:
                raise StoreError(f"key store write failed: {exc}") from None

    def ping(self) -> float:
        start = time.perf_counter()
        with self._lock:
            try:
                self._db.execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"key store unreachable: {exc}") from None
        return time.perf_counter() - start

    def close(self) -> None:
        with self._lock:
            self._db.close()
