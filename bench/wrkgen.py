"""Run Debian's `wrk` (C, keep-alive HTTP/1.1) with bench/wrk/sign.lua and parse the line its done() prints."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().parent / "wrk" / "sign.lua"
PACED_LUA = LUA.with_name("paced.lua")


def available() -> str | None:
    return shutil.which("wrk")


def run(url: str, kind: str, addresses: list[str], chain_id: int, duration: float, *, connections: int = 64,
        threads: int = 2, timeout: float = 10.0, rate: float | None = None) -> dict[str, Any]:
    """Closed loop (`connections` requests in flight), or with `rate` open loop at that many requests/s,
    latency then counted from each request's due time (bench/wrk/paced.lua)."""
    binary = available()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(addresses) + "\n")
        address_file = handle.name
    script = PACED_LUA if rate else LUA
    argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout:g}s",
            "--latency", "-s", str(script), url, "--", kind, address_file, str(chain_id)]
    if rate:
        argv.append(f"{rate / threads:g}")
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    finally:
        Path(address_file).unlink(missing_ok=True)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    data = json.loads(line[len("BENCH_JSON "):])
    seconds = data["duration_us"] / 1e6
    errors = data["errors"]
    failures = data["bad"] + errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    latency = data["due"] if rate else data
    if rate and latency["count"] < data["ok"] + data["bad"]:
        raise RuntimeError(f"paced wrk matched {latency['count']} of {data['ok'] + data['bad']} replies to a due time")
    return {
        "generator": f"wrk ({threads} threads, Lua{', paced' if rate else ''})",
        "transport": "http",
        "kind": kind,
        "concurrency": connections,
        "duration_s": round(seconds, 3),
        "target_rate": rate,
        "requests": data["requests"],
        "completed": data["requests"],
        "rps": data["requests"] / seconds,
        "p50_ms": latency["p50_us"] / 1000,
        "p90_ms": latency["p90_us"] / 1000,
        "p99_ms": latency["p99_us"] / 1000,
        "max_ms": latency["max_us"] / 1000,
        "latency_from": "due time (open loop)" if rate else "send time",
        "verified": data["ok"],
        "failures": failures,
        "failure_samples": [data["bad_sample"]] if data["bad_sample"] else [],
        "transport_errors": errors,
        "checked": "HTTP 200 with a result and no error (wrk cannot check signatures)",
        "command": " ".join(argv[: argv.index("--") + 1] + [kind, "ADDRESSES", str(chain_id), *argv[argv.index("--") + 4 :]]),
    }
