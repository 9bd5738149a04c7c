"""The store of sealed key records. It never sees a plaintext key: records are opaque CBOR blobs that
only the enclave can open, plus the public metadata needed to list them.

`KeyStore` is the interface (a DynamoDB backend for fleets implements the same methods); `SqliteStore`
is the default: one file under the datadir, WAL journal, each write one transaction.
"""

from __future__ import annotations

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
        return cbor2.loads(self.blob)


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
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(self.SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open key store {path}: {exc}") from None
        path.chmod(0o600)

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
        return [StoredRecord(bytes(a), o, bool(e), c, bytes(b), p) for a, o, e, c, b, p in rows]

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
        return [ListedAccount(p, bytes(a), o, bool(e), c) for p, a, o, e, c in rows]

    def get_meta(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
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
