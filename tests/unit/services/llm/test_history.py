"""The llm service's own view of recent conversations."""

from __future__ import annotations

from protocol.discord import MessageCreated
from services.llm.history import History


def created(
    mid: str, channel: str = "c", reply_to: str | None = None, content: str = "hi"
) -> MessageCreated:
    return MessageCreated(
        id=mid,
        channel_id=channel,
        guild_id="g",
        author_id="u",
        author_name="alice",
        author_bot=False,
        content=content,
        created_at=float(mid),
        reply_to_id=reply_to,
    )


def test_a_channel_is_served_only_after_it_was_seeded_from_the_store() -> None:
    h = History()
    h.seen(created("3"))
    assert h.recent("c", 10) is None  # after a restart the store must be asked once
    h.seed(
        "c",
        [
            {"id": "1", "channel_id": "c", "content": "old"},
            {"id": "2", "channel_id": "c", "content": "older?"},
        ],
    )
    h.seen(created("4"))
    assert [r["id"] for r in h.recent("c", 10)] == ["1", "2", "3", "4"]
    assert [r["id"] for r in h.recent("c", 2)] == ["3", "4"]
    assert h.recent("other", 10) is None


def test_edits_and_deletes_apply_even_when_our_edit_overtakes_the_creation() -> None:
    h = History()
    h.seed("c", [])
    h.edited("5", "final answer")  # the bot edited its reply before the create arrived
    h.seen(created("5", content="fir"))
    h.seen(created("6"))
    h.deleted("6")
    assert [(r["id"], r["content"]) for r in h.recent("c", 10)] == [("5", "final answer")]


def test_reply_chains_come_from_memory_or_not_at_all() -> None:
    h = History()
    h.seen(created("1"))
    h.seen(created("2", reply_to="1"))
    h.seen(created("3", reply_to="2"))
    assert [r["id"] for r in h.chain("3", 10)] == ["1", "2", "3"]
    assert [r["id"] for r in h.chain("3", 2)] == ["2", "3"]
    h.seen(created("9", reply_to="8"))  # 8 was never seen: the store must answer
    assert h.chain("9", 10) is None


def test_memory_is_bounded() -> None:
    h = History(per_channel=3, remembered=5)
    h.seed("c", [])
    for i in range(10):
        h.seen(created(str(i)))
    assert len(h._rows) == 5
    assert [r["id"] for r in h.recent("c", 10)] == ["7", "8", "9"]
