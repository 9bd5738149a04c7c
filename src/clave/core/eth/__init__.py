"""Pure encoders: requests in, signable bytes out. No keys, no I/O.

Every encoder returns the *preimage* whose keccak256 gets signed; `enclave.signing` hashes and signs it.
The enclave never signs a digest handed to it by the parent.

The normalized transaction the transaction encoders take is `clave.core.shapes.NormalizedTx`.
"""
