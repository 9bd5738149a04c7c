"""The enclave image's entry point: `python -m clave.enclave --listen vsock://-1:5000` (hardware NSM)."""

from clave.enclave.runner import main

main()
