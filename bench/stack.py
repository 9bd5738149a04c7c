"""The processes the benchmark drives: a `clave up` stack (or a running one), anvil; their memory."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"clave ready http=(\S+) ipc=(\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, payload: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="GET" if payload is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


def rpc(url: str, method: str, *params: Any, timeout: float = 60) -> Any:
    status, reply = http_json(url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout)
    if not isinstance(reply, dict) or "result" not in reply:
        raise RuntimeError(f"{method}: HTTP {status}: {reply}")
    return reply["result"]


class IpcClient:
    """Blocking JSON-RPC over the IPC socket (the management calls of the benchmark)."""

    def __init__(self, path: str, timeout: float = 900) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = ""
        self.ids = 0
        self.decoder = json.JSONDecoder()

    def call(self, method: str, *params: Any) -> Any:
        self.ids += 1
        self.sock.sendall(json.dumps({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": list(params)}).encode() + b"\n")
        while True:
            self.buffer = self.buffer.lstrip()
            if self.buffer:
                try:
                    reply, end = self.decoder.raw_decode(self.buffer)
                except ValueError:
                    reply = None
                if reply is not None:
                    self.buffer = self.buffer[end:]
                    if reply.get("id") != self.ids:
                        continue
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("IPC connection closed")
            self.buffer += data.decode()

    def close(self) -> None:
        self.sock.close()


def children(pid: int) -> list[int]:
    return [child for child, (ppid, _) in _proc_table().items() if ppid == pid]


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class ClaveStack:
    """`clave up` on a datadir, started by us (`python -m clave.cli up`), or a running one (url + ipc)."""

    def __init__(self, datadir: Path | None, *, url: str | None = None, ipc: str | None = None, chain_id: int = 1,
                 python: str = sys.executable, http_workers: int = 1, extra: list[str] | None = None) -> None:
        self.datadir = datadir
        self.extra = list(extra or [])
        self.http_workers = http_workers
        self.chain_id = chain_id
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self.url = url or ""
        self.ipc = ipc or (str(datadir / "clave.ipc") if datadir else "")
        self.output: collections.deque[str] = collections.deque(maxlen=200)  # the sidecar logs every request
        self.external = url is not None

    def start(self, timeout: float = 180) -> float:
        """Start and wait for the `clave ready` line; return the seconds it took."""
        assert self.datadir is not None
        port = free_port()
        argv = [self.python, "-m", "clave.cli", "up", "--datadir", str(self.datadir), "--http.port", str(port),
                "--chainid", str(self.chain_id), "--http.workers", str(self.http_workers), *self.extra]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])})
        ready = threading.Event()
        self.output.clear()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                match = READY.search(line)
                if match:
                    self.url, self.ipc = match.group(1), match.group(2)
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError("clave up did not become ready:\n" + "".join(list(self.output)[-40:]))
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def health(self) -> dict[str, Any]:
        status, body = http_json(self.url.rstrip("/") + "/healthz", timeout=30)
        return body if isinstance(body, dict) else {"status": status, "body": body}

    def pids(self) -> dict[str, int]:
        """sidecar (the `clave up` process itself), enclave, kms-emulator."""
        return {name: group[0] for name, group in self.groups().items()}

    def groups(self) -> dict[str, list[int]]:
        """The same, with the sidecar's HTTP workers (`--http.workers`) after the primary in "sidecar"."""
        out: dict[str, list[int]] = {}
        root = self.proc.pid if self.proc is not None else self._find_external()
        if root is None:
            return out
        out["sidecar"] = [root]
        for child in children(root):
            line = cmdline(child)
            if "clave.dev.enclave" in line:
                out["enclave"] = [child]
            elif "kmsemu" in line:
                out["kms-emulator"] = [child]
            elif "clave.sidecar.transports.http_worker" in line:
                out["sidecar"].append(child)
        return out

    def _find_external(self) -> int | None:
        # A stack we did not start: find the `clave up` whose IPC path we were given.
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                line = cmdline(int(entry))
                if " up " in line and ("clave.cli" in line or "clave" in line) and self.ipc and \
                        str(Path(self.ipc).parent) in line:
                    return int(entry)
        return None

    def rss(self) -> dict[str, float]:
        mem = {name: round(sum(rss_mb(pid) for pid in group), 1) for name, group in self.groups().items()}
        mem["enclave+sidecar"] = round(mem.get("enclave", 0.0) + mem.get("sidecar", 0.0), 1)
        return mem


class AnvilProcess:
    def __init__(self, binary: str, chain_id: int, log_path: Path) -> None:
        self.binary = binary
        self.chain_id = chain_id
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.binary, "--port", str(port), "--chain-id", str(self.chain_id), "--silent"],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                rpc(self.url, "eth_chainId", timeout=2)
                return
            except (OSError, RuntimeError):
                time.sleep(0.1)
        raise RuntimeError("anvil did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def find_anvil() -> str | None:
    candidate = REPO / ".tools" / "node_modules" / ".bin" / "anvil"
    if candidate.exists():
        return str(candidate)
    from shutil import which

    return which("anvil")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds) for every process."""
    tck = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck)
        except (OSError, IndexError, ValueError):
            continue
    return table


def _cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs; idle and iowait count as not busy."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    total = sum(values[:8])  # guest time is already included in user
    return total - values[3] - values[4], total


class CpuWatch:
    """How busy the machine was over a window, and how much of that was not us.

    The benchmark shares the machine; another session's test run would take CPU from clave and make the
    numbers wrong. "Ours" is this process, its reaped children (wrk, generator workers: os.times) and its live
    descendants (the clave stack: /proc), plus `extra_roots` (a stack we did not start). "Others" is the
    machine's busy time (/proc/stat) minus ours; it includes the kernel's own work that no process is
    charged for, so it is a small positive number even on an idle machine.
    """

    def __init__(self, extra_roots: list[int] | None = None) -> None:
        self.me = os.getpid()
        self.roots = {self.me, *(extra_roots or [])}
        self.t0 = time.monotonic()
        self.times0 = os.times()
        self.before = _proc_table()
        self.stat0 = _cpu_stat()

    def _machine(self) -> tuple[float, float]:
        busy0, total0 = self.stat0
        busy1, total1 = _cpu_stat()
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        tck = os.sysconf("SC_CLK_TCK")
        return (busy1 - busy0) / tck / elapsed, elapsed

    def _ours(self, pid: int, table: dict[int, tuple[int, float]]) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid in self.roots:
                return True
            pid = table.get(pid, (0, 0.0))[0]
            seen += 1
        return False

    def machine_busy_cores(self) -> float:
        """Cores the whole machine was busy (all CPU time but idle and iowait) since the watch started."""
        return self._machine()[0]

    def foreign_cores(self) -> float:
        busy, elapsed = self._machine()
        t1 = os.times()
        ours = (t1.user + t1.system + t1.children_user + t1.children_system
                - self.times0.user - self.times0.system - self.times0.children_user - self.times0.children_system)
        after = _proc_table()
        for pid, (_, cpu) in after.items():
            if pid != self.me and self._ours(pid, after):
                ours += max(0.0, cpu - self.before.get(pid, (0, 0.0))[1])
        return max(0.0, busy - ours / elapsed)


def wait_quiet(limit_cores: float, max_wait: float, log: Any = None) -> float:
    """Wait (up to max_wait s) until others use under limit_cores in two 3-s readings in a row; return the last."""
    deadline = time.monotonic() + max_wait
    quiet = 0
    while True:
        watch = CpuWatch()
        time.sleep(3)
        busy = watch.foreign_cores()
        quiet = quiet + 1 if busy < limit_cores else 0
        if quiet >= 2 or time.monotonic() >= deadline:
            return busy
        if log is not None and quiet == 0:
            log(f"other processes use {busy:.2f} cores; waiting for a quiet machine")
