"""clave's error families: what each error is, what callers that catch builtin types still catch, and
how the command line shows one."""

from __future__ import annotations

import ast
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clave.core.errors import (
    METHOD_NOT_FOUND,
    ClaveError,
    ConfigError,
    InfraError,
    MethodNotFound,
    RequestError,
)
from clave.core.eth.rlp import RLPError, decode
from clave.core.gojson import GoJSONError
from clave.dev.kmsemu.policy import PolicyError
from clave.dev.kmsemu.store import KmsFault
from clave.enclave.state import NotReady
from clave.link.frames import FrameError
from clave.sidecar.datadir import DatadirBusy, datadir_lock
from clave.sidecar.secretfiles import AlreadyExists, write_new_private, write_private
from clave.sidecar.transports.ipc_client import ClaveUnreachable, IpcClient, RpcCallError

SRC = Path(__file__).resolve().parents[1] / "src" / "clave"


@pytest.mark.parametrize(
    "error, family",
    [
        (GoJSONError("x"), RequestError),
        (RLPError("x"), RequestError),
        (PolicyError("x"), RequestError),
        (KmsFault("ValidationException", "x"), RequestError),
        (RpcCallError(-32602, "x"), RequestError),
        (NotReady("x"), InfraError),
        (FrameError("x"), InfraError),
        (DatadirBusy("x"), InfraError),
        (ClaveUnreachable("x"), InfraError),
        (AlreadyExists(Path("x")), ConfigError),
    ],
)
def test_every_error_is_in_a_family(error: ClaveError, family: type[ClaveError]) -> None:
    assert isinstance(error, family)
    if isinstance(error, InfraError):
        assert error.remedy, f"{type(error).__name__} needs a remedy for the operator"


def test_builtin_bases_are_kept_for_old_except_clauses() -> None:
    assert isinstance(RLPError("x"), ValueError) and isinstance(PolicyError("x"), ValueError)
    with pytest.raises(ValueError, match="EOF"):
        decode(b"")
    assert isinstance(ClaveUnreachable("x"), ConnectionError)
    assert str(KmsFault("NotFoundException", "gone")) == "NotFoundException: gone"
    assert RpcCallError(-32601, "m").code == -32601


def test_method_not_found_is_gos_text() -> None:
    exc = MethodNotFound("foo_bar")
    assert exc.code == METHOD_NOT_FOUND
    assert exc.message == "the method foo_bar does not exist/is not available"


def test_ipc_client_unreachable(tmp_path: Path) -> None:
    with pytest.raises(ClaveUnreachable) as e:
        IpcClient(tmp_path / "nothing.ipc")
    assert e.value.message.startswith(f"cannot reach clave at {tmp_path / 'nothing.ipc'}: ")


def test_private_writer(tmp_path: Path) -> None:
    target = tmp_path / "key.json"
    write_new_private(target, "one")
    assert target.read_text() == "one" and stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(AlreadyExists) as e:
        write_new_private(target, "two")
    assert e.value.message == f"{target}: already exists; refusing to overwrite"
    write_private(target, b"three", replace=True)
    assert target.read_bytes() == b"three" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]  # no temp file left behind


def test_datadir_lock_is_an_infra_error(tmp_path: Path) -> None:
    with datadir_lock(tmp_path), pytest.raises(DatadirBusy) as e, datadir_lock(tmp_path):
        pass
    assert e.value.message == f"another clave is already running on {tmp_path} (lock {tmp_path / 'clave.lock'} is held)"


@pytest.mark.slow
def test_cli_prints_message_and_remedy(tmp_path: Path) -> None:
    with datadir_lock(tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "clave.cli", "serve", "--datadir", str(tmp_path), "--enclave", "unix:/nonexistent"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [  # one line: what is wrong; what to do
        f"clave: another clave is already running on {tmp_path} (lock {tmp_path / 'clave.lock'} is held); "
        f"{DatadirBusy.remedy}",
    ]


def test_only_the_cli_exits() -> None:
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts:
            continue
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        assert "SystemExit" not in names, path


def test_enclave_handlers_do_not_import_the_service() -> None:
    tree = ast.parse((SRC / "enclave" / "opera_keys.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "clave.enclave.service" not in imported
