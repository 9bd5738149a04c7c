"""`--http.workers`: several sidecar processes on one HTTP port, one view of accounts, health and metrics.

Every `ClaveProcess.rpc` call opens a new TCP connection, and the kernel spreads new connections over the
processes listening with SO_REUSEPORT, so a run of calls reaches all of them.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.accounts import new_account
from tests.stack import ClaveProcess, RpcFailure, get_text

pytestmark = pytest.mark.slow  # every test here starts `clave up` (or other processes) itself

WORKERS = 3
CALLS = 60  # new connections per check; all landing on one of 3 processes has odds of about 3 * (2/3)^60


def _worker_pids(clave: ClaveProcess) -> list[int]:
    assert clave.proc is not None
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(stat[1]) == clave.proc.pid and stat[0] != "Z" and b"clave.sidecar.transports.http_worker" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _sign(clave: ClaveProcess, address: str, data: bytes) -> None:
    signature = clave.rpc("account_signData", "text/plain", address, "0x" + data.hex())
    assert Account.recover_message(encode_defunct(data), signature=signature).lower() == address


def _wait_workers(clave: ClaveProcess, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pids := _worker_pids(clave)) != count:
        assert time.monotonic() < deadline, f"expected {count} HTTP workers, found {pids}"
        time.sleep(0.1)
    return pids


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaveProcess]:
    proc = ClaveProcess(tmp_path_factory.mktemp("workers"), extra=["--http.workers", str(WORKERS)])
    proc.start()
    yield proc
    proc.stop()


def test_every_process_serves_the_port(pool: ClaveProcess) -> None:
    assert f"http_workers={WORKERS}" in pool.ready_line
    workers = _wait_workers(pool, WORKERS - 1)
    assert pool.proc is not None
    processes = [pool.proc.pid, *workers]
    address = new_account(pool)
    before = {pid: _cpu_ticks(pid) for pid in processes}
    for i in range(CALLS * 3):
        _sign(pool, address, i.to_bytes(4, "big"))
    idle = [pid for pid in processes if _cpu_ticks(pid) == before[pid]]
    assert not idle, f"processes {idle} of {processes} served none of {CALLS * 3} connections"


def test_accounts_made_by_the_primary_are_seen_everywhere(pool: ClaveProcess) -> None:
    # Made over IPC (the primary): without a bearer token account_new is refused over HTTP. Accounts a
    # worker makes over HTTP with a token: tests/test_hardening.py.
    created = [new_account(pool) for _ in range(5)]
    for i in range(CALLS):
        listed = pool.rpc("account_list")
        assert set(created) <= set(listed)
        _sign(pool, created[i % len(created)], b"seen %d" % i)
    result = pool.cli("account", "list")  # over IPC, served by the primary only
    assert result.returncode == 0, result.stderr
    assert all("{" + a[2:] + "}" in result.stdout.lower() for a in created)


def test_workers_take_in_new_accounts_in_the_background(pool: ClaveProcess) -> None:
    result = pool.cli("account", "new", "--count", "1500")  # over IPC: only the primary knows at first
    assert result.returncode == 0, result.stderr
    total = len(pool.rpc("account_list"))
    deadline = time.monotonic() + 15
    while True:  # /healthz reads the process's own view and never asks the store itself
        counts = set()
        for _ in range(CALLS // 2):
            status, body = get_text(pool.url + "/healthz")
            counts.add(int(re.search(r'"keys_loaded": (\d+)', body).group(1)))  # type: ignore[union-attr]
        if counts == {total}:
            break
        assert time.monotonic() < deadline, f"processes still report {counts} accounts, not {total}"
        time.sleep(0.2)


def test_metrics_and_health_add_up_across_processes(pool: ClaveProcess) -> None:
    address = new_account(pool)

    def counted() -> float:
        status, text = get_text(pool.url + "/metrics")
        assert status == 200
        match = re.search(r'^clave_requests_total\{method="eth_sign",outcome="ok"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    start = counted()
    for i in range(CALLS):
        pool.rpc("eth_sign", address, f"0x{i:04x}")
    totals = {counted() for _ in range(CALLS // 3)}  # each scrape may be answered by a different process
    assert totals == {start + CALLS}
    bodies = set()
    for _ in range(CALLS // 3):
        status, body = get_text(pool.url + "/healthz")
        assert status == 200, body
        bodies.add(re.sub(r'"attestation_age_seconds": [0-9.]+', "", body))
    assert len(bodies) == 1, bodies


def test_a_killed_worker_is_replaced(pool: ClaveProcess) -> None:
    address = new_account(pool)
    victim = _wait_workers(pool, WORKERS - 1)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in (pids := _worker_pids(pool)) or len(pids) != WORKERS - 1:
        assert time.monotonic() < deadline, "the killed HTTP worker was not replaced"
        time.sleep(0.1)
    for i in range(CALLS):
        _sign(pool, address, b"after %d" % i)  # the dead one left the port: no connection reaches it
    assert re.search(rf"HTTP worker \d \(pid {victim}\) exited with status -9; starting it again", pool.logs())


def test_workers_follow_an_enclave_restart(pool: ClaveProcess) -> None:
    address = new_account(pool)
    enclave = next(
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and f"{pool.datadir}/enclave.sock".encode() in (p / "cmdline").read_bytes().replace(b"\0", b" ")
    )
    os.kill(enclave, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            for i in range(CALLS):
                _sign(pool, address, b"back %d" % i)
            break
        except RpcFailure as exc:
            assert exc.code == -32000 and exc.status == 503, exc
            assert time.monotonic() < deadline, "the HTTP workers did not come back after the enclave restart"
            time.sleep(0.2)


def test_workers_end_with_the_primary(tmp_path: Path) -> None:
    clave = ClaveProcess(tmp_path / "orphans", extra=["--http.workers", "2"])
    clave.start()
    assert clave.proc is not None
    try:
        (worker,) = _wait_workers(clave, 1)
        os.kill(clave.proc.pid, signal.SIGKILL)  # no clean-up at all: the worker sees its stdin close
        deadline = time.monotonic() + 10
        while Path(f"/proc/{worker}").exists() and "Z" not in Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1][:3]:
            assert time.monotonic() < deadline, "an HTTP worker outlived a SIGKILLed primary"
            time.sleep(0.1)
    finally:
        clave.stop()
