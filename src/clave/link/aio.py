"""Which event loop runs the processes: uvloop when installed (measured faster on the signing path,
see docs/performance.md), the standard asyncio loop otherwise. Behaviour is identical either way."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    if os.environ.get("CLAVE_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
