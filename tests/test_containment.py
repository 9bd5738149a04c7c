"""A damaged sealed record is refused alone, named, logged and counted; the other accounts sign.

The store is edited with sqlite3 while clave is stopped, the way a bad disk sector, a botched restore or
a hand edit would leave it: one blob's first byte flipped (undecodable CBOR), one row's address column
flipped, one blob's inner address flipped, one ciphertext byte flipped (decodes, does not authenticate),
and one blob rewritten so that the enclave's handler fails on it (`created` = +inf). Then clave is
restarted; before this was contained, the first edit alone left the service never ready, with
`last_error: null` and nothing logged.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import cbor2
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.stack import ClaveProcess, RpcFailure, get_text

pytestmark = pytest.mark.slow

ACCOUNTS = 200
ADDRESS_LINE = re.compile(r"^Public address of the key:\s+(0x[0-9a-f]{40})$", re.M)


def _flip(data: bytes, index: int, mask: int = 0x18) -> bytes:
    edited = bytearray(data)
    edited[index] ^= mask
    return bytes(edited)


def _corrupt(store: Path) -> dict[str, tuple[int, str]]:
    """Damage five records in five ways; returns kind -> (rowid, the row's original address)."""
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT rowid, address, blob FROM records ORDER BY rowid").fetchall()
        picked = {kind: rows[i] for kind, i in
                  (("blob_byte0", 10), ("row_address", 50), ("inner_address", 90), ("ciphertext", 130), ("crash", 170))}
        out = {kind: (row[0], "0x" + bytes(row[1]).hex()) for kind, row in picked.items()}

        rowid, _, blob = picked["blob_byte0"]
        assert blob[0] == 0xA7  # a CBOR map of 7 entries
        db.execute("UPDATE records SET blob = ? WHERE rowid = ?", (_flip(blob, 0), rowid))  # 0xbf: never ends

        rowid, address, _ = picked["row_address"]
        db.execute("UPDATE records SET address = ? WHERE rowid = ?", (_flip(address, 7, 0x01), rowid))

        rowid, address, blob = picked["inner_address"]
        at = bytes(blob).index(bytes(address))
        db.execute("UPDATE records SET blob = ? WHERE rowid = ?", (_flip(blob, at + 3, 0x01), rowid))

        rowid, _, blob = picked["ciphertext"]
        sealed = cbor2.loads(blob)
        sealed["ciphertext"] = _flip(sealed["ciphertext"], 5, 0x01)
        db.execute("UPDATE records SET blob = ? WHERE rowid = ?", (cbor2.dumps(sealed), rowid))

        rowid, _, blob = picked["crash"]
        sealed = cbor2.loads(blob)
        sealed["created"] = float("inf")  # int(inf) raises OverflowError inside the enclave's unseal
        db.execute("UPDATE records SET blob = ? WHERE rowid = ?", (cbor2.dumps(sealed), rowid))
    return out


def _sign(clave: ClaveProcess, address: str, data: bytes) -> None:
    signature = clave.rpc("eth_sign", address, "0x" + data.hex())
    assert Account.recover_message(encode_defunct(data), signature=signature).lower() == address


def _metric(clave: ClaveProcess, name: str) -> float:
    status, text = get_text(clave.url + "/metrics")
    assert status == 200
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_damaged_records_are_refused_alone(tmp_path: Path) -> None:
    clave = ClaveProcess(tmp_path / "store", extra=["--http.workers", "2"])
    clave.start()
    try:
        made = clave.cli("account", "new", "--count", str(ACCOUNTS))
        assert made.returncode == 0, made.stderr
        addresses = ADDRESS_LINE.findall(made.stdout)
        assert len(addresses) == ACCOUNTS
    finally:
        assert clave.stop() == 0

    damaged = _corrupt(clave.datadir / "keystore.sqlite")
    bad_rows = {row for row, _ in damaged.values()}
    bad_addresses = {address for _, address in damaged.values()}

    started = time.monotonic()
    clave.start(timeout=120)  # the ready line: the service became ready despite the damage
    restart_seconds = time.monotonic() - started
    try:
        assert f"accounts={ACCOUNTS - len(damaged)}" in clave.ready_line, clave.ready_line
        good = [a for a in addresses if a not in bad_addresses]
        for i, address in enumerate(good[::20]):
            _sign(clave, address, b"still signs %d" % i)
        listed = clave.rpc("account_list")
        assert set(listed) == set(good)
        with pytest.raises(RpcFailure) as refused:
            clave.rpc("eth_sign", damaged["ciphertext"][1], "0x01")
        assert refused.value.message == "unknown account"

        # /healthz, from every process (the primary and its HTTP worker mirror one status)
        bodies = []
        for _ in range(20):
            status, text = get_text(clave.url + "/healthz")
            assert status == 200, text
            bodies.append(json.loads(text))
        for health in bodies:
            assert health["ready"] is True and health["degraded"] is True
            assert health["keys_loaded"] == ACCOUNTS - len(damaged)
            assert health["unseal_failures"] == len(damaged)
            assert {r["row"] for r in health["refused_records"]} == bad_rows
        refused_by_row = {r["row"]: r for r in bodies[0]["refused_records"]}
        assert "does not decode" in refused_by_row[damaged["blob_byte0"][0]]["reason"]
        row_address = refused_by_row[damaged["row_address"][0]]
        assert row_address["address"] != damaged["row_address"][1]  # the row's (flipped) column, as stored
        assert f"names {damaged['row_address'][1]}" in row_address["reason"]  # ... and what the blob says
        assert "not the row's address" in refused_by_row[damaged["inner_address"][0]]["reason"]
        ciphertext = refused_by_row[damaged["ciphertext"][0]]
        assert ciphertext["address"] == damaged["ciphertext"][1] and "does not open" in ciphertext["reason"]
        assert "enclave refused it" in refused_by_row[damaged["crash"][0]]["reason"]

        assert _metric(clave, "clave_sealed_records_refused") == len(damaged)
        logs = clave.logs()
        for row in bad_rows:
            assert re.search(rf"sealed record refused: row {row} \(address 0x[0-9a-f]{{40}}\): ", logs), row

        time.sleep(3)  # and it stays up: the watch keeps running, nothing died
        status, text = get_text(clave.url + "/healthz")
        health = json.loads(text)
        assert status == 200 and health["ready"] and health["task_restarts"] == {}
        _sign(clave, good[-1], b"later")
    finally:
        assert clave.stop() == 0
    print(f"restart with {ACCOUNTS} accounts, {len(damaged)} damaged: ready in {restart_seconds:.1f} s")
