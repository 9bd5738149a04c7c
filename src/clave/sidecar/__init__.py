"""clave sidecar: JSON-RPC front end, sealed key store, KMS and attestation on the parent host."""
