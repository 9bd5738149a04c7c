"""Processes the integration tests drive: `clave up` and anvil, on random ports, as subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

READY = re.compile(r"clave ready (.*)$")
WAITING = re.compile(r"clave waiting: (.*)$")


class Admin:
    """An export admin key (eth-account), its V3 keyfile and password file: what `clave up --admin` names
    and `clave account export --admin-keyfile/--admin-password-file` uses."""

    PASSWORD = "clave test admin keyfile password 5"

    def __init__(self, directory: Path, key: bytes | None = None) -> None:
        from eth_account import Account

        account = Account.from_key(key) if key is not None else Account.create()
        self.address = account.address.lower()
        self.key = bytes(account.key)
        directory.mkdir(parents=True, exist_ok=True)
        self.keyfile = directory / f"admin-{self.address}.json"
        self.keyfile.write_text(json.dumps(Account.encrypt(account.key, self.PASSWORD, kdf="scrypt", iterations=1 << 12)))
        self.password_file = directory / f"admin-{self.address}.pw"
        self.password_file.write_text(self.PASSWORD + "\n")

    @property
    def export_args(self) -> list[str]:
        return ["--admin-keyfile", str(self.keyfile), "--admin-password-file", str(self.password_file)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post_json(
    url: str, payload: Any, *, headers: dict[str, str] | None = None, timeout: float = 30, context: ssl.SSLContext | None = None
) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def get_text(url: str, *, timeout: float = 10) -> tuple[int, str]:
    """GET a URL on a new connection; the status and body, also for HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class ClaveProcess:
    def __init__(
        self,
        datadir: Path,
        *,
        chain_ids: str = "1",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.datadir = datadir
        self.env = env
        self.cwd = cwd
        self.waiting_line = ""
        self.chain_ids = chain_ids
        self.extra = extra or []
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.ready_line = ""
        self._ids = 0
        self.admin: Admin | None = None  # the export admin `--admin` named, if any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ipc(self) -> Path:
        return self.datadir / "clave.ipc"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "clave.cli", "up", "--datadir", str(self.datadir),
                "--http.port", str(self.port), "--chainid", self.chain_ids, *self.extra]

    def start(self, timeout: float = 60, *, until_waiting: bool = False) -> None:
        """Start and wait for the ready line (or, with until_waiting, for a `clave waiting:` line)."""
        self.port = free_port()
        self.output = []
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, **self.env} if self.env else None, cwd=self.cwd,
        )
        deadline = time.monotonic() + timeout
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if READY.search(line):
                    self.ready_line = line.strip()
                    ready.set()
                elif WAITING.search(line):
                    self.waiting_line = line.strip()
                    if until_waiting:
                        ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("clave up did not become ready:\n" + "".join(self.output))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def rpc(self, method: str, *params: Any, omit_params: bool = False) -> Any:
        """Call over HTTP; return the `result`, or raise RpcFailure with the error."""
        self._ids += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._ids, "method": method}
        if not omit_params:
            message["params"] = list(params)
        status, reply = post_json(self.url, message)
        if isinstance(reply, dict) and "error" in reply:
            raise RpcFailure(reply["error"]["code"], reply["error"]["message"], status)
        assert status == 200, (status, reply)
        return reply["result"]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clave.cli", *args, "--datadir", str(self.datadir)],
            capture_output=True, text=True, timeout=timeout,
        )

    def logs(self) -> str:
        text = "".join(self.output)
        for path in (self.datadir / "logs").glob("*.log"):
            text += path.read_text(errors="replace")
        return text


class RpcFailure(Exception):
    def __init__(self, code: int, message: str, status: int) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.status = status


class Anvil:
    def __init__(self, binary: str, *, chain_id: int, log_dir: Path) -> None:
        self.binary = binary
        self.chain_id = chain_id
        self.log_dir = log_dir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        log = open(self.log_dir / "anvil.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--chain-id", str(self.chain_id), "--hardfork", "prague",
             "--silent"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.rpc("eth_chainId")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("anvil did not start")

    def rpc(self, method: str, *params: Any) -> Any:
        status, reply = post_json(self.url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        if "error" in reply:
            raise RpcFailure(reply["error"]["code"], reply["error"]["message"], status)
        return reply["result"]

    def fund(self, address: str, wei: int = 10**20) -> None:
        self.rpc("anvil_setBalance", address, hex(wei))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process visible in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(stat[1]), stat[0], cmdline)
    return table
