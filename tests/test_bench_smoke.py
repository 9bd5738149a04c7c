"""The benchmark runs, and every reply it got was a valid signature (a few seconds per workload; no timing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "run.py"


def run_bench(out: Path, *extra: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--out", str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(  # this checkout's code, whatever is installed
            [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    results = json.loads((out / "latest.json").read_text())
    assert list(out.glob("bench-*.md")), "no Markdown table written"
    return results


def assert_all_valid(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        assert row["completed"] > 0, row
        assert row["failures"] == 0, (row["failures"], row["failure_samples"])
        assert row["verified"] == row["completed"], row
        assert not row["transport_errors"] or not any(row["transport_errors"].values()), row


@pytest.mark.slow
def test_smoke_run_every_reply_is_a_valid_signature(tmp_path: Path) -> None:
    results = run_bench(tmp_path)
    rows = results["throughput"]
    seen = {(r["kind"], r["transport"], bool(r["target_rate"])) for r in rows}
    assert {("tx", "http", False), ("sign", "http", False), ("typed", "http", False), ("tx", "ipc", False),
            ("tx", "http", True)} <= seen
    python_rows = [r for r in rows if r["generator"].startswith("python")]
    assert python_rows == rows  # --smoke uses the Python generator only
    for row in python_rows:
        assert row["checked"].startswith("every reply"), row["checked"]
    assert_all_valid(rows)
    assert sum(r["verified"] for r in rows) > 0

    scale = results["scale"]
    assert scale["accounts"] == 116  # 16 load accounts, then the 100 of the (scaled-down) bulk generation
    assert scale["bulk_accounts"] == 100
    assert scale["keys_loaded_after_restart"] == 116
    assert scale["account_list"]["accounts_returned"] == 116
    assert scale["rss_after_load_mb"]["enclave"] > 0 and scale["rss_after_load_mb"]["sidecar"] > 0
    assert results["import"]["imported"] == 1 and results["import"]["present_in_account_list"] == 1
    statuses = {t["target"]: t["status"] for t in results["targets"]}
    assert statuses["Every reply a valid signature"] == "MET"


@pytest.mark.slow
def test_smoke_run_with_wrk_script(tmp_path: Path) -> None:
    """The wrk Lua script drives all three workloads and every reply carries a result."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk not installed (apt-get install wrk); the Python generator test covers the rest")
    results = run_bench(tmp_path, "--wrk", "--keyfiles", "0")
    wrk_rows = [r for r in results["throughput"] if r["generator"].startswith("wrk")]
    assert {r["kind"] for r in wrk_rows} == {"tx", "sign", "typed"}
    for row in wrk_rows:
        assert row["completed"] > 0 and row["verified"] == row["completed"] and row["failures"] == 0, row
    assert_all_valid([r for r in results["throughput"] if r["generator"].startswith("python")])


def test_verifier_counts_a_wrong_signature_as_a_failure() -> None:
    """The zero-failure assertions above mean something: a reply signed by another key is caught."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from common import Verifier, sign_data, tx_fields
    finally:
        sys.path.remove(str(ROOT / "bench"))
    asked, other = Account.create(), Account.create()
    verifier = Verifier("sign", 1)
    good = Account.sign_message(encode_defunct(hexstr=sign_data(7)), asked.key).signature.to_0x_hex()
    bad = Account.sign_message(encode_defunct(hexstr=sign_data(7)), other.key).signature.to_0x_hex()
    assert verifier.check({"result": good}, asked.address, 7) is None
    assert "recovers to" in (verifier.check({"result": bad}, asked.address, 7) or "")
    assert verifier.check({"result": good}, asked.address, 8) is not None  # signed the wrong message
    assert verifier.check({"error": {"code": -32000, "message": "x"}}, asked.address, 7) is not None

    tx = {k: (int(v, 16) if k not in ("from", "to", "input") else v) for k, v in tx_fields(asked.address, 5, 1).items()}
    tx.pop("from")
    tx["data"] = tx.pop("input")
    tx["type"] = 2
    raw = Account.sign_transaction(tx, other.key).raw_transaction.to_0x_hex()
    assert "recovers to" in (Verifier("anvil_tx", 1).check({"result": raw}, asked.address, 5) or "")
    raw = Account.sign_transaction(tx, asked.key).raw_transaction.to_0x_hex()
    assert Verifier("anvil_tx", 1).check({"result": raw}, asked.address, 5) is None
    assert "nonce" in (Verifier("anvil_tx", 1).check({"result": raw}, asked.address, 6) or "")
