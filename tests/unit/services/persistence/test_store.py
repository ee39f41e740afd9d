"""The persistence store against SQLite and, when its server binaries are installed, a
throwaway PostgreSQL cluster: idempotent upserts, out-of-order events, odd input, bad
rows, lost connections, and every query of protocol/store.py."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.discord import (
    MessageCreated,
    MessageDeleted,
    MessageEdited,
)
from protocol.messages import Message
from protocol.store import Counts, KvSet, LlmExchange, StoreCounts, Usage
from services.persistence.models import DATA_MODELS, StoredMessage, bind_models
from services.persistence.store import DatabaseUnavailable, Store, describe_url, open_database
from tests.support.persistence import (
    ODD_TEXTS,
    C,
    G,
    ask,
    created,
    deleted,
    edited,
    exchange,
    publish_and_wait,
    running_persistence,
    workload,
)
from tests.support.postgres import PostgresCluster


def apply_grouped(store: Store, events: list[Message], batch: int = 500) -> None:
    """Apply consecutive events of one type together, as the runtime batches them."""
    group: list[Message] = []
    for event in [*events, None]:
        if group and (event is None or event.TYPE != group[0].TYPE or len(group) >= batch):
            store.apply(group[0].TYPE, group)
            group = []
        if event is not None:
            group.append(event)


def snapshot(store: Store) -> dict[str, list[tuple]]:
    """Every data row, sorted the same way on every backend (collations differ)."""
    bind_models(store.db)  # models follow the last database bound: this one, now
    return {
        model._meta.table_name: sorted(model.select().tuples(), key=lambda r: tuple(map(str, r)))
        for model in DATA_MODELS
    }


# --- a throwaway PostgreSQL cluster ---------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A cluster in a temp dir on a free port (as the postgres user when we are root)."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A URL to a fresh, empty schema (much faster to make than a database)."""
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{name}" CASCADE')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_database")
    s = Store(open_database(url, tmp_path / "bot.sqlite3"))
    s.open()
    try:
        yield s
    finally:
        s.close()


# --- writes -------------------------------------------------------------------------------


def test_created_edited_deleted_messages_land_with_their_columns(store: Store) -> None:
    store.apply(MessageCreated.TYPE, [created(1, "hello", reply_to_id="0", mentions=["8"])])
    store.apply(MessageEdited.TYPE, [edited(1, "hello, edited", 5.0)])
    store.apply(MessageDeleted.TYPE, [deleted(1, 6.0)])
    rows = snapshot(store)
    (msg,) = rows["messages"]
    columns = [f.name for f in StoredMessage._meta.sorted_fields]
    row = dict(zip(columns, msg, strict=True))
    assert {k: row[k] for k in ("id", "channel_id", "guild_id", "author_id", "content")} == {
        "id": "1",
        "channel_id": C,
        "guild_id": G,
        "author_id": "7",
        "content": "hello, edited",
    }
    assert row["original_content"] == "hello"
    assert (row["created_at"], row["edited_at"], row["deleted_at"]) == (1.0, 5.0, 6.0)
    assert bool(row["deleted"]) and row["reply_to_id"] == "0" and row["mentions"] == '["8"]'
    assert rows["message_edits"] == [("1", 5.0, "hello, edited")]
    assert rows["users"] == [("7", "alice", False, 1.0)]
    assert rows["channels"] == [(C, G, "general", False, 1.0)]
    assert rows["guilds"] == [(G, 1.0)]


def test_redelivered_batches_change_nothing(store: Store) -> None:
    events = workload()
    apply_grouped(store, events)
    first = snapshot(store)
    apply_grouped(store, events)
    apply_grouped(store, events[::7])
    assert snapshot(store) == first
    assert store.counts().messages == 31  # 1..29, 40, 50


def test_batching_never_changes_the_rows(store: Store, tmp_path: Path) -> None:
    events = workload()
    apply_grouped(store, events)
    one_by_one = Store(open_database(None, tmp_path / "one-by-one.sqlite3"))
    one_by_one.open()
    try:
        apply_grouped(one_by_one, events, batch=1)
        assert snapshot(one_by_one) == snapshot(store)
    finally:
        one_by_one.close()
        bind_models(store.db)


def test_edit_or_delete_before_create_keeps_what_arrived_first(store: Store) -> None:
    store.apply(MessageEdited.TYPE, [edited(1, "edited first", 5.0)])
    store.apply(MessageDeleted.TYPE, [deleted(2, 6.0)])
    assert store.recent_messages(C) == []  # not created yet: not a message to show
    store.apply(MessageCreated.TYPE, [created(1, "original"), created(2, "gone")])
    (one,) = store.recent_messages(C)
    assert (one["content"], one["edited_at"], one["author_id"]) == ("edited first", 5.0, "7")
    by_id = {r[0]: r for r in snapshot(store)["messages"]}
    assert by_id["1"][7] == "original"  # original_content: the create's text is kept
    assert by_id["2"][6] == "gone" and bool(by_id["2"][10])  # content filled, still deleted


# --- bad and odd input ----------------------------------------------------------------------


def test_odd_text_is_stored_faithfully(store: Store) -> None:
    events = [created(i + 1, text) for i, text in enumerate(ODD_TEXTS)]
    store.apply(MessageCreated.TYPE, events)
    got = [m["content"] for m in store.recent_messages(C)]
    expected = ODD_TEXTS if store.is_sqlite else [t.replace("\x00", "\ufffd") for t in ODD_TEXTS]
    assert got == expected


def test_a_batch_with_a_bad_row_stores_the_others(store: Store) -> None:
    too_big = exchange("huge", 5.0, prompt_tokens=2**63)  # no SQL integer holds it
    result = store.apply(
        LlmExchange.TYPE,
        [exchange("a", 1.0), too_big, exchange("b", 2.0, latency=math.nan), exchange("c", 3.0)],
    )
    assert (result.stored, result.skipped) == (2, 2)
    assert [r[0] for r in snapshot(store)["llm_exchanges"]] == ["a", "c"]
    result = store.apply(MessageCreated.TYPE, [created(1), created(2, at=math.inf), created(3)])
    assert (result.stored, result.skipped) == (2, 1)


def test_a_dm_without_guild_is_stored(store: Store) -> None:
    dm = created(1, "psst", guild_id=None, channel_id="300", is_dm=True, channel_name=None)
    store.apply(MessageCreated.TYPE, [dm])
    (msg,) = store.recent_messages("300")
    assert msg["guild_id"] is None and msg["content"] == "psst"
    assert snapshot(store)["guilds"] == []


# --- queries --------------------------------------------------------------------------------


def test_recent_messages_are_the_newest_returned_oldest_first(store: Store) -> None:
    store.apply(MessageCreated.TYPE, [created(i) for i in range(1, 21)])
    store.apply(MessageCreated.TYPE, [created(99, channel_id="other")])
    store.apply(MessageDeleted.TYPE, [deleted(19, 50.0)])
    ids = lambda msgs: [int(m["id"]) for m in msgs]  # noqa: E731
    assert ids(store.recent_messages(C, limit=3)) == [17, 18, 20]
    assert ids(store.recent_messages(C, limit=3, before_id="17")) == [14, 15, 16]
    assert ids(store.recent_messages(C, after_ts=16.0)) == [17, 18, 20]
    assert ids(store.recent_messages(C, limit=2, before_id="10", after_ts=6.5)) == [8, 9]
    assert len(store.recent_messages(C, limit=1000)) == 19
    assert store.recent_messages(C, limit=0) == []
    first = store.recent_messages(C, limit=1)[0]
    assert set(first) == {
        "id", "channel_id", "guild_id", "author_id", "author_name", "author_bot", "content",
        "created_at", "edited_at", "deleted", "reply_to_id",
    }  # fmt: skip


def test_reply_chain_follows_replies_oldest_first_up_to_limit(store: Store) -> None:
    chain = [created(1)] + [created(i, reply_to_id=str(i - 1)) for i in range(2, 8)]
    loop = [created(20, reply_to_id="21"), created(21, reply_to_id="20")]
    store.apply(MessageCreated.TYPE, [*chain, *loop, created(30, reply_to_id="999")])
    store.apply(MessageDeleted.TYPE, [deleted(3, 9.0)])
    full = store.reply_chain("7")
    assert [m["id"] for m in full] == ["1", "2", "3", "4", "5", "6", "7"]
    assert full[2]["deleted"] is True
    assert [m["id"] for m in store.reply_chain("7", limit=3)] == ["5", "6", "7"]
    assert [m["id"] for m in store.reply_chain("21")] == ["20", "21"]  # a cycle ends
    assert [m["id"] for m in store.reply_chain("30")] == ["30"]  # unknown parent
    assert store.reply_chain("404") == []


def test_newest_message_of_each_channel_compares_ids_as_numbers_and_honours_bounds(
    store: Store,
) -> None:
    store.apply(MessageCreated.TYPE, [created(i) for i in (9, 10, 11, 100)])  # "9" > "100"
    store.apply(MessageCreated.TYPE, [created(5, channel_id="quiet", channel_name="quiet")])
    dm = created(7, guild_id=None, channel_id="300", is_dm=True, channel_name=None)
    store.apply(MessageCreated.TYPE, [dm])
    store.apply(MessageDeleted.TYPE, [deleted(100, 200.0)])  # deleted: its create was seen
    store.apply(MessageEdited.TYPE, [edited(500, "edit only", 300.0)])  # no create: not stored
    answer = store.newest_messages({})
    assert answer.newest == {C: "100", "quiet": "5", "300": "7"}
    assert answer.dm_channels == ["300"]
    bounded = store.newest_messages({C: "100", "quiet": "5", "unknown": "1"})
    assert bounded.newest == {C: "11", "300": "7"}  # nothing in "quiet" below 5


def test_member_events_in_a_time_range(store: Store) -> None:
    apply_grouped(store, workload())
    answer = store.member_events(G, 11.0, 30.0)
    assert answer.truncated is False
    assert answer.events == [
        {"kind": "joined", "user_id": "9", "username": "carol", "bot": True, "at": 11.0},
        {"kind": "left", "user_id": "8", "username": "bob", "bot": False, "at": 20.0},
        {"kind": "banned", "user_id": "8", "username": "bob", "bot": False, "at": 21.0},
        {"kind": "unbanned", "user_id": "8", "username": "bob", "bot": False, "at": 30.0},
    ]
    assert store.member_events("other guild", 0, 100).events == []
    members = snapshot(store)["members"]
    assert members == [(G, "8", "joined", 31.0, 31.0), (G, "9", "joined", 11.0, 11.0)]


def test_counts_cover_every_table_and_the_database_size(store: Store) -> None:
    apply_grouped(store, workload())
    counts = store.counts()
    assert dataclasses.replace(counts, db_bytes=None) == Counts(
        messages=31, deleted=3, edits=10, users=3, member_events=6, exchanges=10, db_bytes=None
    )
    assert isinstance(counts.db_bytes, int) and counts.db_bytes > 0


def test_kv_claim_is_atomic_and_plain_set_overwrites(store: Store) -> None:
    assert store.kv_get("ns", "k") is None
    assert store.kv_set(KvSet("ns", "k", {"owner": "a", "n": [1, 2]}, only_if_absent=True))
    assert not store.kv_set(KvSet("ns", "k", {"owner": "b"}, only_if_absent=True))
    assert store.kv_get("ns", "k") == {"owner": "a", "n": [1, 2]}
    assert store.kv_set(KvSet("ns", "k", "replaced\x00"))
    assert store.kv_get("ns", "k") == "replaced\x00"  # JSON escapes NUL: safe everywhere
    assert store.kv_set(KvSet("other", "k", 3, only_if_absent=True))
    assert store.kv_get("other", "k") == 3


def test_usage_totals_by_outcome_and_median_latency(store: Store) -> None:
    store.apply(
        LlmExchange.TYPE,
        [
            exchange(f"x{i}", 100.0 + i, latency=float(i), provider=provider)
            for i, provider in enumerate(["primary", "backup", "primary", "primary"], start=1)
        ]
        + [exchange("err", 105.0, latency=50.0, outcome="error", prompt_tokens=3)]
        + [exchange("old", 1.0), exchange("elsewhere", 106.0, guild_id="5")],
    )
    usage = store.usage(since=100.0, guild_id=G)
    assert usage == Usage(
        exchanges=5,
        prompt_tokens=43,
        completion_tokens=25,
        by_outcome={"ok": 4, "error": 1},
        latency_p50_ms=3.0,
        by_provider={"primary": 3, "backup": 1},  # "error": no provider answered
    )
    assert store.usage(since=100.0).latency_p50_ms == 3.5  # six: the mean of the middle two
    assert store.usage(since=1e12).latency_p50_ms is None


def test_a_version_1_database_gains_the_provider_column_and_keeps_its_exchanges(
    store: Store,
) -> None:
    store.apply(LlmExchange.TYPE, [exchange("before", 100.0)])
    # Back to what version 1 made: no provider column, schema_version 1.
    store.db.execute_sql("ALTER TABLE llm_exchanges DROP COLUMN provider")
    store.db.execute_sql("DELETE FROM schema_version")
    store.db.execute_sql("INSERT INTO schema_version (version, applied_at) VALUES (1, 0)")
    store.close()
    assert store.open() == (1, 2)
    store.apply(LlmExchange.TYPE, [exchange("after", 101.0, provider="backup")])
    usage = store.usage(since=0)
    assert (usage.exchanges, usage.by_provider) == (2, {"backup": 1})  # NULL: not counted
    assert store.open() == (2, 2)


# --- an unavailable database ---------------------------------------------------------------


def test_a_locked_sqlite_database_is_unavailable_then_usable(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    s = Store(open_database(None, path, busy_timeout_ms=50))
    s.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DatabaseUnavailable, match="locked"):
            s.apply(MessageCreated.TYPE, [created(1)])
        blocker.execute("ROLLBACK")
        assert s.apply(MessageCreated.TYPE, [created(1)]).stored == 1
    finally:
        blocker.close()
        s.close()


def test_a_full_sqlite_database_is_unavailable_not_bad_rows_then_usable(tmp_path: Path) -> None:
    s = Store(open_database(None, tmp_path / "bot.sqlite3"))
    s.open()
    try:
        s.limit_pages(int(s.db.execute_sql("PRAGMA page_count").fetchone()[0]) + 2)
        batch = [created(i, "x" * 2000) for i in range(1, 40)]
        # SQLite rolls a full transaction back itself: the error we see is the ROLLBACK's.
        with pytest.raises(DatabaseUnavailable, match="database or disk is full"):
            s.apply(MessageCreated.TYPE, batch)
        assert s.counts().messages == 0  # nothing half-stored, nothing skipped
        s.limit_pages(None)  # room again
        assert s.apply(MessageCreated.TYPE, batch).stored == len(batch)
        assert s.counts().messages == len(batch)
    finally:
        s.close()


def test_a_lost_postgresql_connection_is_unavailable_then_reconnects(pg_database: str) -> None:
    import psycopg2

    s = Store(open_database(pg_database, Path("/nonexistent")))
    s.open()
    try:
        s.apply(MessageCreated.TYPE, [created(1)])
        pid = s.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg2.connect(pg_database) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailable):
            s.apply(MessageCreated.TYPE, [created(2)])
        assert s.apply(MessageCreated.TYPE, [created(2)]).stored == 1  # a new connection
        assert s.counts().messages == 2
    finally:
        s.close()


def test_database_urls_are_logged_without_credentials() -> None:
    url = "postgresql://bot:s3cret@db.internal:5433/bot"
    assert describe_url(url) == "postgresql://db.internal:5433"
    assert "s3cret" not in describe_url(url)


@pytest.mark.anyio
async def test_the_service_stores_into_postgresql_and_the_journal_rebuilds_the_same_rows(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.persistence.rebuild import rebuild

    monkeypatch.setenv("DATABASE_URL", pg_database)
    async with running_persistence(tmp_path) as (_, client):
        await publish_and_wait(client, workload())
        counts = await ask(client, StoreCounts())
        assert (counts.messages, counts.member_events) == (31, 6)
        assert not (tmp_path / "bot.sqlite3").exists()
    live = Store(open_database(pg_database, Path("/nonexistent")))
    expected = snapshot(live)
    live.close()
    report = rebuild(tmp_path, None)  # the journal, into SQLite this time
    assert (report.events, report.skipped) == (len(workload()), 0)
    restored = Store(open_database(None, tmp_path / "bot.sqlite3"))
    try:
        assert snapshot(restored) == expected
    finally:
        restored.close()
