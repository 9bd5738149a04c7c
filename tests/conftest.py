"""Shared fixtures: the published vectors, foundry's anvil and cast, and a running `clave up`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Anvil, ClaveProcess

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.skip(f"published vectors not found at {VECTORS} (expected ../shared/vectors beside the project)")
    return VECTORS


def _tool(name: str) -> str:
    local = ROOT / ".tools" / "node_modules" / ".bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        message = f"{name} not installed: run `make tools` (npm @foundry-rs/{name})"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI the real-client tests must run, never skip
        pytest.skip(message)
    return found


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
    """One `clave up` shared by the integration tests (chain ids 1 and 31337)."""
    proc = ClaveProcess(tmp_path_factory.mktemp("clave"), chain_ids="31337,1")
    proc.start()
    yield proc
    proc.stop()
