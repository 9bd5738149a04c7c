"""Prometheus metrics. Labels carry method names, outcomes and kinds, never addresses or payloads.

With HTTP workers (`--http.workers` above 1) every process counts into prometheus_client's multiprocess
files under `PROMETHEUS_MULTIPROC_DIR`, and whichever process answers a scrape adds them all up; the
variable has to be set before prometheus_client is imported (`SidecarConfig.export_metrics_dir` does that).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self) -> None:
        directory = os.environ.get(MULTIPROC_ENV)
        self.multiprocess_dir = Path(directory) if directory else None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("clave_requests", "JSON-RPC requests by method and outcome", ["method", "outcome"], registry=r)
        self.request_seconds = Histogram(
            "clave_request_seconds", "Sidecar time per JSON-RPC request", ["method"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.enclave_seconds = Histogram(
            "clave_enclave_roundtrip_seconds", "Round trip to the enclave per call", ["call"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.signatures = Counter("clave_signatures", "Signatures made, by kind", ["kind"], registry=r)
        self.refusals = Counter("clave_refusals", "Requests refused, by reason", ["reason"], registry=r)
        self.policy_denials = Counter(
            "clave_policy_denials", "Requests the enclave's custody policy denied, by rule", ["rule"], registry=r
        )
        self.kms_calls = Counter("clave_kms_calls", "KMS calls by operation and outcome", ["operation", "outcome"], registry=r)
        # Every process sets the gauges from the same (mirrored) status when it answers a scrape; across
        # processes the latest write is the true one.
        mode: Literal["mostrecent"] = "mostrecent"
        self.keys_loaded = Gauge("clave_keys_loaded", "Accounts unsealed in the enclave", registry=r, multiprocess_mode=mode)
        self.custody_frozen = Gauge("clave_custody_frozen", "1 while an admin has frozen all signing", registry=r,
                                    multiprocess_mode=mode)
        self.audit_gap = Gauge("clave_audit_gap", "1 while an audit-log gap denies all signing (clave audit ack)",
                               registry=r, multiprocess_mode=mode)
        self.audit_checkpoint_age = Gauge(
            "clave_audit_checkpoint_age_seconds", "Seconds since the last audit checkpoint reached the datadir",
            registry=r, multiprocess_mode=mode,
        )
        # Each process holds its own waiting requests: the sum over live processes.
        self.approvals_pending = Gauge("clave_approvals_pending", "Requests waiting for admin approval", registry=r,
                                       multiprocess_mode="livesum")
        self.attested = Gauge(
            "clave_attestation_ok", "1 when the enclave's last attestation verified", registry=r, multiprocess_mode=mode
        )
        self.attestation_age = Gauge(
            "clave_attestation_age_seconds", "Seconds since the last verified attestation", registry=r, multiprocess_mode=mode
        )
        self.records_refused = Gauge(
            "clave_sealed_records_refused", "Stored records not loaded at the last unseal (corrupt, or not this key's)",
            registry=r, multiprocess_mode=mode,
        )
        self.master_mismatch = Gauge(
            "clave_enclave_master_mismatch",
            "1 while the enclave attests to a master key that is not the store's pinned one (refused)",
            registry=r, multiprocess_mode=mode,
        )
        self.task_restarts = Counter(
            "clave_task_restarts", "Background tasks that died and were restarted, by task", ["task"], registry=r
        )
        self.store_seconds = Histogram("clave_store_seconds", "Key store operation latency", ["op"], buckets=_LATENCY_BUCKETS, registry=r)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=str(self.multiprocess_dir))
        return generate_latest(combined), CONTENT_TYPE_LATEST

