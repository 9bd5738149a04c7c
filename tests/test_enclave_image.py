"""What the enclave image holds is enough and no more: the pinned requirements alone (installed --no-deps,
as the Dockerfile does) plus the image rooms of `clave` (`clave.dev.image`) run the enclave service, and
nothing of the sidecar, the CLI or the local stand-ins is in it or imported by it. No Docker engine is
needed: this checks the image's contents, not the image build."""

from __future__ import annotations

import asyncio
import re
import subprocess
import venv
from pathlib import Path

import pytest

from clave.dev.image import IMAGE_ROOMS, build_app_dir, image_files
from clave.dev.kmsemu.tls import ensure_tls
from clave.dev.soft_nsm import measure_code
from clave.link.sockets import parse_address
from clave.sidecar.signing.enclave_client import EnclaveClient
from tests.conftest import ROOT

DOCKERFILE = ROOT / "src" / "clave" / "enclave" / "Dockerfile"
FORBIDDEN_ROOMS = ("sidecar", "cli", "dev")


def test_dockerfile_copies_exactly_the_image_rooms() -> None:
    copies = re.findall(r"^COPY src/(\S+) /app/(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert ("clave/__init__.py", "clave/__init__.py") in copies
    rooms = {src.split("/")[1] for src, dest in copies if src == dest and src.count("/") == 1 and not src.endswith(".py")}
    assert rooms == set(IMAGE_ROOMS)
    assert not set(FORBIDDEN_ROOMS) & set(IMAGE_ROOMS)


def test_image_file_set_has_no_sidecar_cli_or_dev_code(tmp_path: Path) -> None:
    files = image_files()
    assert "clave/enclave/service.py" in files and "clave/core/errors.py" in files
    for rel in files:
        room = rel.split("/")[1]
        assert room in IMAGE_ROOMS or rel == "clave/__init__.py", rel
        assert "soft_nsm" not in rel and "kmsemu" not in rel, rel
    # What the software NSM measures is exactly these files, as the image lays them out.
    app = build_app_dir(tmp_path / "app")
    assert measure_code(app) == measure_code()
    # No image file imports a room that is not in the image.
    pattern = re.compile(r"^\s*(?:from|import)\s+clave\.(" + "|".join(FORBIDDEN_ROOMS) + r")\b", re.M)
    offenders = [rel for rel in files if pattern.search((app / rel).read_text())]
    assert offenders == []


@pytest.mark.slow
def test_pinned_requirements_run_the_image_alone(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
         "-r", str(ROOT / "src" / "clave" / "enclave" / "requirements.txt")],
        capture_output=True, text=True, timeout=600,
    )
    if install.returncode != 0 and "Could not find a version" in install.stderr:
        pytest.skip(f"package registry unreachable: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    app = build_app_dir(tmp_path / "app")

    # The image's Python can import the service, but not aiohttp, boto3 or any room outside the image.
    probe = subprocess.run(
        [str(python), "-c",
         "import sys, importlib.util as u\n"
         "import clave.enclave.runner, clave.enclave.service\n"
         "from clave.enclave.kms_tls import aws_transport\n"
         "aws_transport().check_endpoint('kms.eu-west-1.amazonaws.com')  # Amazon's roots from the pinned certifi\n"
         "print(sorted(m for m in ('aiohttp', 'boto3', 'prometheus_client') if u.find_spec(m)))\n"
         "print(sorted(m for m in sys.modules if m.startswith(('clave.sidecar', 'clave.cli', 'clave.dev'))))\n"
         "print(sorted(r for r in ('clave.sidecar', 'clave.cli', 'clave.dev') if u.find_spec(r)))\n"],
        cwd=app, capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["[]", "[]", "[]"]

    # The image has no software NSM: its entry point accepts only the hardware one.
    refused = subprocess.run([str(python), "-m", "clave.enclave", "--listen", "unix:x", "--nsm", "software"],
                             cwd=app, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr

    # With the software NSM and what it needs added beside it (local mode has them from the full install),
    # the image's service code runs on the pinned requirements alone.
    local_mode = ["dev/__init__.py", "dev/image.py", "dev/soft_nsm.py", "dev/enclave.py",
                  "sidecar/__init__.py", "sidecar/secretfiles.py"]
    for rel in local_mode:
        (app / "clave" / rel).parent.mkdir(exist_ok=True)
        (app / "clave" / rel).write_bytes((ROOT / "src" / "clave" / rel).read_bytes())
    socket_path = tmp_path / "enclave.sock"
    proc = subprocess.Popen(
        [str(python), "-m", "clave.dev.enclave", "--listen", f"unix:{socket_path}", "--nsm-state", str(tmp_path / "nsm"),
         "--kms-ca", str(ensure_tls(tmp_path / "kms"))],
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
