"""The outbox's group commit under cancellation."""

from __future__ import annotations

import sqlite3
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

    def slow_disk(batches: list[tuple[str, list[bytes]]], meta: dict | None = None) -> list[int]:
        time.sleep(0.1)
        return real(batches, meta)

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


async def test_meta_is_written_in_the_same_transaction_as_the_events(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    await outbox.append_many({"p": [b"x"]}, {"gateway.position": "s1:7"})
    assert await outbox.get_meta("gateway.position") == "s1:7"
    # Make the next event's insert fail inside the transaction (its key is taken):
    outbox._db.execute("INSERT INTO event VALUES ('p', 2, x'00')")
    with pytest.raises(sqlite3.IntegrityError):
        await outbox.append_many({"p": [b"y"]}, {"gateway.position": "s1:8"})
    assert await outbox.get_meta("gateway.position") == "s1:7"
    outbox.close()
