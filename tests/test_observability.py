"""Metrics, health and request logs, scraped from a running `clave up`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.accounts import new_account
from tests.stack import ClaveProcess, RpcFailure, get_text

pytestmark = pytest.mark.slow  # every test here starts `clave up` (or other processes) itself


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_upcheck_healthz_metrics(clave: ClaveProcess) -> None:
    assert get_text(clave.url + "/upcheck") == (200, "OK")
    status, body = get_text(clave.url + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["ready"] and health["attested"] and health["store_reachable"]
    assert health["enclave_reachable"] and health["keys_unsealed"]

    address = new_account(clave)
    before = _samples(get_text(clave.url + "/metrics")[1])
    clave.rpc("eth_sign", address, "0x01")
    try:
        clave.rpc("eth_sign", "0x" + "ee" * 20, "0x01")
    except RpcFailure:
        pass
    after = _samples(get_text(clave.url + "/metrics")[1])

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("clave_requests_total", method="eth_sign", outcome="ok") == 1
    assert delta("clave_requests_total", method="eth_sign", outcome="refused") == 1
    assert delta("clave_signatures_total", kind="personal") == 1
    assert delta("clave_request_seconds_count", method="eth_sign") == 2
    assert delta("clave_enclave_roundtrip_seconds_count", call="sign_personal") >= 1
    assert after[("clave_keys_loaded", ())] >= 1
    assert after[("clave_attestation_ok", ())] == 1
    assert after[("clave_kms_calls_total", (("operation", "GenerateDataKey"), ("outcome", "ok")))] == 1
    text = get_text(clave.url + "/metrics")[1]
    assert address not in text and address[2:] not in text  # labels never carry accounts


def test_request_log_lines(clave: ClaveProcess) -> None:
    address = new_account(clave)
    clave.rpc("eth_sign", address, "0x5eedf00d5eedf00d")
    deadline = time.monotonic() + 5  # log lines are written by a background thread
    while True:
        lines = [line for line in clave.logs().splitlines() if "clave.request eth_sign" in line and address in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines, "one log line per request, naming method and account"
    assert re.search(r"outcome=ok latency_ms=\d+\.\d+ transport=http", lines[-1])
    assert "5eedf00d" not in clave.logs()  # payloads are never logged


def _log_line(clave: ClaveProcess, *needles: str) -> str:
    deadline = time.monotonic() + 5  # log lines are written by a background thread
    while True:
        lines = [line for line in clave.logs().splitlines() if "clave.request" in line and all(n in line for n in needles)]
        if lines or time.monotonic() > deadline:
            return lines[-1] if lines else ""
        time.sleep(0.05)


def test_request_log_says_why_and_what(clave: ClaveProcess, tmp_path: Path) -> None:
    from tests.clients import import_key

    stranger = "0x" + "e7" * 20
    with pytest.raises(RpcFailure):
        clave.rpc("eth_sign", stranger, "0x01")
    line = _log_line(clave, "eth_sign", stranger, "outcome=refused")
    assert line.endswith('error="unknown account"'), line  # the reason the caller got, in the log

    with pytest.raises(RpcFailure):
        clave.rpc("eth_fooBar\n" + "x" * 100)  # unknown, with a line break and too long
    line = _log_line(clave, "eth_fooBar?xxx")
    shown = line.split(" account=")[0].split()[-1]
    assert shown == "eth_fooBar?" + "x" * 53 + "…" and "outcome=bad_request" in line, line  # 64 characters at most
    assert "\n" not in line, line

    address = import_key(clave, bytes.fromhex("7e" * 32), tmp_path)
    line = _log_line(clave, "clave_importKeyfile", "outcome=ok", f"account={address}")  # not an earlier import's line
    assert f"account={address}" in line, line


def test_json_log_lines(tmp_path: Path) -> None:
    proc = ClaveProcess(tmp_path / "json", extra=["--log.json"])
    proc.start()
    try:
        proc.rpc("account_version")
    finally:
        proc.stop()
    entries = [json.loads(line) for line in proc.output if line.startswith("{")]
    request = [e for e in entries if e.get("method") == "account_version"]
    assert request and request[0]["outcome"] == "ok" and "latency_ms" in request[0]


def test_dashboard_and_alerts_use_real_metric_names(clave: ClaveProcess) -> None:
    from tests.conftest import ROOT

    served = {family.name for family in text_string_to_metric_families(get_text(clave.url + "/metrics")[1])}
    served |= {f"{name}_total" for name in served} | {f"{name}_bucket" for name in served}
    text = (ROOT / "monitoring" / "grafana-dashboard.json").read_text()
    text += (ROOT / "monitoring" / "clave-alerts.yml").read_text()
    used = set(re.findall(r"\bclave_[a-z_]+", text))
    assert used and used <= served, f"unknown metrics: {used - served}"
