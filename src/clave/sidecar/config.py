"""Sidecar configuration: one dataclass, filled from the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATADIR = Path("~/.clave")
DEFAULT_HTTP_ADDR = "127.0.0.1"
DEFAULT_HTTP_PORT = 8550


@dataclass
class SidecarConfig:
    datadir: Path
    http_addr: str = DEFAULT_HTTP_ADDR
    http_port: int = DEFAULT_HTTP_PORT
    http_enabled: bool = True
    ipcpath: Path | None = None
    chain_ids: list[int] = field(default_factory=lambda: [1])
    vhosts: tuple[str, ...] = ("localhost",)
    cors_domains: tuple[str, ...] = ()
    auth_token_file: Path | None = None
    enclave: str = ""  # vsock://CID:PORT or unix:PATH
    kms_endpoint: str | None = None  # the local emulator (https); unset: AWS KMS of kms_region
    kms_ca: Path | None = None  # the emulator's dev CA, for the sidecar's own KMS client
    kms_proxy: str | None = None  # where the enclave's KMS TLS stream goes (default: vsock://3:8000, or the emulator)
    kms_region: str = "us-east-1"
    kms_key_id: str | None = None
    attestation_root: Path | None = None
    attestation_root_fingerprint: str | None = None
    pcrs: dict[int, bytes] = field(default_factory=dict)
    allow_debug_enclave: bool = False
    log_json: bool = False
    tx_fee_cap_wei: int = 10**18
    http_workers: int = 1  # processes serving HTTP on one port (SO_REUSEPORT); the first also does IPC
    http_read_timeout: float = 30.0  # seconds for a request's headers (from connect) and for its body
    admins: list[bytes] = field(default_factory=list)  # `--admin`: the export admin set of a new datadir
    eth_signtx_result: str = "raw"  # `--eth.signtx-result`: eth_signTransaction's "raw" 0x… or geth's {raw, tx}
    downstream: str | None = None  # `--downstream`: the node chain methods are forwarded to (proxy mode)
    downstream_auth_file: Path | None = None  # a file holding one `Name: value` header for the node
    admin_threshold: int = 1  # `--admin-threshold`: admin signatures a custody change needs (K of N)

    @property
    def metrics_dir(self) -> Path:
        return self.datadir / "metrics"

    def export_metrics_dir(self) -> None:
        """With HTTP workers, empty the metrics directory and export PROMETHEUS_MULTIPROC_DIR for this process
        and its workers. It has to run before prometheus_client is first imported: the library picks its
        value class at import time. Files from an earlier run would otherwise add to this run's counters."""
        if self.http_workers <= 1 or not self.http_enabled:
            return
        self.metrics_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in self.metrics_dir.glob("*.db"):
            stale.unlink()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)

    @property
    def ipc_socket(self) -> Path:
        return self.ipcpath if self.ipcpath is not None else self.datadir / "clave.ipc"

    @property
    def store_path(self) -> Path:
        return self.datadir / "keystore.sqlite"


def parse_chain_ids(text: str) -> list[int]:
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        value = int(part, 0)
        if value <= 0:
            raise ValueError(f"chain id must be positive: {part}")
        ids.append(value)
    if not ids:
        raise ValueError("at least one chain id is required")
    return ids


def parse_pcr(text: str) -> tuple[int, bytes]:
    index_s, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"PCR pin {text!r} must look like N=HEX")
    raw = bytes.fromhex(value.removeprefix("0x"))
    if len(raw) not in (32, 48, 64):
        raise ValueError(f"PCR{index_s} value must be 32, 48 or 64 bytes")
    return int(index_s), raw
