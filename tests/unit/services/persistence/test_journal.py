"""The journal is the disaster copy: rotated by size, readable after a torn write, and
replayed by `rebuild` into an empty database with the very same rows."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from protocol.messages import Message
from protocol.store import KvSet
from services.persistence.journal import Journal, journal_files, read_journal
from services.persistence.models import DATA_MODELS
from services.persistence.rebuild import main as rebuild_main
from tests.support.persistence import (
    ask,
    created,
    edited,
    exchange,
    publish_and_wait,
    running_persistence,
    workload,
)


def test_journal_rotates_by_size_and_reads_back_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=2_000)
    for batch in range(10):
        journal.append("t", [{"n": batch * 10 + i, "pad": "é" * 20} for i in range(10)], 1.5)
    journal.close()
    files = journal_files(tmp_path)
    assert len(files) > 3 and files[0].name == "journal-000001.jsonl"
    assert all(f.stat().st_size <= 2_000 for f in files)
    records = list(read_journal(tmp_path))
    assert [r.body["n"] for r in records] == list(range(100))
    assert records[0].type == "t" and records[0].received_at == 1.5
    assert records[0].body["pad"] == "é" * 20

    reopened = Journal(tmp_path, max_bytes=2_000)  # a restart carries on in the last file
    reopened.append("t", [{"n": 100}], 2.0)
    reopened.close()
    assert journal_files(tmp_path) == files
    assert [r.body["n"] for r in read_journal(tmp_path)][-1] == 100


def test_a_torn_last_line_is_skipped_and_writing_resumes_on_a_fresh_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append("t", [{"n": 1}], 1.0)
    journal.close()
    with open(journal_files(tmp_path)[0], "ab") as f:
        f.write(b'{"type":"t","body":{"n":')  # the process died mid-write
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append("t", [{"n": 2}], 2.0)
    journal.close()
    assert [r.body["n"] for r in read_journal(tmp_path)] == [1, 2]


def all_rows(path: Path) -> dict[str, list[tuple]]:
    """Every data table, read with plain sqlite3."""
    with sqlite3.connect(path) as db:
        return {
            m._meta.table_name: sorted(db.execute(f"SELECT * FROM {m._meta.table_name}"))
            for m in DATA_MODELS
        }


@pytest.mark.anyio
async def test_rebuild_from_the_journal_yields_identical_rows(tmp_path: Path) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    events: list[Message] = workload()
    events += [created(1000 + i, "long " * 800) for i in range(10)]  # 4,000 characters
    events += [exchange("huge", 1.0, prompt_tokens=2**63)]  # a row no database takes
    async with running_persistence(live, {"journal_max_mb": 0.02}) as (_, client):
        await publish_and_wait(client, events)
        await publish_and_wait(client, events[:40])  # redelivered: journaled twice
        await publish_and_wait(client, [edited(1000, "edited later", 5000.0)])
        assert (await ask(client, KvSet("ns", "a", [1, "two"], only_if_absent=True))).stored
        assert not (await ask(client, KvSet("ns", "a", "lost", only_if_absent=True))).stored
        assert (await ask(client, KvSet("ns", "b", {"x": None}))).stored
    assert len(journal_files(live / "journal")) >= 3
    shutil.copytree(live / "journal", restored / "journal")

    assert rebuild_main(["--data-dir", str(restored)]) == 0
    expected = all_rows(live / "bot.sqlite3")
    assert all_rows(restored / "bot.sqlite3") == expected
    assert len(expected["messages"]) == 41 and expected["kv"] == [
        ("ns", "a", '[1,"two"]'),
        ("ns", "b", '{"x":null}'),
    ]
    assert rebuild_main(["--data-dir", str(restored)]) == 1  # refuses a database with data
