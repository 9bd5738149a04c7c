"""The JSON-RPC surface: dispatch, clef `account_*`, node-style `eth_*`, operator `clave_*`."""
