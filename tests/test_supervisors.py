"""The supervisor of both services on real asyncio tasks: what counts as a death.

The processes are tested end to end (tests/agent/test_supervision.py, tests/registry/
test_serve_supervision.py); these cover the cases a process cannot be pushed into from outside:
a task that returns, a second death, an error while stopping, a task watched by a component.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

import pytest

from edge_common import supervise
from edge_common.supervise import Supervisor

SUPERVISORS = [
    pytest.param(functools.partial(Supervisor, "the agent"), id="agent"),
    pytest.param(functools.partial(Supervisor, "the registry"), id="registry"),
]


async def forever() -> None:
    await asyncio.Event().wait()


async def boom(message: str = "boom") -> None:
    await asyncio.sleep(0)
    raise OSError(message)


async def returns() -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("supervisor_class", SUPERVISORS)
async def test_an_exception_is_a_death_logged_once_with_its_traceback(
    supervisor_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = supervisor_class()
    supervisor.spawn(forever(), "steady")
    supervisor.spawn(boom(), "fragile")

    await asyncio.wait_for(supervisor.failed.wait(), timeout=10)
    await supervisor.stop()

    assert supervisor.failure.task == "fragile"
    assert supervisor.failure.describe() == "task 'fragile' died: OSError: boom"
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert critical[0].getMessage().endswith(f"{supervisor.process} stops and exits 1")
    assert critical[0].exc_info is not None
    assert critical[0].exc_info[1] is supervisor.failure.error


@pytest.mark.parametrize("supervisor_class", SUPERVISORS)
async def test_returning_is_a_death_for_a_task_meant_to_run_forever(supervisor_class: Any) -> None:
    supervisor = supervisor_class()
    supervisor.spawn(returns(), "quitter")

    await asyncio.wait_for(supervisor.failed.wait(), timeout=10)

    assert supervisor.failure.describe() == "task 'quitter' stopped unexpectedly"


@pytest.mark.parametrize("supervisor_class", SUPERVISORS)
async def test_only_the_first_death_is_the_failure(
    supervisor_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = supervisor_class()
    supervisor.spawn(boom("first"), "one")
    await asyncio.wait_for(supervisor.failed.wait(), timeout=10)
    second = supervisor.spawn(boom("second"), "two")
    with contextlib.suppress(OSError):
        await second  # the supervisor's callback, added first, has run by now
    await supervisor.stop()

    assert supervisor.failure.task == "one"
    assert "task 'two' died: OSError: second (after an earlier failure)" in caplog.text
    assert len([r for r in caplog.records if r.levelno == logging.CRITICAL]) == 1


@pytest.mark.parametrize("supervisor_class", SUPERVISORS)
async def test_cancelling_and_stopping_are_not_deaths(
    supervisor_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def fails_when_cancelled() -> None:
        try:
            await forever()
        finally:
            raise OSError("while unwinding")

    supervisor = supervisor_class()
    supervisor.spawn(forever(), "steady")
    supervisor.spawn(fails_when_cancelled(), "clumsy")
    await asyncio.sleep(0)

    await supervisor.stop()

    assert supervisor.failure is None
    assert not supervisor.failed.is_set()
    assert "task 'clumsy' failed while stopping" in caplog.text


async def test_a_watched_task_reports_to_the_installed_supervisor() -> None:
    supervisor = supervise.Supervisor()
    supervisor.install()
    short_lived = asyncio.create_task(returns(), name="update")
    supervise.watch(short_lived)  # returning is fine for it
    await short_lived
    assert not supervisor.failed.is_set()

    dispatcher = asyncio.create_task(boom("queue broke"), name="batcher-m")
    supervise.watch(dispatcher, long_lived=True)
    await asyncio.wait_for(supervisor.failed.wait(), timeout=10)
    await supervisor.stop()

    assert supervisor.failure is not None
    assert supervisor.failure.describe() == "task 'batcher-m' died: OSError: queue broke"


async def test_without_a_supervisor_a_watched_death_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = asyncio.create_task(boom("alone"), name="orphan")
    supervise.watch(task)
    with pytest.raises(OSError, match="alone"):
        await task  # the watch callback, added first, has run by now

    assert "task 'orphan' died: alone" in caplog.text
