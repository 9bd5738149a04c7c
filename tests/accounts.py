"""Creating an account in a test: `account_new` over the IPC socket.

Over HTTP, `account_new` needs a bearer token (`--http.auth-token-file`); without one it is refused
(README "Accounts", tests/test_hardening.py), so tests that merely need an account make it over IPC,
the way `clave account new` does.
"""

from __future__ import annotations

from clave.sidecar.transports.ipc_client import IpcClient
from tests.stack import ClaveProcess


def new_account(clave: ClaveProcess) -> str:
    with IpcClient(clave.ipc, timeout=60) as client:
        return str(client.call("account_new"))

# A KMS key ARN of the shape KMS answers with, for unit tests that give an EnclaveService its master key
# directly (as `kms_send` does with KMS's answer) instead of running the KMS exchange.
TEST_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001"
