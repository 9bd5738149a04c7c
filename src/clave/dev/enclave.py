"""The enclave service with the software NSM, for local runs and CI:
`python -m clave.dev.enclave --listen unix:PATH --nsm-state DIR --kms-ca FILE`. The same service code as the
image; only the NSM and the CA it trusts for KMS differ (the KMS emulator's dev CA, which no image trusts),
and this module never enters the image."""

from __future__ import annotations

import argparse
from pathlib import Path

from clave.dev.soft_nsm import SoftwareNsm
from clave.enclave.kms_tls import dev_transport
from clave.enclave.runner import harden, serve, setup_logging
from clave.link import aio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clave-enclave-local")
    parser.add_argument("--listen", required=True, help="unix:PATH (or vsock://CID:PORT)")
    parser.add_argument("--nsm-state", required=True, help="state directory of the software NSM")
    parser.add_argument("--kms-ca", required=True, type=Path, help="the KMS emulator's dev CA (PEM): the only CA trusted for KMS")
    args = parser.parse_args(argv)
    harden()  # before the software NSM loads its signing key, and before any account key exists
    setup_logging()
    transport = dev_transport(args.kms_ca.read_bytes())  # read once at start: a later change of the file does nothing
    aio.run(serve(args.listen, SoftwareNsm(Path(args.nsm_state)), transport))


if __name__ == "__main__":
    main()
