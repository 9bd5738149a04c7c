"""Operations: the systemd units, the Ansible role and the enclave watchdog.

The slow part is one real converge of `ansible/site.yml` against localhost into a temporary root, run twice
(the second run must change nothing), with service management off and clave installed from a wheel of this
checkout into a virtualenv under that root. Its inventory has three hosts, each with its own root:
- geth1: geth on Nitro (sidecar + enclave watchdog units, `Requires=` drop-in, a PCR pin);
- opera1: a go-opera validator on Nitro (the role generates the validator key through a `clave up` the
  test runs, writes go-opera's keyfile and the password FIFO unit);
- sonic1: a sonic validator in local mode (software-NSM enclave + KMS emulator units). Its rendered
  command lines are then run for real, with systemd's specifiers expanded to temporary directories.

Every rendered unit goes through `systemd-analyze verify --root` (with the vendor units a real host has:
the node's own unit, stubbed, and nitro-enclaves-allocator.service, stubbed). Tools that are missing skip
these tests locally and fail them when CI is set.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.stack import ClaveProcess, free_port, post_json
from tests.test_validator import check_opera_keyfile

pytestmark = pytest.mark.slow  # ansible, pip wheels, systemd-analyze and `clave up` processes

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PASSWORD = "ops-test validator password Zq8"  # may appear only in the password files (and the FIFO)
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
HOSTS = ("geth1", "opera1", "sonic1")
NODE_KIND = {"geth1": "geth", "opera1": "opera", "sonic1": "sonic"}
NODE_BINARY = {"geth": "geth", "opera": "opera", "sonic": "sonicd"}


def require_tool(name: str, hint: str) -> str:
    """A tool the ops tests need: skip with the reason locally, fail in CI (where it must be installed)."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        message = f"{name} not found: {hint}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def systemd_analyze() -> str:
    return require_tool("systemd-analyze", "install Debian's systemd package (apt-get install systemd)")


# -- unit files --------------------------------------------------------------------------------------------


def directives(path: Path) -> dict[str, list[str]]:
    """`Key` -> every value it is given, in order (an empty value is a reset, as `ExecStart=`)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(" ".join(value.split()))
    return out


def command_line(path: Path, key: str = "ExecStart", specifiers: dict[str, str] | None = None) -> list[str]:
    """The argv systemd would run for the last `key=` of a unit, specifiers expanded."""
    text = directives(path)[key][-1].lstrip("-")
    expand = {"%%": "%", **(specifiers or {})}
    text = re.sub(r"%.", lambda m: expand.get(m.group(0), m.group(0)), text)
    return [word.replace("$$", "$") for word in shlex.split(text)]


def units_in(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "etc/systemd/system").glob("*.service"))


# -- the converge --------------------------------------------------------------------------------------------


@dataclass
class Converged:
    base: Path
    clave: ClaveProcess
    roots: dict[str, Path]
    inventory: dict[str, Any]
    wheels: Path
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def output(self) -> str:
        return "".join(run.stdout + run.stderr for run in self.runs)


@pytest.fixture(scope="session")
def ops_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ansible/ and systemd/: ansible-lint writes a cache into the project it lints."""
    dest = tmp_path_factory.mktemp("ops-project")
    for name in ("ansible", "systemd"):
        shutil.copytree(ROOT / name, dest / name, symlinks=True)
    return dest


def ansible_env(project: Path, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(project / "ansible" / "ansible.cfg"),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clave and its dependencies as wheels, built once: each host's venv then installs offline."""
    base = tmp_path_factory.mktemp("wheels")
    src = base / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    # src/ is copied so the build leaves nothing in the checkout.
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = base / "wheels"
    start = time.monotonic()
    # setuptools and wheel too (pyproject's build requirements): the role builds a source directory offline.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(wheels), str(src),
                           "setuptools>=68", "wheel"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"wheelhouse built in {time.monotonic() - start:.1f}s")
    return wheels


def _inventory(base: Path, clave: ClaveProcess, wheels: Path, ports: dict[str, int]) -> dict[str, Any]:
    (wheel,) = wheels.glob("clave-*.whl")
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "clave_become": False,
        "clave_manage_services": False,
        "clave_manage_users": False,
        "clave_python": sys.executable,
        "clave_pip_source": str(wheel),
        "clave_pip_extra_args": f"--no-index --find-links {wheels}",
        # The role's `clave validator …` commands reach the `clave up` this test runs.
        "clave_ipc_path": str(clave.ipc),
        "clave_cli_attestation_root": str(clave.datadir / "nsm" / "root.pem"),
        "clave_cli_datadir": str(clave.datadir),  # its store pins the enclave's master key
        "clave_kms_key_id": "arn:aws:kms:eu-west-1:111122223333:key/ops-test",
        "clave_kms_region": "eu-west-1",
        "clave_attestation_root_pem": "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n",
    }
    hosts = {
        "geth1": {
            "clave_root_prefix": str(base / "root" / "geth1"),
            "clave_node_kind": "geth",
            "clave_node_args": ["--datadir", "/var/lib/geth", "--http", "--http.api", "eth,net"],
            "clave_chain_ids": [1, 5],
            "clave_pcrs": {0: "ab" * 48},
            "clave_enclave_watchdog_interval": 1,
        },
        "opera1": {
            "clave_root_prefix": str(base / "root" / "opera1"),
            "clave_node_kind": "opera",
            "clave_node_user": "opera",
            "clave_node_args": ["--datadir", "/var/lib/opera", "--nat", "extip:10.0.0.1", "--identity", "50% node a"],
            "clave_node_keystore": "/var/lib/opera/keystore",
            "clave_node_network": "opera-test",
            "clave_node_validator_id": 7,
            "clave_validator_password": PASSWORD,
            "clave_chain_ids": [4002],
        },
        "sonic1": {
            "clave_root_prefix": str(base / "root" / "sonic1"),
            "clave_mode": "local",
            "clave_node_kind": "sonic",
            "clave_node_user": "sonic",
            "clave_node_args": ["--datadir", "/var/lib/sonic"],
            "clave_node_keystore": "/var/lib/sonic/keystore",
            "clave_node_network": "sonic-test",
            "clave_node_validator_id": 9,
            "clave_validator_password": PASSWORD,
            "clave_chain_ids": [14601],
            "clave_http_port": ports["http"],
            "clave_kms_emulator_port": ports["kms"],
        },
    }
    return {"all": {"vars": common, "children": {"clave": {"children": {
        "clave_rpc": {"hosts": {"geth1": hosts["geth1"]}},
        "clave_validators": {"hosts": {"opera1": hosts["opera1"], "sonic1": hosts["sonic1"]}},
    }}}}}


def run_playbook(project: Path, home: Path, inventory: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    playbook = require_tool("ansible-playbook", "pip install '.[ops]' (ansible-core)")
    return subprocess.run(
        [playbook, "-i", str(inventory), str(project / "ansible" / "site.yml"), *args],
        cwd=project / "ansible", env=ansible_env(project, home), capture_output=True, text=True, timeout=timeout,
    )


def recap(run: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
            for m in RECAP.finditer(run.stdout)}


@pytest.fixture(scope="session")
def converged(ops_project: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Converged]:
    require_tool("ansible-playbook", "pip install '.[ops]' (ansible-core)")
    base = tmp_path_factory.mktemp("converge")
    clave = ClaveProcess(base / "clave")
    clave.start()
    try:
        inventory = _inventory(base, clave, wheelhouse, {"http": free_port(), "kms": free_port()})
        path = base / "inventory.yml"
        path.write_text(json.dumps(inventory, indent=1))  # JSON is YAML, and needs no quoting rules
        result = Converged(base, clave, {h: base / "root" / h for h in HOSTS}, inventory, wheelhouse)
        for _ in range(2):
            start = time.monotonic()
            # -v and --diff: the output the secrets search reads is as talkative as an operator's.
            result.runs.append(run_playbook(ops_project, base / "ansible-home", path, "-v", "--diff"))
            result.seconds.append(time.monotonic() - start)
        print(f"converge: first run {result.seconds[0]:.1f}s, second run {result.seconds[1]:.1f}s")
        yield result
    finally:
        clave.stop()


# -- install sources ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("source", ["wheel", "directory", "requirement"])
def test_install_converges_to_no_change_for_each_source(
    source: str, ops_project: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    """clave_pip_source as a wheel, a source directory and a requirement: the second converge changes
    nothing; an edited source directory is installed again on the next."""
    (wheel,) = wheelhouse.glob("clave-*.whl")
    tree = tmp_path / "clave-src"
    shutil.copytree(wheelhouse.parent / "src", tree)
    pip_source = {"wheel": str(wheel), "directory": str(tree), "requirement": "clave==0.1.0"}[source]
    root = tmp_path / "root"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "clave_become": False,
            "clave_manage_services": False, "clave_manage_users": False, "clave_python": sys.executable,
            "clave_mode": "local", "clave_root_prefix": str(root), "clave_pip_source": pip_source,
            "clave_pip_extra_args": f"--no-index --find-links {wheelhouse}"}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {"clave": {"hosts": {"host1": host}}}}}))

    def converge() -> dict[str, int]:
        done = run_playbook(ops_project, tmp_path / "home", inventory, "--tags", "clave_preflight,clave_install")
        assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
        return recap(done)["host1"]

    assert converge()["changed"] > 0
    assert converge()["changed"] == 0, f"{source}: the second converge changed something"
    clave = root / "opt/clave/venv/bin/clave"
    version = subprocess.run([str(clave), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout == "clave 0.1.0\n", version
    if source == "directory":
        installed = next((root / "opt/clave/venv/lib").glob("python3*/site-packages/clave/__init__.py"))
        (tree / "src/clave/__init__.py").write_text((tree / "src/clave/__init__.py").read_text() + "# edited\n")
        assert converge()["changed"] > 0, "an edited source directory is installed again"
        assert installed.read_text().endswith("# edited\n")
        assert converge()["changed"] == 0
        assert not any(tree.glob("*.whl")), "the wheel is built in a temporary directory"


@pytest.mark.slow
def test_the_role_applies_a_signed_policy_once(ops_project: Path, wheelhouse: Path, tmp_path: Path) -> None:
    """clave_policy_file + clave_policy_signatures: the role applies a policy an admin signed offline to a
    running clave with an admin set; the second converge changes nothing; unsigned, it fails."""
    from eth_account import Account
    from eth_keyfile import create_keyfile_json

    admin = Account.from_key(bytes.fromhex("ad" * 32))
    keyfile = tmp_path / "admin.json"
    keyfile.write_text(json.dumps(create_keyfile_json(admin.key, b"ops admin pw", kdf="scrypt", iterations=1 << 12)))
    password = tmp_path / "admin.pw"
    password.write_text("ops admin pw\n")
    clave = ClaveProcess(tmp_path / "clave", extra=["--admin", admin.address])
    clave.start()
    try:
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps({"version": 1, "rules": [
            {"name": "payments", "accounts": ["*"], "to": ["0x703c4b2bD70c169f5717101CaeE543299Fc946C7"], "value_max": "1 ether"}]}))
        signed = clave.cli("policy", "sign", str(policy), "--keyfile", str(keyfile), "--password-file", str(password),
                           "--ipcpath", str(clave.ipc))
        assert signed.returncode == 0, signed.stderr
        (wheel,) = wheelhouse.glob("clave-*.whl")
        host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "clave_become": False,
                "clave_manage_services": False, "clave_manage_users": False, "clave_python": sys.executable,
                "clave_mode": "local", "clave_root_prefix": str(tmp_path / "root"), "clave_pip_source": str(wheel),
                "clave_pip_extra_args": f"--no-index --find-links {wheelhouse}", "clave_ipc_path": str(clave.ipc),
                "clave_cli_datadir": str(clave.datadir), "clave_policy_file": str(policy),
                "clave_policy_signatures": [signed.stdout.strip()]}
        inventory = tmp_path / "inventory.yml"

        def converge(**changes: Any) -> tuple[int, dict[str, int], str]:
            inventory.write_text(json.dumps({"all": {"children": {"clave": {"hosts": {"host1": {**host, **changes}}}}}}))
            done = run_playbook(ops_project, tmp_path / "home", inventory, "--tags",
                                "clave_preflight,clave_install,clave_policy")
            return done.returncode, recap(done).get("host1", {}), done.stdout[-4000:] + done.stderr[-2000:]

        code, counts, out = converge()
        assert code == 0 and counts["changed"] > 0, out
        shown = json.loads(clave.cli("policy", "show", "--ipcpath", str(clave.ipc)).stdout)
        checked = json.loads(clave.cli("policy", "check", str(policy)).stdout)
        assert shown["policy_hash"] == checked["policy_hash"] and shown["sequence"] == 1, shown
        code, counts, out = converge()
        assert code == 0 and counts["changed"] == 0, out
        # Another document with no admin signature: the enclave refuses it and the converge fails.
        other = tmp_path / "other.json"
        other.write_text(policy.read_text().replace("1 ether", "2 ether"))
        code, counts, out = converge(clave_policy_file=str(other), clave_policy_signatures=[])
        assert code != 0 and counts.get("failed") == 1, out
        assert json.loads(clave.cli("policy", "show", "--ipcpath", str(clave.ipc)).stdout)["policy_hash"] == checked["policy_hash"]
    finally:
        clave.stop()


# -- lint and syntax ----------------------------------------------------------------------------------------


def _ops_floor(package: str) -> tuple[int, ...]:
    """The lowest version setup.cfg's `ops` extra accepts (`package>=X.Y.Z`)."""
    match = re.search(rf"^\s*{re.escape(package)}>=([0-9.]+)\s*$", (ROOT / "setup.cfg").read_text(), re.M)
    assert match, f"setup.cfg's ops extra names no floor for {package}"
    return tuple(int(p) for p in match[1].split("."))


def test_ansible_lint_production_profile(ops_project: Path, tmp_path: Path) -> None:
    """The playbook, the role and the example inventory, with the ansible-lint the ops extra installs (no
    older one: an old ansible-lint passes what a new operator's fails)."""
    from importlib.metadata import version

    lint = require_tool("ansible-lint", "pip install '.[ops]' (ansible-lint)")
    for package in ("ansible-lint", "ansible-core"):
        installed = tuple(int(p) for p in re.findall(r"\d+", version(package))[:3])
        assert installed >= _ops_floor(package), f"{package} {version(package)} is older than setup.cfg's floor: make install-test"
    env = ansible_env(ops_project, tmp_path / "home")
    done = subprocess.run([lint, "--profile", "production", "--offline", "site.yml", "roles/clave", "inventory/example.yml"],
                          cwd=ops_project / "ansible", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "production" in done.stdout + done.stderr
    print(f"ansible-lint {version('ansible-lint')}, ansible-core {version('ansible-core')}: production profile passed")


def test_playbook_syntax(ops_project: Path, tmp_path: Path) -> None:
    inventory = ops_project / "ansible" / "inventory" / "example.yml"
    done = run_playbook(ops_project, tmp_path / "home", inventory, "--syntax-check")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_preflight_refuses_two_hosts_with_one_validator(ops_project: Path, tmp_path: Path) -> None:
    def inventory(second_id: int) -> Path:
        hosts = {
            name: {"clave_root_prefix": str(tmp_path / name), "clave_node_kind": "opera", "clave_node_user": "opera",
                   "clave_node_keystore": "/var/lib/opera/keystore", "clave_node_network": "mainnet",
                   "clave_node_validator_id": vid, "clave_validator_password": PASSWORD}
            for name, vid in (("val-a", 25), ("val-b", second_id))
        }
        data = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                 "clave_become": False, "clave_manage_services": False, "clave_manage_users": False,
                                 "clave_python": sys.executable, "clave_mode": "local"},
                        "children": {"clave": {"children": {"clave_validators": {"hosts": hosts}}}}}}
        path = tmp_path / f"inventory-{second_id}.yml"
        path.write_text(json.dumps(data))
        return path

    refused = run_playbook(ops_project, tmp_path / "home", inventory(25), "--tags", "clave_preflight")
    assert refused.returncode != 0
    assert "double-sign" in refused.stdout and "val-a, val-b" in refused.stdout, refused.stdout[-3000:]
    assert not (tmp_path / "val-a").exists() and not (tmp_path / "val-b").exists(), "nothing written"
    assert PASSWORD not in refused.stdout + refused.stderr
    accepted = run_playbook(ops_project, tmp_path / "home", inventory(26), "--tags", "clave_preflight")
    assert accepted.returncode == 0, accepted.stdout[-3000:]


# -- the converge ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_converge_then_nothing_changes(converged: Converged) -> None:
    first, second = converged.runs
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-2000:]
    assert set(recap(first)) == set(HOSTS) == set(recap(second))
    for host in HOSTS:
        assert recap(first)[host]["changed"] > 0 and recap(first)[host]["failed"] == 0
        assert recap(second)[host]["changed"] == 0, f"{host} changed on the second run: {recap(second)}"
    assert (converged.roots["geth1"] / "opt/clave/venv/bin/clave").exists()


@pytest.mark.slow
def test_check_mode_on_fresh_hosts_writes_nothing(converged: Converged, ops_project: Path, tmp_path: Path) -> None:
    """`--check --diff` against hosts the role never touched: it must run through and change nothing."""
    inventory = _inventory(tmp_path, converged.clave, converged.wheels, {"http": 8550, "kms": 4599})
    path = tmp_path / "inventory.yml"
    path.write_text(json.dumps(inventory))
    done = run_playbook(ops_project, tmp_path / "home", path, "--check", "--diff", "--limit", "geth1,sonic1")
    assert done.returncode == 0, done.stdout[-5000:]
    assert set(recap(done)) == {"geth1", "sonic1"}
    assert not (tmp_path / "root").exists(), "check mode wrote files"
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.slow
def test_rendered_units_pass_systemd_analyze_verify(converged: Converged) -> None:
    analyze = systemd_analyze()
    expected = {
        "geth1": ["clave-enclave.service", "clave-kms-proxy.service", "clave.service"],
        "opera1": ["clave-enclave.service", "clave-kms-proxy.service", "clave-validator-password.service",
                   "clave.service"],
        "sonic1": ["clave-enclave-local.service", "clave-kms-local.service", "clave-validator-password.service",
                   "clave.service"],
    }
    for host, root in converged.roots.items():
        assert units_in(root) == expected[host], host
        kind = NODE_KIND[host]
        # What a real host has that the role does not install: systemd's own units, the node's unit and
        # binary (from the node's package), and the Nitro allocator (from aws-nitro-enclaves-cli).
        vendor = root / "usr/lib/systemd/system"
        shutil.copytree("/usr/lib/systemd/system", vendor, symlinks=True, dirs_exist_ok=True)
        binary = root / "usr/local/bin" / NODE_BINARY[kind]
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
        (vendor / f"{kind}.service").write_text(
            f"[Unit]\nDescription=stub {kind}\n[Service]\nExecStart=/usr/local/bin/{NODE_BINARY[kind]}\n")
        (vendor / "nitro-enclaves-allocator.service").write_text(
            "[Unit]\nDescription=stub allocator\n[Service]\nType=oneshot\nExecStart=/usr/bin/true\n")
        proxy = root / "usr/bin/vsock-proxy"  # from aws-nitro-enclaves-cli too
        proxy.parent.mkdir(parents=True, exist_ok=True)
        proxy.write_text("#!/bin/sh\nexit 0\n")
        proxy.chmod(0o755)
        units = [*expected[host], f"{kind}.service"]  # the node's unit carries clave's drop-in
        done = subprocess.run([analyze, "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), f"{host}: {done.stdout}{done.stderr}"

        # Control: the drop-in really is read (a bad key in it is reported).
        control = root / f"etc/systemd/system/{kind}.service.d/zz-control.conf"
        control.write_text("[Service]\nNoSuchSetting=1\n")
        try:
            bad = subprocess.run([analyze, "verify", f"--root={root}", f"{kind}.service"],
                                 capture_output=True, text=True, timeout=120)
        finally:
            control.unlink()
        assert "NoSuchSetting" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_systemd_render_matches_the_role(converged: Converged) -> None:
    """`clave systemd render` with a host's inventory variables writes the units the role wrote for it, byte for
    byte (but a validator's drop-in: the role learns its public key as it converges)."""
    from clave.cli.systemd_render import render

    common = converged.inventory["all"]["vars"]
    children = converged.inventory["all"]["children"]["clave"]["children"]
    hosts = {**children["clave_rpc"]["hosts"], **children["clave_validators"]["hosts"]}
    compared = 0
    for host in HOSTS:
        variables = {k: v for k, v in {**common, **hosts[host]}.items() if k.startswith("clave_")}
        units = render(ROOT, variables)
        for name, text in units.items():
            if name.endswith(".conf") and host != "geth1":  # a validator's drop-in names its public key
                continue
            written = converged.roots[host] / "etc/systemd/system" / name
            assert text == written.read_text(), f"{host}: {name} differs from the role's"
            compared += 1
    assert compared >= 11


@pytest.mark.slow
def test_sidecar_and_enclave_units(converged: Converged) -> None:
    unit = directives(converged.roots["geth1"] / "etc/systemd/system/clave.service")
    for key, value in {
        "Type": "notify", "Restart": "on-failure", "User": "clave", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "StateDirectory": "clave",
        "RuntimeDirectory": "clave", "CapabilityBoundingSet": "", "SystemCallFilter": "@system-service",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_VSOCK", "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes", "UMask": "0077", "LimitCORE": "0",
    }.items():
        assert unit[key] == [value], key
    assert directives(converged.roots["geth1"] / "etc/systemd/system/clave-enclave.service")["LimitCORE"] == ["0"]
    after = " ".join(unit["After"]).split()
    assert "clave-enclave.service" in after and "nitro-enclaves-allocator.service" in after
    argv = command_line(converged.roots["geth1"] / "etc/systemd/system/clave.service")
    assert argv[:2] == ["/opt/clave/venv/bin/clave", "serve"]
    pairs = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert pairs["--enclave"] == "vsock://16:5000" and pairs["--chainid"] == "1,5"
    assert pairs["--pcr"] == "0=" + "ab" * 48 and pairs["--kms-key-id"].endswith("key/ops-test")
    assert pairs["--attestation-root"] == "/etc/clave/attestation-root.pem"

    enclave = command_line(converged.roots["geth1"] / "etc/systemd/system/clave-enclave.service")
    assert enclave[:2] == ["/usr/local/libexec/clave/clave-enclave-watchdog", "run"]
    flags = dict(zip(enclave[2::2], enclave[3::2], strict=False))
    assert flags == {"--eif-path": "/opt/clave/clave.eif", "--cpu-count": "2", "--memory": "2048",
                     "--enclave-cid": "16", "--name": "clave", "--interval": "1"}


@pytest.mark.slow
def test_node_dropins_carry_signer_and_validator_flags(converged: Converged) -> None:
    signer = "--signer=http://127.0.0.1:8550"
    geth_dir = converged.roots["geth1"] / "etc/systemd/system/geth.service.d"
    geth = directives(geth_dir / "50-clave.conf")
    assert geth["Requires"] == ["clave.service"] and geth["After"] == ["clave.service"]
    assert geth["ExecStart"][0] == "", "the drop-in resets the node's ExecStart before replacing it"
    assert command_line(geth_dir / "50-clave.conf") == [
        "/usr/local/bin/geth", "--datadir", "/var/lib/geth", "--http", "--http.api", "eth,net", signer]

    for host, binary, extra in (("opera1", "opera", []), ("sonic1", "sonicd", ["--mode", "validator"])):
        root = converged.roots[host]
        dropin = root / f"etc/systemd/system/{NODE_KIND[host]}.service.d/50-clave.conf"
        unit = directives(dropin)
        # Wants=, not Requires=: a clave restart must never restart a validator.
        assert "Requires" not in unit and "clave.service" in unit["Wants"]
        assert "clave-validator-password.service" in unit["Wants"]
        argv = command_line(dropin)
        pubkey = (root / "etc/clave/validator.pubkey").read_text().strip()
        host_vars = converged.inventory["all"]["children"]["clave"]["children"]["clave_validators"]["hosts"][host]
        signer = f"--signer=http://127.0.0.1:{host_vars.get('clave_http_port', 8550)}"
        assert argv == [f"/usr/local/bin/{binary}", *host_vars["clave_node_args"], signer, *extra, "--validator.id",
                        str(host_vars["clave_node_validator_id"]),
                        "--validator.pubkey", pubkey, "--validator.password", "/run/clave-validator/password"]
        # The FIFO unit serves that path: %t is /run for system units.
        fifo = command_line(root / "etc/systemd/system/clave-validator-password.service", specifiers={"%t": "/run"})
        assert fifo[fifo.index("--fifo") + 1] == "/run/clave-validator/password"
    assert "50% node a" in command_line(converged.roots["opera1"] / "etc/systemd/system/opera.service.d/50-clave.conf")


def _validator_secrets(converged: Converged) -> dict[str, bytes]:
    secrets = {}
    for host in ("opera1", "sonic1"):
        root = converged.roots[host]
        pubkey = (root / "etc/clave/validator.pubkey").read_text().strip()
        keystore = root / f"var/lib/{NODE_KIND[host]}/keystore/validator"
        assert [p.name for p in keystore.iterdir()] == [pubkey[2:]]
        secrets[host] = check_opera_keyfile(keystore / pubkey[2:], PASSWORD)
    return secrets


@pytest.mark.slow
def test_role_wrote_opera_keyfiles_that_decrypt(converged: Converged) -> None:
    secrets = _validator_secrets(converged)
    assert len(set(secrets.values())) == 2, "each validator has its own key"
    for host in ("opera1", "sonic1"):
        password_file = converged.roots[host] / "etc/clave/validator.password"
        assert password_file.read_text() == PASSWORD + "\n"
        assert password_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_no_password_or_key_in_ansible_output_or_rendered_tree(converged: Converged) -> None:
    secrets = _validator_secrets(converged)
    needles = {"password": PASSWORD.encode()}
    for host, secret in secrets.items():
        needles.update({f"{host} key (hex)": secret.hex().encode(), f"{host} key (HEX)": secret.hex().upper().encode(),
                        f"{host} key (raw)": secret})
    output = converged.output().encode()
    assert b'"validator", "new"' in output, "the search covers the run that made the keys"
    leaks = [name for name, needle in needles.items() if needle in output]
    assert not leaks, f"in the Ansible output: {leaks}"

    allowed = {converged.roots[h] / "etc/clave/validator.password" for h in ("opera1", "sonic1")}
    searched = 0
    places = [*converged.roots.values(), converged.clave.datadir]
    for place in places:
        for path in place.rglob("*"):
            if not path.is_file() or path.is_symlink() or path.suffix in (".so", ".pyc"):
                continue
            data = path.read_bytes()
            searched += 1
            for name, needle in needles.items():
                if needle in data and not (name == "password" and path in allowed):
                    leaks.append(f"{name} in {path}")
    clave_logs = converged.clave.logs().encode()
    leaks += [f"{name} in clave up's logs" for name, needle in needles.items() if needle in clave_logs]
    assert not leaks, leaks
    assert searched > 1000


# -- running what was rendered ----------------------------------------------------------------------------


class NotifySocket:
    """The NOTIFY_SOCKET systemd gives Type=notify services."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in m for m in self.messages):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} within {timeout}s: {self.messages}"
            self.sock.settimeout(remaining)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_local_mode_units_run_as_rendered(converged: Converged, tmp_path: Path) -> None:
    """sonic1's units, started with their own command lines: enclave, KMS emulator, sidecar, password FIFO."""
    root = converged.roots["sonic1"]
    units = root / "etc/systemd/system"
    state, runtime, creds = tmp_path / "state", tmp_path / "run", tmp_path / "creds"
    specifiers = {"%S": str(state), "%t": str(runtime), "%d": str(creds)}
    for unit in ("clave-enclave-local.service", "clave-kms-local.service", "clave.service",
                 "clave-validator-password.service"):
        found = directives(units / unit)
        for key, parent in (("StateDirectory", state), ("RuntimeDirectory", runtime)):
            for name in found.get(key, []):
                (parent / name).mkdir(parents=True, exist_ok=True, mode=0o700)  # what systemd does first
    # LoadCredential=validator-password:/etc/clave/validator.password
    name, _, source = directives(units / "clave-validator-password.service")["LoadCredential"][0].partition(":")
    creds.mkdir(mode=0o700)
    shutil.copy2(root / source.lstrip("/"), creds / name)

    def argv(unit: str) -> list[str]:
        words = command_line(units / unit, specifiers=specifiers)
        return [str(root / words[0].lstrip("/")), *words[1:]]

    notify = NotifySocket(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path))
    for assignment in directives(units / "clave.service").get("Environment", []):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            env[key] = re.sub(r"%.", lambda m: specifiers.get(m.group(0), m.group(0)), value)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pre = command_line(units / "clave-enclave-local.service", "ExecStartPre", specifiers)
        subprocess.run([str(root / pre[0].lstrip("/")), *pre[1:]], env=env, check=True, capture_output=True, timeout=60)
        procs.append(_start(argv("clave-enclave-local.service"), env, tmp_path / "enclave.log"))
        _wait(lambda: (runtime / "clave-enclave/enclave.sock").exists(), 30, "the enclave socket")
        procs.append(_start(argv("clave-kms-local.service"), env, tmp_path / "kms.log"))
        _wait(lambda: b"kms-emulator listening" in (tmp_path / "kms.log").read_bytes(), 30, "the KMS emulator")
        procs.append(_start(argv("clave.service"), env, tmp_path / "sidecar.log"))
        notify.wait_for("READY=1", 60)  # Type=notify: sent only once the keys are unsealed
        port = converged.inventory["all"]["children"]["clave"]["children"]["clave_validators"]["hosts"]["sonic1"][
            "clave_http_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read())["ready"] is True
        status, reply = post_json(f"http://127.0.0.1:{port}",
                                  {"jsonrpc": "2.0", "id": 1, "method": "account_version", "params": []})
        assert (status, reply["result"]) == (200, "6.1.0")
        assert (runtime / "clave/clave.ipc").is_socket()
        # The emulator serves only SigV4 with its 0600 credentials (which the sidecar was given by the unit).
        assert oct((state / "clave-kms/credentials.json").stat().st_mode & 0o777) == "0o600"
        kms_port = converged.inventory["all"]["children"]["clave"]["children"]["clave_validators"]["hosts"][
            "sonic1"]["clave_kms_emulator_port"]
        tls = ssl.create_default_context(cafile=str(state / "clave-kms/ca.pem"))  # TLS only, under its dev CA
        status, reply = post_json(f"https://127.0.0.1:{kms_port}/", {"KeyId": "alias/x"},
                                  headers={"X-Amz-Target": "TrentService.Decrypt"}, context=tls)
        assert (status, reply["__type"]) == (400, "MissingAuthenticationTokenException")

        notify.messages.clear()
        procs.append(_start(argv("clave-validator-password.service"), env, tmp_path / "fifo.log"))
        notify.wait_for("READY=1", 30)
        with open(runtime / "clave-validator/password") as fifo:
            assert fifo.read().split("\n")[0] == PASSWORD
    finally:
        codes = [_stop(p) for p in reversed(procs)]
        notify.close()
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert codes == [0] * len(codes), logs[-4000:]
    assert PASSWORD not in logs


FAKE_NITRO_CLI = r'''#!{python}
"""A stand-in for nitro-cli: run-enclave / describe-enclaves / terminate-enclave over a JSON state file."""
import json, sys
state_path, calls_path = {state!r}, {calls!r}
state = json.load(open(state_path))
args = sys.argv[1:]
open(calls_path, "a").write(json.dumps(args) + "\n")
if state.get("fail"):
    print("nitro-cli: simulated failure", file=sys.stderr); sys.exit(1)
if args[0] == "run-enclave":
    opt = dict(zip(args[1::2], args[2::2]))
    state["next"] = state.get("next", 0) + 1
    enclave = {{"EnclaveName": opt["--enclave-name"], "EnclaveID": "i-0abc-enc%d" % state["next"],
               "ProcessID": 4242, "EnclaveCID": int(opt["--enclave-cid"]), "NumberOfCPUs": int(opt["--cpu-count"]),
               "CPUIDs": [1, 3], "MemoryMiB": int(opt["--memory"]), "State": "RUNNING", "Flags": "NONE"}}
    state["enclaves"].append(enclave)
    print(json.dumps(enclave))
elif args[0] == "describe-enclaves":
    print(json.dumps(state["enclaves"]))
elif args[0] == "terminate-enclave":
    eid = args[args.index("--enclave-id") + 1]
    state["enclaves"] = [e for e in state["enclaves"] if e["EnclaveID"] != eid]
    print(json.dumps({{"EnclaveID": eid, "Terminated": True}}))
json.dump(state, open(state_path, "w"))
'''


@pytest.mark.slow
def test_enclave_watchdog_terminates_then_restarts(converged: Converged, tmp_path: Path) -> None:
    root = converged.roots["geth1"]
    unit = root / "etc/systemd/system/clave-enclave.service"
    state_file, calls_file = tmp_path / "state.json", tmp_path / "calls.jsonl"
    leftover = {"EnclaveName": "clave", "EnclaveID": "i-0abc-old", "State": "RUNNING"}
    state_file.write_text(json.dumps({"enclaves": [leftover]}))
    fake = tmp_path / "nitro-cli"
    fake.write_text(FAKE_NITRO_CLI.format(python=sys.executable, state=str(state_file), calls=str(calls_file)))
    fake.chmod(0o755)

    def state() -> dict[str, Any]:
        return json.loads(state_file.read_text())

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in calls_file.read_text().splitlines()]

    def rooted(words: list[str]) -> list[str]:
        return [str(root / words[0].lstrip("/")), *words[1:]]

    notify = NotifySocket(tmp_path / "notify")
    env = dict(os.environ, NITRO_CLI=str(fake), NOTIFY_SOCKET=str(notify.path))
    watchdog = _start(rooted(command_line(unit)), env, tmp_path / "watchdog.log")
    try:
        notify.wait_for("READY=1", 30)
        notify.wait_for("WATCHDOG=1", 10)
        run = next(c for c in calls() if c[0] == "run-enclave")
        assert ["terminate-enclave", "--enclave-id", "i-0abc-old"] in calls(), "the leftover goes first"
        assert calls().index(["terminate-enclave", "--enclave-id", "i-0abc-old"]) < calls().index(run)
        assert dict(zip(run[1::2], run[2::2], strict=False)) == {
            "--eif-path": "/opt/clave/clave.eif", "--cpu-count": "2", "--memory": "2048", "--enclave-cid": "16",
            "--enclave-name": "clave"}
        assert [e["EnclaveID"] for e in state()["enclaves"]] == ["i-0abc-enc1"]

        # The enclave dies: the watchdog exits non-zero (systemd then runs ExecStopPost and Restart=).
        current = state()
        current["enclaves"][0]["State"] = "TERMINATING"
        state_file.write_text(json.dumps(current))
        assert watchdog.wait(15) == 1
    finally:
        _stop(watchdog)
    assert "unhealthy" in (tmp_path / "watchdog.log").read_text()
    stop_post = rooted(command_line(unit, "ExecStopPost"))
    assert subprocess.run(stop_post, env=env, capture_output=True, timeout=30).returncode == 0
    assert state()["enclaves"] == [], "ExecStopPost terminated what was left"

    # A restart starts a fresh enclave; SIGTERM (systemctl stop) terminates it and exits 0.
    notify.messages.clear()
    watchdog = _start(rooted(command_line(unit)), env, tmp_path / "watchdog2.log")
    try:
        notify.wait_for("READY=1", 30)
        assert [e["EnclaveID"] for e in state()["enclaves"]] == ["i-0abc-enc2"]
    finally:
        assert _stop(watchdog) == 0
        notify.close()
    assert state()["enclaves"] == []

    # nitro-cli failing is unhealthy too, never a hang.
    current = state()
    current["fail"] = True
    state_file.write_text(json.dumps(current))
    failing = _start(rooted(command_line(unit)), env, tmp_path / "watchdog3.log")
    assert failing.wait(30) == 1
