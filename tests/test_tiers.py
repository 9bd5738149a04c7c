"""The test tiers themselves (tests/conftest.py): the fast tier's guard refuses every way of starting a
process and puts everything back afterwards, and no test that uses a process-starting fixture is left in
the fast tier."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.process
import os
import subprocess

import pytest

from tests.conftest import PROCESS_FIXTURES, SpawnInFastTier, _no_spawning


async def test_the_guard_refuses_every_way_to_start_a_process() -> None:
    before = (subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start, os.system,
              asyncio.create_subprocess_exec)
    attempts: list[str] = []
    with _no_spawning(attempts):
        with pytest.raises(SpawnInFastTier):
            subprocess.run(["true"], check=False)
        with pytest.raises(SpawnInFastTier):
            subprocess.check_output(["echo", "x"])
        with pytest.raises(SpawnInFastTier):
            os.system("true")
        with pytest.raises(SpawnInFastTier):
            os.posix_spawn("/bin/true", ["true"], os.environ)
        with pytest.raises(SpawnInFastTier):
            multiprocessing.get_context("spawn").Process(target=int).start()
        with pytest.raises(SpawnInFastTier):
            await asyncio.create_subprocess_exec("true")
        with pytest.raises(SpawnInFastTier):
            await asyncio.create_subprocess_shell("true")
        with pytest.raises(SpawnInFastTier):
            await asyncio.get_running_loop().subprocess_exec(asyncio.SubprocessProtocol, "true")
    assert attempts[0] == "subprocess.Popen(['true'])" and attempts[2] == "os.system('true')"
    assert len(attempts) == 8
    after = (subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start, os.system,
             asyncio.create_subprocess_exec)
    assert after == before, "the guard restores what it replaced"


def test_no_process_fixture_is_left_in_the_fast_tier(request: pytest.FixtureRequest) -> None:
    collected = request.session.items
    assert any(item.nodeid.endswith("test_no_process_fixture_is_left_in_the_fast_tier") for item in collected)
    for item in collected:
        if item.get_closest_marker("slow") is None:
            used = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            assert not used, f"{item.nodeid} uses {sorted(used)} but is not marked slow"
            assert item.get_closest_marker("clients") is None, f"{item.nodeid} needs anvil/cast but is not slow"
