"""Custody policy: a declarative document (`schema`) evaluated on what the enclave is about to sign
(`engine`), and the EIP-712 messages by which admins change it (`authority`). Pure: no I/O, time injected."""
