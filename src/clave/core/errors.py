"""The two error families of clave. Everything clave raises on purpose derives from `ClaveError`.

`RequestError`: the request is bad (malformed, refused by policy, unknown account). It reaches the caller
as a JSON-RPC error with `code` and `message`, verbatim, and retrying the same request will not help.

`InfraError`: something the service depends on failed (enclave down, KMS unreachable, store I/O, a
configuration the operator must fix). It is logged, surfaces as a retryable -32000 / HTTP 503, never
carries key material in its message, and its `remedy` tells an operator what to do about it.

Only the command line (`clave.cli.main`) prints errors and exits; everything else raises one of these.
"""

from __future__ import annotations

# JSON-RPC codes, as go-ethereum's rpc package uses them.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # plain Go error: what clef returns for every refusal


class ClaveError(Exception):
    """Root of clave's own errors."""

    code: int = SERVER_ERROR
    data: object = None  # JSON-RPC error `data` (a policy denial names its rule there), never a secret

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RequestError(ClaveError):
    """The request is bad; tell the caller exactly why (the message is returned verbatim)."""


class InvalidParams(RequestError):
    code = INVALID_PARAMS


class MethodNotFound(RequestError):
    """go-ethereum's rpc `methodNotFoundError`, the one text for an unknown (or hidden) method."""

    code = METHOD_NOT_FOUND

    def __init__(self, method: str) -> None:
        super().__init__(f"the method {method} does not exist/is not available")
        self.method = method


class UnknownAccount(RequestError):
    def __init__(self) -> None:
        super().__init__("unknown account")


class InfraError(ClaveError):
    """A dependency failed; retryable. `remedy` tells an operator what to do.

    Subclasses may set a class-level `remedy`; one passed to the constructor wins over it.
    """

    remedy: str = ""

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        if remedy:
            self.remedy = remedy


class ConfigError(InfraError):
    """The service cannot run as configured (a missing or unreadable file, a path already taken): nothing
    will change until the operator acts, so `remedy` says what to change."""
