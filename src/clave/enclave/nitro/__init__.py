"""Nitro-specific edges: /dev/nsm, the software NSM, and the KMS CMS envelope."""
