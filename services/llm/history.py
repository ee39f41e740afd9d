"""The conversations the llm service has watched go by, so most questions need no
round trip to persistence.

The service subscribes to every message, so it can keep each channel's recent
messages itself (llmcord keeps a similar cache). A channel is answered from here
only once it has been *seeded* from persistence: after a restart the first
question in a channel still asks the store, and everything after it is appended
as it arrives. Rows have persistence's shape, so both sources build the same
conversation. The bot's own answers are updated with their final text as the
service edits them (the edit events would arrive later).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from protocol.discord import MessageCreated

Row = dict[str, Any]


class History:
    def __init__(self, per_channel: int = 100, remembered: int = 20_000) -> None:
        self.per_channel = per_channel
        self.remembered = remembered
        self._rows: OrderedDict[str, Row] = OrderedDict()  # message id -> row, newest last
        self._channels: dict[str, deque[str]] = {}  # seeded channels: their recent ids
        # Our own edits can overtake the creation event of the message they edit.
        self._early_edits: OrderedDict[str, str] = OrderedDict()

    def _remember(self, row: Row) -> None:
        self._rows[row["id"]] = row
        self._rows.move_to_end(row["id"])
        while len(self._rows) > self.remembered:
            self._rows.popitem(last=False)

    def seen(self, msg: MessageCreated) -> None:
        if msg.id in self._rows:
            return  # a redelivery
        self._remember(
            {
                "id": msg.id,
                "channel_id": msg.channel_id,
                "author_id": msg.author_id,
                "author_name": msg.author_name,
                "author_bot": msg.author_bot,
                "content": self._early_edits.pop(msg.id, msg.content),
                "created_at": msg.created_at,
                "reply_to_id": msg.reply_to_id,
                "deleted": False,
            }
        )
        recent = self._channels.get(msg.channel_id)
        if recent is not None:
            recent.append(msg.id)

    def edited(self, message_id: str, content: str) -> None:
        row = self._rows.get(message_id)
        if row is not None:
            row["content"] = content
            return
        self._early_edits[message_id] = content
        while len(self._early_edits) > 1000:
            self._early_edits.popitem(last=False)

    def deleted(self, message_id: str) -> None:
        row = self._rows.get(message_id)
        if row is not None:
            row["deleted"] = True

    def seed(self, channel_id: str, rows: list[Row]) -> None:
        """Persistence's answer for a channel: from now on the channel is served here."""
        if channel_id in self._channels:
            return
        known = [r for r in rows if isinstance(r.get("id"), str)]
        for row in known:
            if row["id"] not in self._rows:
                self._remember(dict(row))
        ids = {r["id"] for r in known}
        later = [
            i
            for i, r in self._rows.items()  # seen while the store was asked
            if r.get("channel_id") == channel_id and i not in ids
        ]
        self._channels[channel_id] = deque(
            [r["id"] for r in known] + later, maxlen=self.per_channel
        )

    def recent(self, channel_id: str, limit: int) -> list[Row] | None:
        """The channel's last `limit` messages, oldest first; None if not seeded."""
        recent = self._channels.get(channel_id)
        if recent is None:
            return None
        rows = [self._rows[i] for i in recent if i in self._rows]
        if len(rows) < len(recent) and len(rows) < limit:
            return None  # forgotten in the meantime: ask the store
        return [r for r in rows if not r.get("deleted")][-limit:]

    def chain(self, message_id: str, limit: int) -> list[Row] | None:
        """The message and what it replies to, oldest first; None if a link is unknown."""
        rows: list[Row] = []
        current: str | None = message_id
        while current is not None and len(rows) < limit:
            row = self._rows.get(current)
            if row is None:
                return None
            rows.append(row)
            current = row.get("reply_to_id")
            if current in {r["id"] for r in rows}:
                break  # a cycle
        return rows[::-1]
