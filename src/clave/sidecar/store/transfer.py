"""`clave store export` / `clave store import`: the sealed store moved as a file (ciphertext only).

The file is CBOR `{"v": 1, "kind": "clave-store-export", "meta": {name: bytes}, "records": [[address,
origin, exportable, created, blob] …], "digest": SHA-256 of the canonical CBOR of [meta, records]}`. It
holds what a datadir's store holds: sealed records, the KMS-wrapped data key (`CiphertextBlob`), the
KMS key id and ARN, the master-key commitment and the sealed admin set. It opens only where the same KMS
key releases the data key to an attested enclave (a new host in the same account and region), and it
restores exactly the set it was made from: without an audit log, an older export cannot be told from a
newer one, so keep the newest and import only into a new datadir (the import refuses a store that holds
anything already).
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2

from clave.core.errors import RequestError
from clave.sidecar.store.records import KeyStore, StoredRecord

VERSION = 1
KIND = "clave-store-export"
# Everything a store's meta table holds that the sidecar reads at bring-up (sidecar/signing/signer.py).
META_NAMES = ("kms_key_id", "kms_data_key", "master_commitment", "kms_key_arn", "admin_set", "admin_pending")


class StoreTransferError(RequestError):
    """An export file that is malformed or truncated, or a target store that is not empty."""


def _digest(meta: dict[str, bytes], rows: list[list[Any]]) -> bytes:
    return hashlib.sha256(cbor2.dumps([meta, rows], canonical=True)).digest()


def export_store(store: KeyStore) -> bytes:
    meta = {name: value for name in META_NAMES if (value := store.get_meta(name)) is not None}
    if "kms_data_key" not in meta:
        raise StoreTransferError("this store has no KMS data key yet: start clave on it once before exporting")
    rows = [[r.address, r.origin, r.exportable, r.created, r.blob] for r in store.records()]
    return cbor2.dumps({"v": VERSION, "kind": KIND, "meta": meta, "records": rows, "digest": _digest(meta, rows)},
                       canonical=True)


def parse_export(data: bytes) -> tuple[dict[str, bytes], list[StoredRecord]]:
    try:
        value = cbor2.loads(data)
    except Exception:
        raise StoreTransferError("not a clave store export (not CBOR)") from None
    if not isinstance(value, dict) or value.get("v") != VERSION or value.get("kind") != KIND:
        raise StoreTransferError("not a clave store export (v 1)")
    meta, rows = value.get("meta"), value.get("records")
    if not isinstance(meta, dict) or not isinstance(rows, list):
        raise StoreTransferError("store export: malformed")
    if value.get("digest") != _digest(meta, rows):
        raise StoreTransferError("store export: digest mismatch (truncated or altered)")
    if not all(isinstance(k, str) and k in META_NAMES and isinstance(v, bytes) for k, v in meta.items()):
        raise StoreTransferError("store export: malformed meta")
    records = []
    for row in rows:
        if (not isinstance(row, list) or len(row) != 5 or not isinstance(row[0], bytes) or len(row[0]) != 20
                or not isinstance(row[1], str) or not isinstance(row[3], int) or not isinstance(row[4], bytes)):
            raise StoreTransferError("store export: malformed record")
        records.append(StoredRecord(row[0], row[1], bool(row[2]), row[3], row[4]))
    return meta, records


def import_store(store: KeyStore, data: bytes) -> int:
    """Fill an empty store from an export; the number of records."""
    meta, records = parse_export(data)
    if store.records() or any(store.get_meta(name) is not None for name in META_NAMES):
        raise StoreTransferError("the target store is not empty: import only into a new datadir")
    store.add_records(records)
    for name, value in meta.items():
        store.set_meta(name, value)
    return len(records)
