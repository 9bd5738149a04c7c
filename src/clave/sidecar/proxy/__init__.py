"""Proxy mode (`--downstream URL`): clave answers the signing methods and forwards every other method to
a node, and sends transactions through it (`eth_sendTransaction`): fill, sign in the enclave, broadcast."""
