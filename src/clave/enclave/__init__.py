"""What runs inside the enclave image: everything that touches plaintext keys or decides what gets signed.

Imports only `clave.core` and `clave.link`. The service, keys and sealing are I/O-free; sockets and
/dev/nsm sit at the edges (`clave.link.sockets`, `server`, `nitro.nsm`).
"""
