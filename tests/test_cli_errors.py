"""Mistakes an operator makes with the `clave` command, each answered by one line that names what was wrong
and what to do, a non-zero exit status, and no traceback.

In process (`clave.cli.main.main([...])` with capsys): nothing here starts a process. Where a running clave
is needed, `FakeClave` answers on a unix socket from a thread with what a real one says (a JSON-RPC error
while the keys are sealed, a dropped connection); `clave up` on a taken port runs in
`test_cli_errors_stack.py` (slow)."""

from __future__ import annotations

import argparse
import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clave.cli import passwords
from clave.cli.helptext import subcommands
from clave.cli.main import build_parser, main

PCR = "0=" + "ab" * 48
ADDRESS = "0x" + "11" * 20
SEALED = "enclave not ready: KMS Decrypt refused: the key policy expects PCR0 aa…, the enclave has bb…"


class FakeClave:
    """A JSON-RPC peer on a unix socket: `replies[method]` is a result, an `{"error": …}` dict, or None to
    close the connection without answering (a clave that went away mid-call)."""

    def __init__(self, path: Path, replies: dict[str, Any]) -> None:
        self.path = path
        self.replies = replies
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while b"\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buffer += data
                if not buffer:
                    continue
                request = json.loads(buffer.split(b"\n")[0])
                reply = self.replies.get(request["method"], {"error": {"code": -32601, "message": "no such method"}})
                if reply is None:
                    continue  # close without answering
                body = {"jsonrpc": "2.0", "id": request["id"]}
                body.update(reply if isinstance(reply, dict) and "error" in reply else {"result": reply})
                conn.sendall(json.dumps(body).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_clave(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], str]]:
    servers: list[FakeClave] = []

    def start(replies: dict[str, Any]) -> str:
        path = tmp_path / f"fake{len(servers)}.ipc"
        servers.append(FakeClave(path, replies))
        return str(path)

    yield start
    for server in servers:
        server.close()


@dataclass
class Mistake:
    name: str
    argv: list[str]
    what: str  # names what was wrong
    remedy: str  # says what to do
    code: int = 1
    files: dict[str, str] = field(default_factory=dict)  # relative path -> content, made in {tmp}
    fake: dict[str, Any] | None = None  # a FakeClave's replies; its socket is {ipc}


EXPORT = ["--admin-keyfile", "{tmp}/admin.json", "--admin-password-file", "{tmp}/pw"]

MISTAKES = [
    Mistake("port above 65535", ["up", "--http.port", "99999"], "--http.port: 99999", "1-65535", 2),
    Mistake("port not a number", ["serve", "--enclave", "unix:x", "--http.port", "http"], "--http.port: 'http'", "1-65535", 2),
    Mistake("port zero", ["up", "--http.port", "0"], "--http.port: 0", "1-65535", 2),
    Mistake("chain id a word", ["up", "--chainid", "abc"], "--chainid: 'abc' is not a chain id", "comma separated", 2),
    Mistake("chain id zero", ["up", "--chainid", "0"], "--chainid: chain id must be positive", "positive integers", 2),
    Mistake("chain ids empty", ["serve", "--enclave", "unix:x", "--chainid", ","], "--chainid: at least one chain id",
            "positive integers", 2),
    Mistake("pcr without =", ["up", "--pcr", "abc"], "--pcr: PCR pin 'abc' must look like N=HEX", "96 hex characters", 2),
    Mistake("pcr too short (account new)", ["account", "new", "--pcr", "0=abcd"], "--pcr: PCR0 value must be",
            "96 hex characters", 2),
    Mistake("pcr not hex (account list)", ["account", "list", "--pcr", "0=zz"], "--pcr: '0=zz' is not N=HEX",
            "96 hex characters", 2),
    Mistake("token file missing", ["up", "--http.auth-token-file", "{tmp}/token"],
            "--http.auth-token-file: {tmp}/token: No such file or directory", "openssl rand -hex 32", 2),
    Mistake("token file empty", ["serve", "--enclave", "unix:x", "--http.auth-token-file", "{tmp}/token"],
            "{tmp}/token: the file is empty", "write the token into it", 2, files={"token": "\n"}),
    Mistake("count zero", ["account", "new", "--count", "0"], "--count: 0", "at least 1", 2),
    Mistake("count a word", ["account", "new", "--count", "many"], "--count: 'many' is not a number", "at least 1", 2),
    Mistake("jobs zero", ["account", "import", "x", "--jobs", "0"], "--jobs: 0", "at least 1", 2),
    Mistake("workers zero", ["up", "--http.workers", "0"], "--http.workers: must be between 1 and 64", "--help", 2),
    Mistake("read timeout zero", ["up", "--http.read-timeout", "0"], "--http.read-timeout", "more than 0", 2),
    Mistake("fee cap negative", ["up", "--rpc.txfeecap", "-1"], "--rpc.txfeecap: -1", "0 or more", 2),
    Mistake("no command", [], "required: COMMAND", "see `clave --help`", 2),
    Mistake("unknown command", ["frobnicate"], "invalid choice: 'frobnicate'", "see `clave --help`", 2),
    Mistake("account without subcommand", ["account"], "required: account_command", "see `clave account --help`", 2),
    Mistake("unknown option", ["account", "list", "--bogus"], "unrecognized arguments: --bogus", "--help", 2),
    Mistake("nonce not hex", ["attest", "--nonce", "xyz"], "--nonce: 'xyz' is not hex", "even number of hex digits", 2),
    Mistake("downstream not http", ["up", "--downstream", "ftp://node"], "--downstream ftp://node",
            "expected an http(s):// or ws(s):// URL"),
    Mistake("downstream header without url", ["up", "--downstream.auth-header-file", "h"],
            "--downstream.auth-header-file needs --downstream", "--downstream URL"),
    Mistake("admin address short", ["up", "--admin", "0x12"], "--admin 0x12", "20-byte address"),
    Mistake("no clave running (list)", ["account", "list", "--ipcpath", "{tmp}/none.ipc"],
            "cannot reach clave at {tmp}/none.ipc", "is `clave up` running?"),
    Mistake("no clave running (new)", ["account", "new", "--datadir", "{tmp}"], "cannot reach clave", "`clave up`"),
    Mistake("no clave running (attest)", ["attest", "--ipcpath", "{tmp}/none.ipc"], "cannot reach clave", "`clave up`"),
    Mistake("import path missing", ["account", "import", "{tmp}/nope.json", "--password-file", "{tmp}/pw"],
            "{tmp}/nope.json: no such file", "pass a V3 keyfile or a keystore directory", files={"pw": "pw\n"}),
    Mistake("import password file missing", ["account", "import", "{tmp}/key.json", "--password-file", "{tmp}/nopw"],
            "{tmp}/nopw: cannot read password file: No such file", "--password-file - to read stdin", files={"key.json": "{}"}),
    Mistake("import without password, no terminal", ["account", "import", "{tmp}/key.json"], "no password",
            "pass --password-file FILE", files={"key.json": "{}"}),
    Mistake("export into a missing directory", ["account", "export", ADDRESS, "--out", "/nonexistent/x.json",
                                                "--password-file", "{tmp}/pw", *EXPORT],
            "--out /nonexistent/x.json: directory /nonexistent does not exist", "create it or choose another --out",
            files={"pw": "pw\n"}),
    Mistake("export over a file", ["account", "export", ADDRESS, "--out", "{tmp}/pw", "--password-file", "{tmp}/pw", *EXPORT],
            "{tmp}/pw: already exists", "choose another --out", files={"pw": "pw\n"}),
    Mistake("export with empty password", ["account", "export", ADDRESS, "--out", "{tmp}/x.json",
                                           "--password-file", "{tmp}/empty", *EXPORT],
            "the export password is empty", "needs one", files={"empty": "\n"}),
    Mistake("export with both passwords on stdin", ["account", "export", ADDRESS, "--out", "{tmp}/x.json",
                                                     "--password-file", "-", "--admin-keyfile", "{tmp}/a.json",
                                                     "--admin-password-file", "-"],
            "both read stdin", "give one of them a file"),
    Mistake("admin init without store", ["admin", "init", "--datadir", "{tmp}", "--admin", ADDRESS], "no key store",
            "pass --admin to clave up"),
    Mistake("attest verify missing file", ["attest", "verify", "{tmp}/doc.cbor"], "{tmp}/doc.cbor: No such file",
            "clave attest --out FILE"),
    Mistake("kms-emulator without root", ["kms-emulator", "--datadir", "{tmp}"], "needs --root PEM", "root.pem"),
    Mistake("software enclave without state", ["enclave", "--listen", "unix:x", "--nsm", "software"],
            "--nsm software needs --nsm-state DIR", "--kms-ca FILE"),
    Mistake("kms-policy with a user ARN", ["kms-policy", "--role-arn", "arn:aws:iam::1:user/x"], "not an IAM role ARN",
            "see `clave kms-policy --help`"),
    Mistake("account new while keys are sealed", ["account", "new", "--ipcpath", "{ipc}"], SEALED,
            "wait until clave logs 'clave ready'", fake={"clave_newAccount": {"error": {"code": -32000, "message": SEALED}}}),
    Mistake("account list while keys are sealed", ["account", "list", "--ipcpath", "{ipc}"], SEALED,
            "wait until clave logs 'clave ready'", fake={"clave_listAccounts": {"error": {"code": -32000, "message": SEALED}}}),
    Mistake("clave goes away mid-call", ["account", "list", "--ipcpath", "{ipc}"], "clave closed the connection",
            "start it (`clave up`", fake={"clave_listAccounts": None}),
    Mistake("--pcr honoured by account new (no root to check it)", ["account", "new", "--datadir", "{tmp}",
                                                                     "--ipcpath", "{ipc}", "--pcr", PCR],
            "nsm/root.pem: no attestation root", "pass --attestation-root PEM", fake={"clave_newAccount": [ADDRESS]}),
    Mistake("--pcr honoured by account list (no root to check it)", ["account", "list", "--datadir", "{tmp}",
                                                                      "--ipcpath", "{ipc}", "--pcr", PCR],
            "nsm/root.pem: no attestation root", "pass --attestation-root PEM", fake={"clave_listAccounts": []}),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_mistake_gets_one_line_with_remedy(
    mistake: Mistake, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    fake_clave: Callable[[dict[str, Any]], str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no prompt
    for name, content in mistake.files.items():
        (tmp_path / name).write_text(content)
    ipc = fake_clave(mistake.fake) if mistake.fake is not None else ""

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{ipc}", ipc)

    with pytest.raises(SystemExit) as exited:
        main([fill(a) for a in mistake.argv])
    out, err = capsys.readouterr()
    code = exited.value.code
    if isinstance(code, str):  # SystemExit("clave: …"): the interpreter prints it to stderr and exits 1
        err, code = err + code + "\n", 1
    assert code == mistake.code, err
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert fill(mistake.what) in lines[0]
    assert fill(mistake.remedy) in lines[0]
    assert lines[0].startswith("clave")


def test_the_table_is_large_enough() -> None:
    assert len(MISTAKES) >= 25
    assert len({m.name for m in MISTAKES}) == len(MISTAKES)


def test_attest_into_a_closed_pipe_is_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    fake_clave: Callable[[dict[str, Any]], str],
) -> None:
    """`clave account list | head -1`: the reader leaves; no traceback, the shell's SIGPIPE status."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    ipc = fake_clave({"clave_listAccounts": [{"address": ADDRESS, "origin": "generated", "exportable": False}]})
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    with pytest.raises(SystemExit) as exited:
        main(["account", "list", "--ipcpath", ipc])
    assert exited.value.code == 141
    assert capsys.readouterr().err == ""


def test_account_list_prints_eip55(
    capsys: pytest.CaptureFixture[str], fake_clave: Callable[[dict[str, Any]], str]
) -> None:
    address = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"  # EIP-55's own example
    ipc = fake_clave({"clave_listAccounts": [{"address": address, "origin": "imported", "exportable": True}]})
    with pytest.raises(SystemExit) as exited:
        main(["account", "list", "--ipcpath", ipc])
    assert exited.value.code == 0
    assert capsys.readouterr().out == "Account #0: {5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed} origin=imported exportable\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from clave import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"clave {__version__}\n"


def test_every_option_has_help_and_every_subcommand_an_example() -> None:
    missing: list[str] = []
    parsers = list(subcommands(build_parser()))
    assert len(parsers) > 15
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}: no help")
        if not parser.epilog or "example:" not in parser.epilog:
            missing.append(f"{parser.prog}: no example")
        text = parser.format_help()
        for action in parser._actions:
            for option in action.option_strings:
                if option not in text:
                    missing.append(f"{parser.prog} --help does not show {option}")
    assert missing == []


def test_password_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\r\nsecond line\n"))
    assert passwords.read_password("-") == "from stdin"


def test_password_prompted_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["typed", "typed"])
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("sys.stdin", Terminal(""))
    monkeypatch.setattr(passwords.getpass, "getpass", getpass)
    assert passwords.read_password(None, prompt="Password: ", confirm=True) == "typed"
    assert prompts == ["Password: ", "Repeat password: "]


def test_password_prompts_that_differ_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["one", "two"])
    monkeypatch.setattr("sys.stdin", Terminal(""))
    monkeypatch.setattr(passwords.getpass, "getpass", lambda prompt: next(answers))
    with pytest.raises(SystemExit) as exited:
        passwords.read_password(None, confirm=True)
    assert exited.value.code == "clave: the passwords do not match; run the command again"


def test_password_file_first_line(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("first\nsecond\n")
    assert passwords.read_password(str(tmp_path / "pw")) == "first"


@pytest.mark.parametrize(("addr", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("signer.internal", False),
])
def test_which_http_addresses_get_the_no_token_warning(addr: str, loopback: bool) -> None:
    from clave.sidecar.wiring import is_loopback

    assert is_loopback(addr) is loopback


def test_log_helpers_bound_and_sanitize() -> None:
    from clave.sidecar.observe.logs import log_text, method_for_log

    assert method_for_log("eth_sign") == "eth_sign"
    assert method_for_log("a b\nc\x1b[31m") == "a?b?c??31m"
    assert method_for_log("m" * 200) == "m" * 64 + "…"
    assert method_for_log("") == "?"
    assert log_text("line one\nline two\r") == "line one line two "
    assert log_text("e" * 1000) == "e" * 300 + "…"
