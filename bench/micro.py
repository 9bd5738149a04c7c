"""Single-core measurements that need no running server, and the enclave frame benchmark.

  eth_account_inprocess  baseline (1): a Python application holding its own key, `Account.sign_transaction`
  coincurve_raw          the ceiling: libsecp256k1 `sign_recoverable` of a 32-byte digest
  enclave_encode_sign    what `EnclaveService.sign_tx` does per request, as functions: check + preimage +
                         keccak + sign + encode_signed + tx_hash (enclave.encoding / enclave.signing)
  enclave_handler        `EnclaveService.call("sign_tx", …)` itself, the handler the frame server runs inline
                         (the key is put into the service's key table directly: a benchmark shortcut; the
                         service refuses to generate keys before a KMS master key is loaded)
  enclave_frames         a separate client process speaking the CBOR frame protocol to the *running* stack's
                         enclave socket (keys unsealed by the sidecar), `sign_tx` frames pipelined
  clef_style             a signer that decrypts a standard scrypt V3 keyfile for every signature

Each CPU-bound loop runs in a forked child pinned to one CPU (os.sched_setaffinity), so "one core" is true.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

from common import GAS, MAX_FEE, PRIORITY_FEE, TO, VALUE, latency_summary

TO_BYTES = bytes.fromhex(TO[2:])


def normalized_tx(nonce: int, chain_id: int = 1) -> dict[str, Any]:
    """The enclave's normalized type-2 transaction (what the sidecar sends in a sign_tx frame)."""
    return {"type": 2, "chainId": chain_id, "nonce": nonce, "gas": GAS, "maxFeePerGas": MAX_FEE,
            "maxPriorityFeePerGas": PRIORITY_FEE, "value": VALUE, "to": TO_BYTES, "data": b"", "accessList": []}


def _pinned_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def entry() -> None:
        try:
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[-1]})
            queue.put(("ok", fn(*args)))
        except BaseException as exc:
            queue.put(("error", f"{type(exc).__name__}: {exc}"))

    proc = ctx.Process(target=entry, daemon=True)
    proc.start()
    status, payload = queue.get(timeout=600)
    proc.join(10)
    if status != "ok":
        return {"error": payload}
    return payload  # type: ignore[no-any-return]


def _timed_loop(step: Callable[[int], Any], duration: float, check: Callable[[list[Any]], int] | None = None) -> dict[str, Any]:
    """Call step(i) until `duration` elapses; per-call latency; keep a sample of outputs for `check`."""
    for i in range(200):  # warm up caches and lazy imports
        step(i)
    latencies: list[float] = []
    samples: list[Any] = []
    perf = time.perf_counter
    start = perf()
    deadline = start + duration
    i = 0
    while True:
        t0 = perf()
        if t0 >= deadline:
            break
        out = step(1000 + i)
        latencies.append((perf() - t0) * 1000.0)
        if i % 97 == 0 and len(samples) < 200:
            samples.append((1000 + i, out))
        i += 1
    elapsed = perf() - start
    row: dict[str, Any] = {"ops": i, "seconds": round(elapsed, 3), "rate": i / elapsed, **latency_summary(latencies)}
    if check is not None:
        failures = check(samples)
        row.update(verified=len(samples) - failures, failures=failures, checked=f"sample of {len(samples)}, eth-account")
    return row


def _recover_raw_sender(raw: bytes) -> str:
    from eth_account import Account

    return Account.recover_transaction(raw)


def _check_raw(address: str) -> Callable[[list[Any]], int]:
    def check(samples: list[Any]) -> int:
        from eth_account.typed_transactions import TypedTransaction
        from hexbytes import HexBytes

        bad = 0
        for nonce, raw in samples:
            try:
                ok = (_recover_raw_sender(raw).lower() == address.lower()
                      and TypedTransaction.from_bytes(HexBytes(raw)).as_dict()["nonce"] == nonce)
            except Exception:
                ok = False
            bad += 0 if ok else 1
        return bad

    return check


def eth_account_inprocess(duration: float) -> dict[str, Any]:
    def body() -> dict[str, Any]:
        from eth_account import Account

        account = Account.create()
        tx = {"type": 2, "chainId": 1, "nonce": 0, "to": TO, "gas": GAS, "maxFeePerGas": MAX_FEE,
              "maxPriorityFeePerGas": PRIORITY_FEE, "value": VALUE, "data": b""}
        key = account.key

        def step(i: int) -> bytes:
            tx["nonce"] = i
            return bytes(Account.sign_transaction(tx, key).raw_transaction)

        return _timed_loop(step, duration, _check_raw(account.address))

    return _pinned_child(body)


def coincurve_raw(duration: float) -> dict[str, Any]:
    def body() -> dict[str, Any]:
        from coincurve import PrivateKey

        key = PrivateKey()
        digests = [os.urandom(32) for _ in range(1024)]

        def step(i: int) -> bytes:
            return key.sign_recoverable(digests[i & 1023], hasher=None)

        return _timed_loop(step, duration)

    return _pinned_child(body)


def enclave_encode_sign(duration: float) -> dict[str, Any]:
    def body() -> dict[str, Any]:
        from coincurve import PrivateKey

        from clave.core.eth import transactions
        from clave.enclave.signing import address_of, sign_preimage

        key = PrivateKey()
        address = "0x" + address_of(key.public_key).hex()
        tx = normalized_tx(0)

        def step(i: int) -> bytes:
            tx["nonce"] = i
            transactions.check_tx(tx)
            signature, _ = sign_preimage(key, transactions.signing_preimage(tx))
            raw = transactions.encode_signed(tx, signature.y_parity, signature.r, signature.s)
            transactions.tx_hash(raw)
            return raw

        return _timed_loop(step, duration, _check_raw(address))

    return _pinned_child(body)


def enclave_handler(duration: float, state_dir: str) -> dict[str, Any]:
    def body() -> dict[str, Any]:
        from pathlib import Path

        from clave.dev.soft_nsm import SoftwareNsm
        from clave.enclave.service import EnclaveService

        service = EnclaveService(SoftwareNsm(Path(state_dir)))
        secret = os.urandom(32)
        key = service._keys.add(secret, "generated", False)  # benchmark shortcut, see module docstring
        address = key.address
        tx = normalized_tx(0)
        params = {"address": address, "tx": tx}
        audited = "audit_resume" in service.handlers  # the audit log takes every decision: drain it as the sidecar does
        if audited:
            service.call("audit_resume", {})
        drained: list[str | None] = [None]

        def step(i: int) -> bytes:
            tx["nonce"] = i
            if audited and i % 10_000 == 0:
                lines = service.call("audit_drain", {"after_hash": drained[0]})["lines"]
                drained[0] = hashlib.sha256(lines[-1]).hexdigest() if lines else drained[0]
            return service.call("sign_tx", params)["raw"]  # type: ignore[no-any-return]

        return _timed_loop(step, duration, _check_raw("0x" + address.hex()))

    return _pinned_child(body)


async def _frames(sock_path: str, address: bytes, duration: float, window: int) -> tuple[dict[str, Any], list[Any]]:
    from clave.link import frames as protocol

    reader, writer = await asyncio.open_unix_connection(sock_path, limit=16 * 1024 * 1024)
    pending: dict[int, float] = {}
    latencies: list[float] = []
    samples: list[Any] = []
    errors: list[str] = []
    next_id = 0
    sem = asyncio.Semaphore(window)
    done_event = asyncio.Event()
    stop_at = 0.0
    nonce_of: dict[int, int] = {}

    async def read_loop() -> None:
        while True:
            body = await protocol.read_frame(reader)
            if body is None:
                break
            reply = protocol.decode_body(body)
            rid = reply.get("id")
            t0 = pending.pop(rid, None)
            if t0 is None:
                continue
            latencies.append((time.perf_counter() - t0) * 1000.0)
            if "error" in reply:
                if len(errors) < 5:
                    errors.append(str(reply["error"]))
            elif rid % 53 == 0 and len(samples) < 300:
                samples.append((nonce_of[rid], reply["result"]["raw"]))
            nonce_of.pop(rid, None)
            sem.release()
            if not pending and time.perf_counter() >= stop_at:
                done_event.set()

    reader_task = asyncio.create_task(read_loop())
    start = time.perf_counter()
    stop_at = start + duration
    while time.perf_counter() < stop_at:
        await sem.acquire()
        next_id += 1
        nonce_of[next_id] = next_id
        pending[next_id] = time.perf_counter()
        writer.write(protocol.encode_frame({"id": next_id, "method": "sign_tx",
                                            "params": {"address": address, "tx": normalized_tx(next_id)}}))
        if next_id % 32 == 0:
            await writer.drain()
    if pending:
        await asyncio.wait_for(done_event.wait(), 30)
    elapsed = time.perf_counter() - start
    reader_task.cancel()
    writer.close()
    row = {"ops": len(latencies), "seconds": round(elapsed, 3), "rate": len(latencies) / elapsed, "window": window,
           **latency_summary(latencies), "errors": len(errors), "error_samples": errors}
    return row, samples


def enclave_frames(sock_path: str, address_hex: str, duration: float, window: int) -> dict[str, Any]:
    """One client process, `window` sign_tx frames in flight, against the running enclave."""

    def body() -> dict[str, Any]:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        address = bytes.fromhex(address_hex[2:])
        row, samples = asyncio.run(_frames(sock_path, address, duration, window))
        failures = _check_raw(address_hex)(samples)
        row.update(verified=len(samples) - failures, failures=failures + row["errors"],
                   checked=f"sample of {len(samples)}, eth-account")
        return row

    return _pinned_child(body)


def make_scrypt_keyfiles(directory: str, count: int, password: str, processes: int) -> list[str]:
    """Write `count` standard-scrypt (n=2^18, r=8, p=1) V3 keyfiles, named like geth's; return addresses."""
    os.makedirs(directory, exist_ok=True)
    ctx = mp.get_context("fork")
    with ctx.Pool(processes) as pool:
        return pool.starmap(_one_keyfile, [(directory, password, i) for i in range(count)])


def _one_keyfile(directory: str, password: str, index: int) -> str:
    import json

    from eth_account import Account
    from eth_keyfile import create_keyfile_json

    account = Account.create()
    keyfile = create_keyfile_json(bytes(account.key), password.encode(), kdf="scrypt", iterations=1 << 18)
    name = f"UTC--2026-01-01T00-00-{index:02d}.000000000Z--{account.address[2:].lower()}"
    with open(os.path.join(directory, name), "w") as handle:
        json.dump(keyfile, handle)
    return account.address


def clef_style(keyfile_path: str, password: str, signatures: int = 2) -> dict[str, Any]:
    """Decrypt the keyfile for every signature, as clef does without a cached unlock."""

    def body() -> dict[str, Any]:
        import json

        from eth_account import Account
        from eth_keyfile import decode_keyfile_json

        keyfile = json.load(open(keyfile_path))
        tx = {"type": 2, "chainId": 1, "nonce": 0, "to": TO, "gas": GAS, "maxFeePerGas": MAX_FEE,
              "maxPriorityFeePerGas": PRIORITY_FEE, "value": VALUE, "data": b""}
        latencies = []
        start = time.perf_counter()
        for i in range(signatures):
            t0 = time.perf_counter()
            key = decode_keyfile_json(keyfile, password.encode())
            tx["nonce"] = i
            Account.sign_transaction(tx, key)
            latencies.append((time.perf_counter() - t0) * 1000.0)
        elapsed = time.perf_counter() - start
        return {"ops": signatures, "seconds": round(elapsed, 3), "rate": signatures / elapsed, **latency_summary(latencies)}

    return _pinned_child(body)
