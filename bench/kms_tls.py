"""What the enclave's own TLS session to KMS costs at bring-up: prepare (attestation), sign (SigV4 in the
sidecar), send (TLS handshake through the proxy, KMS answer, CMS open), and the whole restart-to-ready.

  python bench/kms_tls.py [--rounds 20]

Runs the in-process stack of tests/inproc.py (enclave, TLS KMS emulator, sidecar on one event loop); each
round restarts the enclave and times one `Decrypt` of the store's data key through `EnclaveKms`, split into
its parts, and then the sidecar's whole bring-up of the new boot. Set PYTHONPATH to `src` of the tree.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clave.dev.kmsemu.auth import credentials_path  # noqa: E402
from clave.sidecar.serve import enclave_kms  # noqa: E402
from clave.sidecar.signing.enclave_client import SLOW_TIMEOUT, EnclaveClient  # noqa: E402
from clave.sidecar.signing.signer import META_DATA_KEY  # noqa: E402
from tests.inproc import running_stack  # noqa: E402


def _row(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{name:<28} median {statistics.median(ms):7.2f} ms   max {ms[-1]:7.2f} ms   (n={len(ms)})"


async def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_stack(Path(tmp)) as stack:
            await stack.signer.new_accounts(100)
            wrapped = stack.store.get_meta(META_DATA_KEY)
            key_id = stack.signer.kms_key_id
            assert wrapped is not None and key_id is not None
            relay = enclave_kms(stack.config, stack.kms_endpoint, credentials_path(stack.root / "kms"))
            parts: dict[str, list[float]] = {"prepare": [], "sign (sidecar)": [], "send (TLS + KMS)": [], "total": []}
            ready: list[float] = []
            for _ in range(rounds):
                await stack.signer.stop()
                await stack.enclave.restart()
                client = EnclaveClient(stack.enclave.address)
                try:
                    t0 = time.perf_counter()
                    prepared = await client.call("kms_prepare", {"operation": "Decrypt", "key_id": key_id,
                                                                 "ciphertext_blob": wrapped, "endpoint": relay.endpoint},
                                                 timeout=SLOW_TIMEOUT)
                    t1 = time.perf_counter()
                    auth = await asyncio.to_thread(relay.sign, prepared)
                    t2 = time.perf_counter()
                    result = await client.call("kms_send", {"call_id": prepared["call_id"], "proxy": relay.proxy,
                                                            "auth": auth}, timeout=SLOW_TIMEOUT)
                    t3 = time.perf_counter()
                finally:
                    await client.close()
                assert "key_arn" in result, result
                for name, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                    parts[name].append(value)
                # The same through the sidecar: restart, then its watch attests, loads, verifies and unseals.
                await stack.enclave.restart()
                start = time.perf_counter()
                stack.signer.start_watch(0.01)
                service = stack.enclave.service
                assert service is not None
                while service.call("hello", {})["keys"] < 100:  # the new boot holds every key again
                    await asyncio.sleep(0.002)
                ready.append(time.perf_counter() - start)
            print(f"KMS Decrypt through the enclave's TLS session, in-process stack, {rounds} enclave restarts")
            for name, values in parts.items():
                print(_row(name, values))
            print(_row("restart to ready (100 keys)", ready))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
