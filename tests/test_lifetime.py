"""Nothing outlives `clave up`, and an interrupted `clave account new` says what it stored.

`clave up` is SIGKILLed, so it runs no clean-up at all: its children (the enclave process holding
plaintext keys, the KMS emulator, the HTTP workers) and theirs (the enclave's keyfile workers and
multiprocessing's resource tracker) must end by themselves (link/process.py). Before, every one of them
kept running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from clave.sidecar.transports.ipc_client import IpcClient
from tests.clients import import_key
from tests.stack import ClaveProcess, process_table

pytestmark = pytest.mark.slow

ADDRESS_LINE = re.compile(r"^Public address of the key:\s+(0x[0-9a-f]{40})$", re.M)
DEADLINE = 10.0  # seconds for every orphan to be gone


def _descendants(root: int, table: dict[int, tuple[int, str, str]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier and pid not in found}
        found |= children
        frontier = children
    return found


def _living(pids: set[int], datadir: Path) -> dict[int, str]:
    """Which of `pids`, or of any process naming `datadir`, still run (zombies are dead, only unreaped)."""
    table = process_table()
    return {pid: cmd for pid, (_, state, cmd) in table.items()
            if state != "Z" and (pid in pids or str(datadir) in cmd) and pid != os.getpid()}


def test_nothing_outlives_a_killed_clave_up(tmp_path: Path) -> None:
    clave = ClaveProcess(tmp_path / "orphans", extra=["--http.workers", "2"])
    clave.start()
    assert clave.proc is not None
    tree: set[int] = set()
    try:
        # Use it: an import runs scrypt in the enclave's keyfile workers; then sign with the key.
        key = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
        address = import_key(clave, key, tmp_path)
        signature = clave.rpc("eth_sign", address, "0x0bad")
        assert Account.recover_message(encode_defunct(b"\x0b\xad"), signature=signature).lower() == address

        table = process_table()
        tree = _descendants(clave.proc.pid, table)
        commands = " | ".join(table[pid][2] for pid in tree)
        for part in ("clave.dev.enclave", "clave.dev.kmsemu", "clave.sidecar.transports.http_worker",
                     "multiprocessing.spawn", "resource_tracker"):
            assert part in commands, f"expected a {part} process under clave up: {commands}"

        os.kill(clave.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        clave.proc.wait()
        while living := _living(tree, clave.datadir):
            elapsed = time.monotonic() - killed
            assert elapsed < DEADLINE, f"still running {elapsed:.1f} s after kill -9 of clave up: {living}"
            time.sleep(0.05)
        print(f"all {len(tree)} descendants of clave up gone {time.monotonic() - killed:.2f} s after kill -9")
    finally:
        for pid in _living(tree, clave.datadir):  # leave nothing behind, whatever happened above
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        clave.stop()


def _listed(clave: ClaveProcess) -> set[str]:
    with IpcClient(clave.ipc) as client:
        return {a["address"] for a in client.call("clave_listAccounts")}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> ClaveProcess:
    clave = ClaveProcess(tmp_path_factory.mktemp("interrupted"))
    clave.start()
    yield clave  # type: ignore[misc]
    clave.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_account_new_prints_what_it_stored(plain: ClaveProcess, sig: int, tmp_path: Path) -> None:
    before = _listed(plain)
    count = 100_000
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clave.cli", "account", "new", "--count", str(count), "--datadir", str(plain.datadir)],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first call's accounts are stored and being printed
    assert ADDRESS_LINE.match(first.strip()), first
    proc.send_signal(sig)
    rest = proc.stdout.read()  # the same buffered reader: communicate() would skip what it holds
    proc.wait(120)
    err = errors.read_text()
    printed = ADDRESS_LINE.findall(first + rest)
    created = _listed(plain) - before
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert 0 < len(printed) < count, len(printed)
    assert set(printed) == created, f"printed {len(printed)}, stored {len(created)}: {err}"
    assert f"interrupted: {len(printed)} of {count} accounts created and stored" in err, err
    assert re.search(r"clave: 1000 of 100000 accounts created and stored", err), err  # progress, per call


def test_account_new_keeps_its_output_format(plain: ClaveProcess) -> None:
    result = plain.cli("account", "new", "--count", "3")
    assert result.returncode == 0, result.stderr
    assert len(ADDRESS_LINE.findall(result.stdout)) == 3 and result.stdout.count("\n") == 3
    assert result.stderr == ""  # no progress lines for a count that fits in one call
