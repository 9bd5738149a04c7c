"""The signer: the sidecar's view of the enclave (accounts, unsealing, calls) and its frame client."""
