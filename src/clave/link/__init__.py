"""The link between sidecar and enclave: CBOR frames over vsock (Nitro) or a unix socket (local)."""
