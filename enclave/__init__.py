"""clave's enclave: everything that touches plaintext keys or decides what gets signed.

Nothing here imports `sidecar`. The core (encoding, keys, sealing, dispatch) is I/O-free; sockets and
/dev/nsm sit at the edges (`transport`, `server`, `nitro.nsm`).
"""

__version__ = "0.1.0"
