"""Shared fixtures and the two test tiers.

Tiers: `pytest -m "not slow"` (`make check`) is the fast unit tier; it runs in one process and starts
no other. Every test that starts a process is marked `slow`: automatically when it uses one of
PROCESS_FIXTURES below, by a module-level `pytestmark = pytest.mark.slow` where a module spawns on its
own. The fast tier enforces it: while a test that is not `slow` sets up, runs or tears down,
`subprocess`, `os.fork`/`posix_spawn`/`system`, `multiprocessing` process starts and asyncio's
subprocess functions fail that test with the name of what it tried to start. The full suite
(`make test`, CI) runs both tiers.

Fixtures: the published vectors, foundry's anvil and cast, a running `clave up` (whose logs and
datadir are searched for every secret handed to it when the session ends), and `inline_kdf`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.process
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import secrets_search
from tests.inproc import kdf_inline
from tests.stack import Admin, Anvil, ClaveProcess
from tests.vectors import skip_or_fail, vector

ROOT = Path(__file__).resolve().parents[1]

# Fixtures that start a process (or hand a test a binary to start). A test using any of them, directly
# or through another fixture, is marked `slow` at collection.
PROCESS_FIXTURES = frozenset({"clave", "anvil", "anvil_bin", "cast"})


# --- tiers ----------------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marks added here must count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        needs_clients = item.get_closest_marker("clients") is not None  # anvil and cast are processes
        if (used or needs_clients) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


class SpawnInFastTier(Exception):
    """Raised where a fast-tier test tries to start a process (the test also fails afterwards)."""


def _fast_tier_message(item: pytest.Item, attempts: list[str]) -> str:
    return (
        f"{item.nodeid} is in the fast tier (not marked slow) but tried to start a process: "
        + "; ".join(attempts)
        + ". Mark it `slow` (pytestmark / PROCESS_FIXTURES in tests/conftest.py) or keep it in-process."
    )


@contextlib.contextmanager
def _no_spawning(attempts: list[str]) -> Iterator[None]:
    """Replace every way of starting a process with one that records the attempt and raises."""

    def refuse(what: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            detail = what
            if what == "subprocess.Popen" and len(args) > 1:
                detail = f"subprocess.Popen({args[1]!r})"  # _execute_child(self, args, ...)
            elif args and what.startswith(("asyncio", "os.posix_spawn", "os.system")):
                detail = f"{what}({args[0]!r})"
            attempts.append(detail)
            raise SpawnInFastTier(f"{detail}: the fast tier starts no process")

        return refused

    targets: list[tuple[Any, str, str]] = [
        (subprocess.Popen, "_execute_child", "subprocess.Popen"),  # run, check_output, Popen, asyncio's default loop
        (multiprocessing.process.BaseProcess, "start", "multiprocessing Process.start"),  # pools, any context
        (asyncio, "create_subprocess_exec", "asyncio.create_subprocess_exec"),  # also covers uvloop's spawning
        (asyncio, "create_subprocess_shell", "asyncio.create_subprocess_shell"),
        (asyncio.subprocess, "create_subprocess_exec", "asyncio.create_subprocess_exec"),
        (asyncio.subprocess, "create_subprocess_shell", "asyncio.create_subprocess_shell"),
    ]
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            targets.append((os, name, f"os.{name}"))
    saved = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
             for owner, name, _ in targets]
    try:
        for owner, name, what in targets:
            setattr(owner, name, refuse(what))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _guarded(item: pytest.Item) -> Iterator[Any]:
    if item.get_closest_marker("slow") is not None:
        return (yield)
    attempts: list[str] = []
    try:
        with _no_spawning(attempts):
            return (yield)
    finally:
        if attempts:  # also when the code under test caught SpawnInFastTier
            pytest.fail(_fast_tier_message(item, attempts), pytrace=False)


# Setup, call and teardown are all guarded: a module- or session-scoped fixture set up for a fast test
# runs inside that test's setup, where an autouse function fixture would come too late.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[Any]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    return (yield from _guarded(item))


@pytest.fixture
def inline_kdf() -> Iterator[None]:
    """Run the enclave's keyfile work (scrypt) in the calling thread instead of `kdf_pool`'s spawned
    processes, so that an in-process enclave loads a master key (which warms the pool) and imports and
    exports keyfiles in the fast tier. Only where `fn(*args)` runs changes; production keeps its pool.
    The in-process stack (tests/inproc.py) does the same for its whole lifetime."""
    with kdf_inline():
        yield


# --- vectors and tools ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The published vectors directory (see tests/vectors.py): skipped when absent, a failure in CI."""
    return vector()


def _tool(name: str) -> str:
    local = ROOT / ".tools" / "node_modules" / ".bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        skip_or_fail(f"{name} not installed: run `make tools` (npm @foundry-rs/{name})")  # CI: never skip
    return native_binary(found)


def native_binary(shim: str) -> str:
    """foundry's npm package installs a node shim (`node_modules/.bin/cast`) that exits 0 even when the tool
    fails; the native binary sits in the platform package next to it (`@foundry-rs/cast-linux-amd64/bin`).
    Return that binary when it is there, so a failing tool fails the test."""
    path = Path(shim).resolve()
    for modules in path.parents:
        if modules.name == "node_modules":
            found = sorted((modules / "@foundry-rs").glob(f"{Path(shim).name}-*/bin/{Path(shim).name}"))
            if found:
                return str(found[0])
            break
    return shim


@pytest.fixture(scope="session")
def cast() -> str:
    return _tool("cast")


@pytest.fixture(scope="session")
def anvil_bin() -> str:
    return _tool("anvil")


@pytest.fixture(scope="session")
def anvil(anvil_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    node = Anvil(anvil_bin, chain_id=31337, log_dir=tmp_path_factory.mktemp("anvil"))
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def clave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaveProcess]:
    """One `clave up` shared by the integration tests (chain ids 1 and 31337).

    When the session ends, its output, log files and datadir are searched for every key and password the
    tests handed to it (`secrets_search.KNOWN_SECRETS`), wherever the tests that did so ran in the order:
    a leak fails the session, naming the secret's description and the file, never the secret.
    """
    admin = Admin(tmp_path_factory.mktemp("admin"))  # authorizes `account export` (README "Accounts")
    secrets_search.KNOWN_SECRETS.add(admin.key.hex())
    secrets_search.KNOWN_SECRETS.add(Admin.PASSWORD)
    # geth's {raw, tx} result for eth_signTransaction: these tests read the `tx` JSON; the client tests
    # (tests/test_client_matrix.py) run their own `clave up` with the default bare raw transaction.
    proc = ClaveProcess(tmp_path_factory.mktemp("clave"), chain_ids="31337,1",
                        extra=["--admin", admin.address, "--eth.signtx-result", "geth"])
    proc.admin = admin
    proc.start()
    yield proc
    proc.stop()
    leaks = secrets_search.search(secrets_search.clave_haystack(proc), secrets_search.KNOWN_SECRETS)
    if leaks:
        pytest.fail("secrets handed to the shared `clave up` leaked: " + secrets_search.describe(leaks), pytrace=False)
