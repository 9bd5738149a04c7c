"""The EIP-712 type bomb: how long clave takes to refuse it, and what it does to a concurrent signature.

  python bench/typed_bomb.py [--types 1300] [--direct-only]

A star-shaped document: the primary type has one field per leaf type, each leaf type one uint256 field.
geth's encodeType walks the dependencies with list look-ups inside a recursion, cubic in the types; before
the limits a 1,000-type document (78 KB) took 12 s in clave and stalled every other caller meanwhile.

Prints:
  direct       `typed_data_preimage` on the bomb in this process (refusal time), and on the largest star
               under MAX_TYPES (the worst accepted document of this shape: encodeType is memoized)
  stack        the in-process stack of tests/inproc.py (enclave, KMS emulator, sidecar on one event loop):
               the bomb posted to the HTTP app as `account_signTypedData` while `eth_sign` calls run over
               IPC; the bomb's answer time and the signatures' latencies meanwhile, against a baseline

Set PYTHONPATH to `src` of the tree to measure (another checkout gives its own "before" figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bomb(types: int) -> dict[str, Any]:
    leaf_types = {f"T{i}": [{"name": "v", "type": "uint256"}] for i in range(types - 2)}
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}],
            "Bomb": [{"name": f"f{i}", "type": f"T{i}"} for i in range(types - 2)],
            **leaf_types,
        },
        "primaryType": "Bomb",
        "domain": {"name": "bomb"},
        "message": {f"f{i}": {"v": i} for i in range(types - 2)},
    }


def direct(types: int) -> None:
    from clave.core.errors import RequestError
    from clave.core.eth import typed_data

    limit = getattr(typed_data, "MAX_TYPES", None)
    sizes = [types] + ([limit] if limit else [])
    for n in sizes:
        document = bomb(n)
        started = time.perf_counter()
        try:
            typed_data.typed_data_preimage(document)
            outcome = "hashed"
        except RequestError as exc:
            outcome = f"refused: {exc.message}"
        elapsed = time.perf_counter() - started
        size = len(json.dumps(document))
        print(f"direct  {n:5d} types ({size / 1024:.0f} KB): {elapsed * 1000:9.1f} ms  {outcome}")


async def stack(types: int) -> None:
    from tests.inproc import running_stack

    with tempfile.TemporaryDirectory() as tmp:
        async with running_stack(Path(tmp) / "stack") as s:
            account = await s.rpc("account_new")

            failures: list[str] = []

            async def measure(during: Any) -> list[float]:
                # before the limits, signatures failed meanwhile: "enclave not ready" (its health check starved)
                latencies, failed = await s.sign_while(during, account)
                failures.extend(failed)
                return latencies

            baseline = await measure(lambda: asyncio.sleep(0.5))
            body = {"jsonrpc": "2.0", "id": 1, "method": "account_signTypedData", "params": [account, bomb(types)]}
            answer: dict[str, Any] = {}

            async def post_bomb() -> None:
                await asyncio.sleep(0.05)
                started = time.perf_counter()
                response = await s.http.post("/", json=body)
                answer["elapsed"] = time.perf_counter() - started
                answer["status"] = response.status
                answer["reply"] = await response.json()
                await asyncio.sleep(0.2)

            during = await measure(post_bomb)

    def summary(values: list[float]) -> str:
        ms = sorted(v * 1000 for v in values)
        return f"n={len(ms)} median {statistics.median(ms):.2f} ms, max {ms[-1]:.2f} ms"

    error = answer["reply"].get("error") or {}
    print(f"stack   bomb of {types} types over HTTP: {answer['elapsed'] * 1000:.1f} ms, HTTP {answer['status']}, "
          f"{error.get('code')} {error.get('message')!r}")
    print(f"stack   eth_sign over IPC, baseline:    {summary(baseline)}")
    print(f"stack   eth_sign over IPC, during bomb: {summary(during)}")
    if failures:
        print(f"stack   eth_sign failures during the bomb: {len(failures)}, first: {failures[0]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", type=int, default=1300)
    parser.add_argument("--direct-only", action="store_true")
    args = parser.parse_args()
    direct(args.types)
    if not args.direct_only:
        asyncio.run(stack(args.types))


if __name__ == "__main__":
    main()
