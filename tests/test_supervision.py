"""Background work that dies is restarted and logged, never silently gone: the supervised tasks (the
signer's enclave watch and store follower, the HTTP worker supervisors, `clave up`'s child output drains)
and the log writer thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from clave.sidecar.observe import logs
from clave.sidecar.observe.tasks import supervised
from clave.sidecar.signing.signer import Signer


def test_a_task_that_dies_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    restarts: list[str] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise KeyError(f"boom {len(runs)}")

    caplog.set_level(logging.ERROR, logger="clave.tasks")
    asyncio.run(supervised("flaky", flaky, restarted=restarts.append, first_delay=0.01, max_delay=0.02))
    assert len(runs) == 3 and restarts == ["flaky", "flaky"]
    died = [r for r in caplog.records if "background task flaky died" in r.getMessage()]
    assert len(died) == 2 and died[0].exc_info is not None and "boom 1" in str(died[0].exc_info[1])


def test_cancelling_a_supervised_task_stops_it() -> None:
    async def main() -> None:
        task = asyncio.create_task(supervised("forever", lambda: asyncio.sleep(3600)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_the_signers_watch_is_restarted_when_it_dies() -> None:
    signer = Signer(None, None, None, None, kms_key_id=None)  # type: ignore[arg-type]
    counted: list[str] = []
    signer.on_task_restart = counted.append
    calls: list[float] = []

    async def watch(interval: float = 1.0) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("a bug in the watch")
        await asyncio.sleep(3600)

    async def follow_store(interval: float) -> None:
        await asyncio.sleep(3600)

    signer.watch = watch  # type: ignore[method-assign]
    signer.follow_store = follow_store  # type: ignore[method-assign]

    async def main() -> None:
        signer.start_watch()
        deadline = time.monotonic() + 5
        while len(calls) < 2:
            assert time.monotonic() < deadline, "the watch was not restarted"
            await asyncio.sleep(0.05)
        await signer.stop()

    asyncio.run(main())
    assert signer.status.task_restarts == {"enclave-watch": 1} and counted == ["enclave-watch"]


class _Fatal:
    def __str__(self) -> str:
        raise SystemExit("not an Exception: the writer thread cannot catch it")


def test_the_log_writer_survives_bad_records_and_is_restarted(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    hook = threading.excepthook
    threading.excepthook = lambda args: None  # the thread's death is the point here
    try:
        logs.setup_logging(False)
        handler = root.handlers[0]
        writer = handler.writer  # type: ignore[attr-defined]
        log = logging.getLogger("clave.test")
        log.error("%d apples", "not a number")  # a record that cannot be formatted
        log.error("after the bad record")
        _wait_for(capsys, "after the bad record")

        first = writer.writer
        log.error("fatal %s", _Fatal())
        first.join(5)
        assert not first.is_alive()  # the writer thread is dead
        log.error("after the writer died")
        text = _wait_for(capsys, "after the writer died")
        assert writer.writer is not first and writer.restarts == 1
        assert "the log writer thread died; restarted it (restart 1)" in text
        writer.stop()
    finally:
        threading.excepthook = hook
        root.handlers[:], level = saved
        root.setLevel(level)


def _wait_for(capsys: pytest.CaptureFixture[str], text: str) -> str:
    seen = ""
    deadline = time.monotonic() + 5
    while text not in seen:
        assert time.monotonic() < deadline, f"{text!r} not logged; got {seen!r}"
        time.sleep(0.05)
        seen += capsys.readouterr().err
    if "could not be formatted" not in seen and text == "after the bad record":
        raise AssertionError(f"the bad record left no trace: {seen!r}")
    return seen
