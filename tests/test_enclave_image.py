"""What the enclave image holds is enough: the pinned requirements alone (installed --no-deps, as the
Dockerfile does) plus the `enclave` package alone run the enclave service. No Docker engine is needed;
this checks the image's contents, not the image build."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from enclave.transport import parse_address
from sidecar.enclave_client import EnclaveClient
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_pinned_requirements_run_the_enclave_alone(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
         "-r", str(ROOT / "enclave" / "requirements.txt")],
        capture_output=True, text=True, timeout=600,
    )
    if install.returncode != 0 and "Could not find a version" in install.stderr:
        pytest.skip(f"package registry unreachable: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    app = tmp_path / "app"
    shutil.copytree(ROOT / "enclave", app / "enclave", ignore=shutil.ignore_patterns("__pycache__"))
    socket_path = tmp_path / "enclave.sock"
    proc = subprocess.Popen(
        [str(python), "-m", "enclave", "--listen", f"unix:{socket_path}", "--nsm", "software",
         "--nsm-state", str(tmp_path / "nsm")],
        cwd=app, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "enclave listening" in line, (proc.stderr.read() if proc.stderr else "")

        async def hello() -> dict:
            client = EnclaveClient(parse_address(f"unix:{socket_path}"))
            try:
                return await client.call("hello")  # type: ignore[no-any-return]
            finally:
                await client.close()

        assert asyncio.run(hello())["ready"] is False
    finally:
        proc.terminate()
        proc.wait(10)
