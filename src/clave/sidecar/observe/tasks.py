"""Background tasks that are never silently gone.

A bare `asyncio.create_task(loop())` whose loop raises something unexpected just ends: the exception sits
in the task until it is garbage collected, nothing is logged, and whatever the loop kept up (the enclave
watch, the account catch-up, a child's output drain) stops for good. `supervised` runs such a loop, logs
its traceback when it dies, counts the restart and starts it again, with a growing pause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("clave.tasks")

FIRST_DELAY = 1.0
MAX_DELAY = 30.0


async def supervised(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    restarted: Callable[[str], None] | None = None,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
    logger: logging.Logger = log,
) -> None:
    """Run `run()` until it returns; whenever it raises, log it, call `restarted(name)` and run it again.

    Cancellation passes through (that is how owners stop their tasks). The pause before a restart doubles
    up to `max_delay`, and starts again from `first_delay` once a run has lasted longer than `max_delay`."""
    delay = first_delay
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if time.monotonic() - started > max_delay:
                delay = first_delay
            logger.exception("background task %s died; restarting it in %.1f s", name, delay)
            if restarted is not None:
                try:
                    restarted(name)
                except Exception:  # a broken counter must not take the restart with it
                    logger.exception("counting the restart of %s failed", name)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


def start_supervised(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    restarted: Callable[[str], None] | None = None,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
) -> asyncio.Task[None]:
    """`supervised(...)` as a task of its own, named `clave:<name>`."""
    runner = supervised(name, run, restarted=restarted, first_delay=first_delay, max_delay=max_delay)
    return asyncio.create_task(runner, name=f"clave:{name}")
