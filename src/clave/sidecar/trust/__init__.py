"""What the sidecar trusts and how it checks: attestation documents, KMS with Recipient."""
