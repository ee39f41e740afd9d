"""The outbox's group commit under cancellation."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from protocol.outbox import Outbox

pytestmark = pytest.mark.anyio


async def test_a_cancelled_committer_still_commits_for_the_callers_that_joined_it(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    real = outbox._append_all

    def slow_disk(batches: list[tuple[str, list[bytes]]]) -> list[int]:
        time.sleep(0.1)
        return real(batches)

    outbox._append_all = slow_disk  # type: ignore[method-assign]
    result: dict[str, int] = {}

    async def committer() -> None:
        with anyio.move_on_after(0.02):  # e.g. shutdown cancels this publisher
            await outbox.append("persistence", [b"a"])

    async def joiner() -> None:
        await anyio.sleep(0.01)
        result["llm"] = await outbox.append("llm", [b"b"])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(committer)
            tg.start_soon(joiner)
    assert result == {"llm": 1}
    assert await outbox.state("llm") == (1, 0)
    assert await outbox.state("persistence") == (1, 0)  # shielded: committed all the same
    outbox.close()
