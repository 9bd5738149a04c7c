"""The key store (`SqliteStore`) in-process: records round-trip, duplicates are refused atomically, meta
values, positions for followers, file modes, and errors as StoreError."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import cbor2
import pytest

from clave.core.errors import InfraError, RequestError
from clave.sidecar.store.records import DuplicateAccount, ListedAccount, SqliteStore, StoredRecord, StoreError


def _record(n: int, *, origin: str = "generated", exportable: bool = False) -> StoredRecord:
    address = bytes([n]) * 20
    sealed = {"address": address, "origin": origin, "exportable": exportable, "created": 1_700_000_000 + n,
              "nonce": bytes([n]) * 12, "ciphertext": b"sealed-" + bytes([n]) * 8}
    return StoredRecord.from_sealed(sealed)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "data" / "keystore.sqlite")
    yield s
    s.close()


def test_from_sealed_keeps_the_record_as_cbor() -> None:
    record = _record(7, origin="imported", exportable=True)
    assert (record.address, record.origin, record.exportable, record.created) == (b"\x07" * 20, "imported", True,
                                                                                  1_700_000_007)
    assert record.position == 0
    sealed = record.sealed()
    assert sealed["ciphertext"] == b"sealed-" + b"\x07" * 8 and cbor2.loads(record.blob) == sealed


def test_records_round_trip_in_insertion_order_with_positions(store: SqliteStore) -> None:
    store.add_records([_record(3), _record(1, origin="imported", exportable=True)])
    store.add_records([_record(2)])
    records = store.records()
    assert [r.address[0] for r in records] == [3, 1, 2]
    assert [r.position for r in records] == sorted(r.position for r in records) and records[0].position > 0
    assert len({r.position for r in records}) == 3
    second = records[1]
    assert (second.origin, second.exportable, second.created) == ("imported", True, 1_700_000_001)
    assert second.sealed() == _record(1, origin="imported", exportable=True).sealed()
    assert second.blob == _record(1, origin="imported", exportable=True).blob


def test_a_duplicate_is_refused_and_the_whole_batch_rolled_back(store: SqliteStore) -> None:
    store.add_records([_record(1)])
    with pytest.raises(DuplicateAccount) as err:
        store.add_records([_record(2), _record(1), _record(3)])
    assert err.value.message == "account already exists: 0x" + "01" * 20
    assert isinstance(err.value, RequestError) and err.value.code == -32000
    assert [r.address[0] for r in store.records()] == [1], "nothing of the failed batch may remain"
    with pytest.raises(DuplicateAccount) as within:
        store.add_records([_record(5), _record(5)])  # a duplicate inside one batch
    assert within.value.message.endswith("05" * 20)
    assert [r.address[0] for r in store.records()] == [1]
    store.add_records([_record(2)])  # the store still takes writes after refusals
    assert [r.address[0] for r in store.records()] == [1, 2]


def test_accounts_after_lists_only_what_a_follower_has_not_seen(store: SqliteStore) -> None:
    assert store.accounts_after(0) == []
    store.add_records([_record(1), _record(2)])
    first = store.accounts_after(0)
    assert [a.address[0] for a in first] == [1, 2]
    assert all(isinstance(a, ListedAccount) and a.origin == "generated" for a in first)
    store.add_records([_record(3, exportable=True)])
    later = store.accounts_after(first[-1].position)
    assert [(a.address[0], a.exportable) for a in later] == [(3, True)]
    assert store.accounts_after(later[-1].position) == []


def test_two_stores_on_one_file_see_each_others_records(tmp_path: Path) -> None:
    path = tmp_path / "keystore.sqlite"
    one, two = SqliteStore(path), SqliteStore(path)
    try:
        one.add_records([_record(1)])
        assert [a.address[0] for a in two.accounts_after(0)] == [1]
        with pytest.raises(DuplicateAccount):
            two.add_records([_record(1)])
        two.set_meta("kms_key_id", b"key-1")
        assert one.get_meta("kms_key_id") == b"key-1"
    finally:
        one.close()
        two.close()


def test_meta_values_set_replace_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "keystore.sqlite"
    store = SqliteStore(path)
    assert store.get_meta("kms_data_key") is None
    store.set_meta("kms_data_key", b"\x00wrapped\xff")
    store.set_meta("kms_key_id", b"first")
    store.set_meta("kms_key_id", b"second")
    store.add_records([_record(9)])
    store.close()
    again = SqliteStore(path)
    try:
        assert again.get_meta("kms_data_key") == b"\x00wrapped\xff"
        assert again.get_meta("kms_key_id") == b"second"
        assert [r.address[0] for r in again.records()] == [9]
    finally:
        again.close()


def test_file_and_directory_modes_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "keystore.sqlite"
    store = SqliteStore(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert store.ping() >= 0
    finally:
        store.close()


def test_concurrent_writers_from_threads_lose_nothing(store: SqliteStore) -> None:
    def write(start: int) -> None:
        for n in range(start, start + 25):
            store.add_records([_record(n)])

    threads = [threading.Thread(target=write, args=(start,)) for start in (1, 26, 51, 76)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.address[0] for r in store.records()) == list(range(1, 101))


def test_failures_are_store_errors(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(StoreError, match="cannot open key store"):
        SqliteStore(directory)
    store = SqliteStore(tmp_path / "keystore.sqlite")
    store.close()
    for operation in (store.records, lambda: store.accounts_after(0), store.ping, lambda: store.set_meta("x", b"y")):
        with pytest.raises(StoreError) as err:
            operation()
        assert isinstance(err.value, InfraError), "a store failure is retryable infrastructure, not a bad request"


@pytest.mark.parametrize("operation", ["add_records", "get_meta"])
def test_writes_and_meta_reads_on_a_closed_store_are_store_errors(tmp_path: Path, operation: str) -> None:
    store = SqliteStore(tmp_path / "keystore.sqlite")
    store.close()
    with pytest.raises(StoreError):
        if operation == "add_records":
            store.add_records([_record(1)])
        else:
            store.get_meta("x")
