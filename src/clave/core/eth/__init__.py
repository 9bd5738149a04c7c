"""Pure encoders: requests in, signable bytes out. No keys, no I/O.

Every encoder returns the *preimage* whose keccak256 gets signed; `enclave.signing` hashes and signs it.
The enclave never signs a digest handed to it by the parent.

Normalized transaction (the `tx` dict the sidecar sends and the enclave encodes). All integers are Python
ints, byte strings are `bytes`. Keys that do not apply to a type are absent or None:

    type                  int 0..4
    chainId               int   (always present; legacy transactions are always EIP-155 protected)
    nonce, gas, value     int
    gasPrice              int          types 0, 1
    maxPriorityFeePerGas  int          types 2, 3, 4
    maxFeePerGas          int          types 2, 3, 4
    maxFeePerBlobGas      int          type 3
    to                    bytes(20) | None (None = contract creation; types 3 and 4 require it)
    data                  bytes
    accessList            list[tuple[bytes(20), list[bytes(32)]]]   types 1..4 (empty list allowed)
    blobVersionedHashes   list[bytes(32)]                           type 3 (non-empty)
    authorizationList     list[dict(chainId:int, address:bytes(20), nonce:int, yParity:int, r:int, s:int)]
                                                                    type 4 (non-empty)
"""
