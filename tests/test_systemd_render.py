"""`clave systemd render`: the units of systemd/ with the Ansible role's variables, without Ansible. In process
here; `systemd-analyze verify` on its output is the slow test at the end (and test_ops.py compares it with
what the role renders on a converged host, byte for byte)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from clave.cli.main import main
from clave.cli.systemd_render import render

ROOT = Path(__file__).resolve().parents[1]
KMS = "arn:aws:kms:eu-west-1:111122223333:key/render-test"
PCR0 = "ab" * 48
NITRO = ["--set", f"clave_kms_key_id={KMS}", "--set", "clave_kms_region=eu-west-1", "--set", f"clave_pcrs={{0: '{PCR0}'}}"]


def _render(tmp_path: Path, *argv: str) -> Path:
    out = tmp_path / "units"
    with pytest.raises(SystemExit) as exited:
        main(["systemd", "render", *argv, "--out", str(out)])
    assert exited.value.code == 0
    return out


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_local_mode_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _render(tmp_path, "--mode", "local")
    assert _files(out) == ["clave-enclave-local.service", "clave-kms-local.service", "clave.service"]
    assert capsys.readouterr().out.splitlines() == [str(out / "clave.service"), str(out / "clave-enclave-local.service"),
                                                     str(out / "clave-kms-local.service")]
    sidecar = (out / "clave.service").read_text()
    assert "ExecStart=/opt/clave/venv/bin/clave serve" in sidecar  # clave_bin from vars/main.yml, resolved
    assert "--enclave unix:%t/clave-enclave/enclave.sock" in sidecar and "--kms-endpoint https://127.0.0.1:4599" in sidecar
    for path in out.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text() and "{%" not in path.read_text(), path


def test_nitro_mode_with_a_node_and_settings(tmp_path: Path) -> None:
    out = _render(tmp_path, "--mode", "nitro", "--node", "geth", *NITRO, "--set", "clave_chain_ids=[1, 5]",
                  "--set", "clave_node_args=[--datadir, /var/lib/geth]")
    assert _files(out) == ["clave-enclave.service", "clave-kms-proxy.service", "clave.service",
                           "geth.service.d/50-clave.conf"]
    sidecar = (out / "clave.service").read_text()
    assert f"--kms-key-id {KMS}" in sidecar and f"--pcr 0={PCR0}" in sidecar and "--chainid 1,5" in sidecar
    assert "--enclave vsock://16:5000" in sidecar and "--kms-region eu-west-1" in sidecar
    dropin = (out / "geth.service.d/50-clave.conf").read_text()
    assert "ExecStart=/usr/local/bin/geth --datadir /var/lib/geth --signer=http://127.0.0.1:8550\n" in dropin
    assert "Requires=clave.service" in dropin


def test_settings_that_are_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--mode", "nitro"], "--mode nitro needs the KMS key: --set clave_kms_key_id="),
        (["--mode", "local", "--set", "http_port=1"], "--set http_port=1: expected clave_VARIABLE=VALUE"),
        (["--mode", "local", "--set", "clave_pcrs={0: [}"], "--set clave_pcrs: not a YAML value"),
        (["--mode", "local", "--source", str(tmp_path)], f"no systemd/ and ansible/roles/clave/ in {tmp_path}"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(["systemd", "render", *argv, "--out", str(tmp_path / "x")])
        assert isinstance(exited.value.code, str) and exited.value.code.startswith("clave: " + message.split(":")[0])
        assert message in exited.value.code, exited.value.code
        assert "\n" not in exited.value.code
    assert not (tmp_path / "x").exists()


def test_one_source_of_truth_with_the_role() -> None:
    """The role's defaults decide: change one there and the render follows (no copy of them in the code)."""
    units = render(ROOT, {"clave_mode": "local", "clave_http_port": 9999, "clave_install_dir": "/srv/clave"})
    assert "--http.port 9999" in units["clave.service"]
    assert "ExecStart=/srv/clave/venv/bin/clave serve" in units["clave.service"]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "node"), [("nitro", "geth"), ("local", "sonic"), ("nitro", "opera")])
def test_rendered_units_verify(mode: str, node: str, tmp_path: Path) -> None:
    from tests.test_ops import NODE_BINARY, systemd_analyze

    analyze = systemd_analyze()
    root = tmp_path / "root"
    argv = ["--mode", mode, "--node", node, *(NITRO if mode == "nitro" else [])]
    if node != "geth":
        argv += ["--set", "clave_node_validator_id=7", "--set", f"clave_node_user={node}",
                 "--set", f"clave_node_keystore=/var/lib/{node}/keystore", "--set", "clave_validator_pubkey_effective=0xc004ab"]
    units = _render(tmp_path, *argv)
    shutil.copytree(units, root / "etc/systemd/system")
    vendor = root / "usr/lib/systemd/system"
    shutil.copytree("/usr/lib/systemd/system", vendor, symlinks=True, dirs_exist_ok=True)
    (vendor / f"{node}.service").write_text(f"[Unit]\nDescription=stub {node}\n[Service]\nExecStart=/usr/local/bin/{NODE_BINARY[node]}\n")
    (vendor / "nitro-enclaves-allocator.service").write_text(
        "[Unit]\nDescription=stub allocator\n[Service]\nType=oneshot\nExecStart=/usr/bin/true\n")
    for binary in (f"usr/local/bin/{NODE_BINARY[node]}", "usr/bin/vsock-proxy", "opt/clave/venv/bin/clave",
                   "usr/local/libexec/clave/clave-enclave-watchdog"):
        path = root / binary
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    names = [p.name for p in (root / "etc/systemd/system").glob("*.service")] + [f"{node}.service"]
    done = subprocess.run([analyze, "verify", f"--root={root}", *names], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
    assert len(names) >= 4
