"""Targets (issue 6) and the Markdown the benchmark writes: a results table and docs/performance.md."""

from __future__ import annotations

from typing import Any

WORKLOAD = {
    "tx": "`account_signTransaction` (EIP-1559)",
    "sign": "`eth_sign`",
    "typed": "`eth_signTypedData_v4` (EIP-712)",
    "anvil_tx": "`eth_signTransaction` (EIP-1559)",
    "send": "`eth_sendTransaction` via `--downstream` anvil (filled, signed, broadcast, mined)",
    "eth_tx": "`eth_signTransaction` (EIP-1559), same stack, same burst",
}

MICRO = [
    ("eth_account_inprocess", "Baseline: in-process eth-account `Account.sign_transaction` (app holds its key)"),
    ("clef_style", "Baseline: clef-style, decrypt a standard scrypt keyfile per signature"),
    ("coincurve_raw", "Ceiling: libsecp256k1 `sign_recoverable` of a digest (coincurve)"),
    ("enclave_encode_sign", "Enclave functions: check + preimage + keccak + sign + encode_signed + tx_hash"),
    ("enclave_handler", "Enclave handler: `EnclaveService.call(\"sign_tx\")`"),
    ("enclave_frames_w64", "Enclave over frames: 1 client process, 64 `sign_tx` frames in flight"),
    ("enclave_frames_w1", "Enclave over frames: 1 client process, 1 frame in flight (round trip)"),
]


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _status(ok: bool | None) -> str:
    return "NOT RUN" if ok is None else ("MET" if ok else "**MISSED**")


def _rows(results: dict[str, Any], system: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in results.get("throughput", []) if r.get("system") == system and r.get("kind") == kind]


def max_tx_row(results: dict[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in _rows(results, "clave", "tx") if r["transport"] == "http" and not r.get("target_rate")]
    wrk = [r for r in rows if r["generator"].startswith("wrk")]
    return (wrk or rows or [None])[0]


TARGET_RPS = 5000


def half_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Open-loop rows: at half the measured maximum, then (if the maximum beat the target) at 2,500/s."""
    return [r for r in _rows(results, "clave", "tx") if r.get("target_rate")]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    scale = results.get("scale", {})
    micro = results.get("micro", {})
    nproc = results["meta"]["machine"].get("nproc") or 1
    targets: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: str, ok: bool | None) -> None:
        targets.append({"target": name, "goal": goal, "measured": measured, "status": _status(ok)})

    row = max_tx_row(results)
    add("HTTP `account_signTransaction` at concurrency 64", "≥ 5,000/s",
        f"{_f(row['rps'], 0)}/s ({row['generator']})" if row else "–", row["rps"] >= TARGET_RPS if row else None)
    for row in half_rows(results) or [None]:  # type: ignore[list-item]
        of_target = row is not None and row.get("half_of") == TARGET_RPS
        add("p99 at half the target load (2,500/s)" if of_target else "p99 at half the measured max load", "≤ 10 ms",
            f"p99 {_f(row['p99_ms'], 2)} ms at {_f(row['rps'], 0)}/s ({row['generator']})" if row else "–",
            row["p99_ms"] <= 10 if row else None)
    handler = micro.get("enclave_handler") or micro.get("enclave_encode_sign")
    add("Enclave-side signing on one core (handler, in process)", "≥ 15,000/s",
        f"{_f(handler['rate'], 0)}/s" if handler and "rate" in handler else "–",
        handler["rate"] >= 15000 if handler and "rate" in handler else None)
    frames = micro.get("enclave_frames_w64")
    add("Enclave-side signing on one core (over the frame protocol)", "≥ 15,000/s",
        f"{_f(frames['rate'], 0)}/s" if frames and "rate" in frames else "–",
        frames["rate"] >= 15000 if frames and "rate" in frames else None)
    full_scale = scale.get("accounts", 0) >= 100_000
    label = "" if full_scale else f" (scaled down: {_f(scale.get('accounts', 0))} accounts)"
    bulk = scale.get("bulk_seconds")
    add("Bulk generation of 100,000 accounts" + label, "≤ 60 s",
        f"{_f(bulk, 2)} s ({_f(scale.get('bulk_rate'), 0)} accounts/s)" if bulk is not None else "–",
        (bulk <= 60) if bulk is not None and full_scale else None)
    restart = scale.get("restart_all_unsealed_s")
    add("Restart to ready, all keys unsealed" + label, "≤ 10 s",
        f"{_f(restart, 2)} s (ready line {_f(scale.get('restart_ready_s'), 2)} s)" if restart is not None else "–",
        (restart <= 10 and scale.get("keys_loaded_after_restart") == scale.get("accounts")) if restart is not None and full_scale else None)
    rss_values = [scale[k]["enclave+sidecar"] for k in ("rss_after_bulk_mb", "rss_after_load_mb", "rss_after_restart_mb")
                  if isinstance(scale.get(k), dict) and "enclave+sidecar" in scale[k]]
    add("Enclave + sidecar RSS" + label, "≤ 500 MB", f"max {_f(max(rss_values), 0)} MB" if rss_values else "–",
        (max(rss_values) <= 500) if rss_values and full_scale else None)
    lists = [scale[k]["median_ms"] for k in ("account_list", "account_list_after_restart") if isinstance(scale.get(k), dict)]
    add("`account_list`" + label, "≤ 200 ms", f"median {_f(max(lists), 1)} ms (worst of the runs)" if lists else "–",
        (max(lists) <= 200) if lists and full_scale else None)
    imp = results.get("import")
    clef = micro.get("clef_style")
    if imp:
        per_key = clef["p50_ms"] / 1000 if clef and "p50_ms" in clef else None
        ideal = nproc / per_key if per_key else None
        net = imp.get("net_rate", imp["rate"])
        measured = (f"{_f(net, 2)} keyfiles/s without the command's fixed {_f(imp.get('fixed_seconds'), 1)} s "
                    f"({_f(imp['rate'], 2)}/s with it; {imp['imported']}/{imp['keyfiles']} imported)")
        if ideal:
            measured += f"; one scrypt takes {_f(per_key, 2)} s, so all {nproc} cores would give ≈ {_f(ideal, 2)}/s"
        add("Keystore import spread over all cores", "≈ nproc / scrypt time", measured,
            (net >= 0.75 * ideal and imp["imported"] == imp["keyfiles"]) if ideal else None)
    soak = results.get("soak")
    if soak:
        growth = soak["growth_mb"]
        add(f"Soak, {soak['minutes']:g} min at full load", "no memory growth",
            f"RSS {_f(soak['rss_first_mb'], 0)} → {_f(soak['rss_last_mb'], 0)} MB (growth {_f(growth, 1)} MB)",
            growth <= max(20.0, 0.05 * soak["rss_first_mb"]))
    invalid = sum(r.get("failures", 0) for r in results.get("throughput", []))
    checked = sum(r.get("verified", 0) for r in results.get("throughput", []))
    add("Every reply a valid signature", "0 invalid", f"{_f(checked)} ok, {_f(invalid)} invalid", invalid == 0 and checked > 0)
    return targets


def _throughput_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| System | Workload | Transport | Generator | Load | req/s | p50 ms | p90 ms | p99 ms | max ms | Checked ok | Invalid | CPU cores used | Machine busy | Others' cores |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results.get("throughput", []):
        if r.get("target_rate"):
            load = f"open loop {_f(r['target_rate'], 0)}/s" + (f" (½ of {_f(r.get('half_of'), 0)})" if r.get("half_of") else "")
        else:
            load = f"closed loop, {r['concurrency']} in flight"
        if r.get("attempts", 1) > 1:
            load += f" (attempt {r['attempts']}: others took CPU before)"
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.get("cpu_cores", {}).items() if k != "kms-emulator")
        system = r["system"].split(",")[0]
        if r.get("accounts_loaded"):
            system += f" ({_f(r['accounts_loaded'])} accounts)"
        lines.append(
            f"| {system} | {WORKLOAD.get(r['kind'], r['kind'])} | {r['transport'].upper()} | {r['generator']} | {load} | "
            f"{_f(r['rps'], 0)} | {_f(r['p50_ms'], 2)} | {_f(r['p90_ms'], 2)} | {_f(r['p99_ms'], 2)} | {_f(r['max_ms'], 2)} | "
            f"{_f(r.get('verified'))} | {_f(r.get('failures'))} | {cpu or '–'} | {_f(r.get('machine_busy_cores'), 2)} | {_f(r.get('foreign_cores'), 2)} |"
        )
    lines.append("")
    lines.append("CPU cores used: by clave's sidecar and enclave processes during the row (from /proc). Machine busy: "
                 "cores the whole machine was busy (/proc/stat; the generator and the kernel's loopback work included). "
                 "Others' cores: "
                 "CPU used during the row by processes that are neither the benchmark nor clave (another session's "
                 "test run, say); above about 0.1 the row understates clave.")
    lines.append("")
    lines.append("Checked: rows from the Python generator checked every reply (signer recovered with eth-account, "
                 "transaction fields compared); wrk rows count HTTP 200 replies carrying a `result` (wrk cannot check "
                 "signatures). Latency of open-loop rows is measured from each request's due time.")
    return lines


def _micro_table(results: dict[str, Any]) -> list[str]:
    micro = results.get("micro", {})
    if not micro:
        return []
    lines = ["| Single core | ops/s | p50 µs | p99 µs | max µs | Checked | Others' cores |", "|---|---:|---:|---:|---:|---|---:|"]
    for key, label in MICRO:
        m = micro.get(key)
        if not m:
            continue
        if "error" in m:
            lines.append(f"| {label} | error: {m['error']} | | | | | |")
            continue
        checked = f"{m.get('verified', '–')} ok / {m.get('failures', 0)} bad ({m['checked']})" if "checked" in m else "–"
        lines.append(f"| {label} | {_f(m['rate'], 0)} | {_f(m['p50_ms'] * 1000, 0)} | {_f(m['p99_ms'] * 1000, 0)} | "
                     f"{_f(m['max_ms'] * 1000, 0)} | {checked} | {_f(m.get('foreign_cores'), 2)} |")
    return lines


def _scale_table(results: dict[str, Any]) -> list[str]:
    s = results.get("scale", {})
    if not s:
        return []

    def rss(key: str) -> str:
        v = s.get(key)
        if not isinstance(v, dict):
            return "–"
        return (f"enclave {_f(v.get('enclave'), 0)} + sidecar {_f(v.get('sidecar'), 0)} = **{_f(v.get('enclave+sidecar'), 0)} MB**"
                f" (KMS emulator {_f(v.get('kms-emulator'), 0)} MB, local mode only)")

    lines = ["| Scale | Result |", "|---|---|"]
    lines.append(f"| Accounts | {_f(s.get('accounts'))} |")
    if "bulk_seconds" in s:
        lines.append(f"| Bulk generation over IPC (`clave_newAccount`, {len(s.get('bulk_chunk_seconds', []))} calls) | "
                     f"{_f(s['bulk_accounts'])} accounts in {_f(s['bulk_seconds'], 2)} s = {_f(s['bulk_rate'], 0)}/s |")
    if "first_start_s" in s:
        lines.append(f"| First start (empty datadir) to `clave ready` | {_f(s['first_start_s'], 2)} s |")
    if "restart_ready_s" in s:
        lines.append(f"| Restart to `clave ready` | {_f(s['restart_ready_s'], 2)} s |")
        lines.append(f"| Restart to /healthz keys_loaded = {_f(s.get('accounts'))} | {_f(s['restart_all_unsealed_s'], 2)} s "
                     f"(keys_loaded {_f(s.get('keys_loaded_after_restart'))}) |")
    for key, label in (("rss_empty_mb", "RSS, no accounts"), ("rss_after_bulk_mb", "RSS after bulk generation"),
                       ("rss_after_load_mb", "RSS after the load runs"), ("rss_after_restart_mb", "RSS after restart")):
        if key in s:
            lines.append(f"| {label} | {rss(key)} |")
    for key, label in (("account_list", "`account_list` over HTTP"), ("account_list_after_restart", "`account_list` after restart")):
        v = s.get(key)
        if isinstance(v, dict):
            lines.append(f"| {label} | median {_f(v['median_ms'], 1)} ms, max {_f(v['max_ms'], 1)} ms over {v['calls']} calls, "
                         f"{_f(v['accounts_returned'])} addresses |")
    imp = results.get("import")
    if imp:
        lines.append(f"| `clave account import DIR` ({imp['kdf']}) | {imp['imported']}/{imp['keyfiles']} in "
                     f"{_f(imp['seconds'], 2)} s = {_f(imp['rate'], 2)} keyfiles/s; without the command's fixed "
                     f"{_f(imp.get('fixed_seconds'), 2)} s (start-up, attestation check; timed on an empty directory): "
                     f"**{_f(imp.get('net_rate'), 2)} keyfiles/s** (exit {imp['exit_code']}) |")
    soak = results.get("soak")
    if soak:
        lines.append(f"| Soak {soak['minutes']:g} min | RSS enclave+sidecar {_f(soak['rss_first_mb'], 0)} → "
                     f"{_f(soak['rss_last_mb'], 0)} MB, max {_f(soak['rss_max_mb'], 0)} MB, {len(soak['samples'])} samples |")
    return lines


def _targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| Target (issue 6) | Goal | Measured | Status |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {t['status']} |")
    return lines


def _profile_section(results: dict[str, Any]) -> list[str]:
    prof = results.get("profile")
    if not prof:
        return []
    lines = [f"py-spy, {prof['rate_hz']} Hz, {prof['seconds']:g} s, during a full-load `account_signTransaction` run "
             f"({prof['generator']}; {_f(prof['load_rps_under_profiler'], 0)}/s under the profiler). Self time = samples "
             "whose innermost Python frame is the function (time in C code and syscalls counts for the Python function "
             "that called it); idle samples (waiting in epoll) are excluded, so shares are of busy time.", ""]
    for name in ("sidecar", "enclave"):
        p = prof.get(name)
        if not p:
            continue
        if "error" in p:
            lines += [f"**{name}**: py-spy failed: {p['error']}", ""]
            continue
        lines += [f"**{name}** ({_f(p['samples'])} busy samples; raw stacks `{p.get('raw_file', '')}`)", "",
                  "| # | Function | File | Self |", "|---:|---|---|---:|"]
        for i, r in enumerate(p["self"], 1):
            lines.append(f"| {i} | `{r['function']}` | {r['file']} | {r['share'] * 100:.1f}% |")
        lines += ["", "By file (self time): " + ", ".join(f"{r['file']} {r['share'] * 100:.1f}%" for r in p["by_file"][:8]), ""]
    return lines


def _reading(results: dict[str, Any]) -> list[str]:
    """A few sentences computed from the numbers, for whoever optimises next."""
    out: list[str] = []
    row = max_tx_row(results)
    cores = (row or {}).get("cpu_cores", {})
    if row and cores:
        side, enc = cores.get("sidecar", 0.0), cores.get("enclave", 0.0)
        workers = results["meta"].get("http_workers") or 1
        sidecar = "the sidecar process" if workers == 1 else f"the {workers} sidecar processes"
        out.append(f"At full load ({row['generator']}, `account_signTransaction`, {_f(row['rps'], 0)}/s) {sidecar} "
                   f"used {side:.2f} cores and the enclave (one Python process, at most one core) {enc:.2f}. Per "
                   f"request: sidecar {side / row['rps'] * 1e6:,.0f} µs of CPU, enclave {enc / row['rps'] * 1e6:,.0f} µs.")
        if row.get("machine_busy_cores") is not None:
            n = results["meta"]["machine"].get("nproc") or 0
            limit = " CPU is what limits the rate." if n and row["machine_busy_cores"] > 0.9 * n else ""
            out.append(f"The whole machine was busy {row['machine_busy_cores']:.2f} of {n} cores during that row "
                       f"(generator, kernel and others included).{limit}")
        if row.get("foreign_cores", 0) > 0.1:
            out.append(f"Other processes used {row['foreign_cores']:.2f} cores during that row, so it understates clave.")
    few = [r for r in results.get("throughput", []) if r.get("system", "").startswith("clave,") and r["kind"] == "tx"]
    if row and few:
        f = few[0]
        cost = (f["rps"] - row["rps"]) / f["rps"] if f["rps"] else 0.0
        verdict = (f"holding the keys costs {cost * 100:.0f}% of the throughput (a larger heap for the garbage "
                   "collector to scan is one suspect)" if cost > 0.05 else "holding the keys costs no measurable throughput")
        out.append(f"With only {_f(f.get('accounts_loaded'))} accounts loaded, the same run did {_f(f['rps'], 0)}/s "
                   f"(p99 {_f(f['p99_ms'], 1)} ms) against {_f(row['rps'], 0)}/s (p99 {_f(row['p99_ms'], 1)} ms) with "
                   f"{_f(row.get('accounts_loaded'))}: {verdict}.")
    handler = results.get("micro", {}).get("enclave_handler")
    if row and handler and "rate" in handler:
        out.append(f"The enclave's `sign_tx` handler alone does {_f(handler['rate'], 0)}/s on one core; end to end over "
                   f"HTTP clave reaches {row['rps'] / handler['rate'] * 100:.0f}% of that.")
    prof = results.get("profile", {}).get("sidecar")
    if prof and "by_file" in prof:
        top = ", ".join(f"{r['file']} {r['share'] * 100:.0f}%" for r in prof["by_file"][:4])
        out.append(f"Sidecar self time by file, largest first: {top}.")
    return [f"- {line}" for line in out]


def _setup(meta: dict[str, Any]) -> list[str]:
    workers = meta.get("http_workers")
    if workers is None:
        return []
    return [f"clave under test: `clave up --http.workers {workers}` ({workers} sidecar process(es) serving HTTP on one "
            "port; CPU and RSS of \"sidecar\" below add them all up).", ""]


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    m = meta["machine"]
    out = [f"# clave benchmark, {meta['started']} ({meta['mode']})", "",
           f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
           f"Linux {m['kernel']}; wrk: {m['wrk']}; anvil: {m['anvil']}; clave at {m['git']}.", "",
           f"Command: `{meta['command']}` ({_f(meta.get('wall_seconds'), 0)} s wall)", "",
           *_setup(meta),
           "## Targets", ""] + _targets_table(results) + ["", "## Throughput and latency", ""] + _throughput_table(results)
    micro = _micro_table(results)
    if micro:
        out += ["", "## Single core", ""] + micro
    scale = _scale_table(results)
    if scale:
        out += ["", "## Scale and memory", ""] + scale
    prof = _profile_section(results)
    if prof or _reading(results):
        out += ["", "## Where the time goes", ""] + _reading(results) + [""] + prof
    if results.get("errors"):
        out += ["", "## Phases that failed", ""] + [f"- {k}: {v}" for k, v in results["errors"].items()]
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


METHOD = """\
## How this is measured

- **Stack**: `bench/run.py` starts its own `clave up --http.workers N` (N = cores: the sidecar's primary
  process and N-1 HTTP workers on the same port; enclave process with the software NSM; KMS emulator) on a
  fresh temporary datadir, exactly the local code path; it bulk-generates the accounts over IPC
  and the load rotates over 64 of them. All processes — clave, the load generator, anvil — share this one
  machine, so every generator's CPU is taken from the server.
- **Generators** (each row names its own): Debian's `wrk` (C, HTTP/1.1 keep-alive, 64 connections) with
  `bench/wrk/sign.lua`, which makes every request differ (nonce, data or EIP-712 message nonce) and counts
  replies that are HTTP 200 with a `result`; and `bench/pygen.py`, N processes with aiohttp keep-alive HTTP
  (or one multiplexed IPC connection per process, as geth uses IPC), which keeps every reply and, after the
  measured window, checks each one with eth-account (signer recovered, transaction fields compared).
- **Half load**: open loop at 50% of the wrk maximum and, when that maximum beat 5,000/s, also at 2,500/s
  (half the issue's target load, the other reading of "half that load"), generated by wrk paced with `bench/wrk/paced.lua`
  (the k-th request of each thread is due at start + k / rate; a free connection waits for the next due
  time, rounded up to wrk's millisecond timer) or, without wrk, by the Python generator. Latency counts from
  each request's due time, so queueing behind a slow server (or generator) is charged, not hidden. wrk,
  because at that rate the Python generator itself needs about half a core of this machine.
- **Baselines, same run**: in-process eth-account signing on one pinned core (a Python app holding its own
  key); anvil's `eth_signTransaction` with its unlocked dev accounts, driven by the same wrk script and the
  same Python generator; and a clef-style signer that decrypts a standard scrypt keyfile per signature.
- **Enclave side**: the encode-and-sign functions and the `EnclaveService` `sign_tx` handler in a loop on
  one pinned core (the handler's key is put into its key table directly, a benchmark-only shortcut, since
  the service signs nothing before a KMS master key is loaded), and a separate client process sending
  `sign_tx` CBOR frames to the running stack's enclave socket, whose keys the sidecar unsealed.
- **Scale**: `clave_newAccount` over IPC in chunks of 10,000; RSS from /proc (VmRSS) of the `clave up`
  process and its HTTP workers (the sidecar) and its enclave child; restart = SIGTERM, start again on the same datadir, time to
  the `clave ready` line and to /healthz `keys_loaded` = all accounts; `account_list` over HTTP.
- Targets are printed MET or **MISSED**; no test asserts timing. `--soak MINUTES` adds a long full-load run
  with RSS sampled every 10 s.
"""


def docs_page(results: dict[str, Any]) -> str:
    body = markdown(results).split("\n", 1)[1]  # drop the report's own title
    meta = results["meta"]
    head = ["# Performance", "",
            "Generated by `make bench` (`bench/run.py`); rerun it to refresh this page. Numbers are from one run "
            f"on the machine below, started {meta['started']}.", ""]
    return "\n".join(head) + body + "\n" + METHOD


if __name__ == "__main__":
    # Re-render a page from a saved run: python bench/report.py bench-results/bench-….json docs/performance.md
    import json
    import sys
    from pathlib import Path

    Path(sys.argv[2]).write_text(docs_page(json.loads(Path(sys.argv[1]).read_text())))
