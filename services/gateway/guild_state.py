"""The gateway's own view of each guild, kept from raw events and saved with the session.

py-cord's cache is empty in a process that RESUMEd a session it did not start;
this small state (members with bot flags and presence, channels, ban count)
survives that, so counts stay right across gateway restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.discord import GuildCounts, GuildReady
from services.gateway.convert import CHANNEL_KINDS


@dataclass
class Guild:
    id: str
    name: str = ""
    members: dict[str, bool] = field(default_factory=dict)  # user id -> is bot
    online: set[str] = field(default_factory=set)  # user ids not offline
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {id, name, type}
    bans: int | None = None
    member_count: int = 0  # Discord's total; members above may be a subset until chunked
    banned: set[str] | None = None  # the banned user ids, once all of them were fetched

    def counts(self) -> GuildCounts:
        bots = sum(self.members.values())
        total = max(self.member_count, len(self.members))
        return GuildCounts(
            self.id, total, total - bots, bots, len(self.online & self.members.keys()), self.bans
        )

    def ready(self, bot_id: str) -> GuildReady:
        return GuildReady(
            self.id,
            self.name,
            list(self.channels.values()),
            max(self.member_count, len(self.members)),
            bot_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "members": self.members,
            "online": sorted(self.online),
            "channels": self.channels,
            "bans": self.bans,
            "member_count": self.member_count,
            "banned": None if self.banned is None else sorted(self.banned),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Guild:
        return cls(
            d["id"],
            d.get("name", ""),
            dict(d.get("members", {})),
            set(d.get("online", [])),
            dict(d.get("channels", {})),
            d.get("bans"),
            int(d.get("member_count", 0)),
            None if d.get("banned") is None else {str(u) for u in d["banned"]},
        )


def _channel(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(c["id"]),
        "name": str(c.get("name") or ""),
        "type": CHANNEL_KINDS.get(int(c.get("type", 0)), str(c.get("type"))),
    }


class GuildState:
    def __init__(self) -> None:
        self.guilds: dict[str, Guild] = {}

    def members(self) -> dict[str, set[str]]:
        """Each guild's member ids: what a backfill compares with after a gap."""
        return {gid: set(g.members) for gid, g in self.guilds.items()}

    def first(self) -> Guild | None:
        return next(iter(self.guilds.values()), None)

    def get(self, guild_id: str | None) -> Guild | None:
        return self.guilds.get(guild_id) if guild_id else self.first()

    def channel_names(self) -> dict[str, str]:
        return {cid: c["name"] for g in self.guilds.values() for cid, c in g.channels.items()}

    def apply(self, event: str, d: dict[str, Any]) -> str | None:
        """Update from one dispatch; answers the guild id whose counts changed, if any."""
        if event == "GUILD_CREATE":
            if d.get("unavailable"):
                return None
            g = Guild(
                str(d["id"]), str(d.get("name", "")), member_count=int(d.get("member_count", 0))
            )
            self._add_members(g, d.get("members", []), d.get("presences", []))
            g.channels = {str(c["id"]): _channel(c) for c in d.get("channels", [])}
            old = self.guilds.get(g.id)
            g.bans, g.banned = (old.bans, old.banned) if old else (None, None)
            self.guilds[g.id] = g
            return g.id
        gid = str(d.get("guild_id", ""))
        g = self.guilds.get(gid)
        if g is None:
            return None
        user = d.get("user") or {}
        uid = str(user.get("id", ""))
        if event == "GUILD_MEMBERS_CHUNK":
            self._add_members(g, d.get("members", []), d.get("presences", []))
        elif event == "GUILD_MEMBER_ADD":
            if uid not in g.members:
                g.member_count += 1
            g.members[uid] = bool(user.get("bot", False))
        elif event == "GUILD_MEMBER_REMOVE":
            if uid in g.members:
                g.member_count = max(0, g.member_count - 1)
            g.members.pop(uid, None)
            g.online.discard(uid)
        elif event == "PRESENCE_UPDATE":
            before = uid in g.online
            if d.get("status", "offline") == "offline":
                g.online.discard(uid)
            else:
                g.online.add(uid)
            if before == (uid in g.online):
                return None
        elif event == "GUILD_BAN_ADD":
            g.bans = None if g.bans is None else g.bans + 1
            if g.banned is not None:
                g.banned.add(uid)
        elif event == "GUILD_BAN_REMOVE":
            g.bans = None if g.bans is None else max(0, g.bans - 1)
            if g.banned is not None:
                g.banned.discard(uid)
        elif event in ("CHANNEL_CREATE", "CHANNEL_UPDATE"):
            g.channels[str(d["id"])] = _channel(d)
            return None
        elif event == "CHANNEL_DELETE":
            g.channels.pop(str(d["id"]), None)
            return None
        else:
            return None
        return gid

    @staticmethod
    def _add_members(
        g: Guild, members: list[dict[str, Any]], presences: list[dict[str, Any]]
    ) -> None:
        for m in members:
            user = m.get("user", {})
            g.members[str(user["id"])] = bool(user.get("bot", False))
        for p in presences:
            if p.get("status", "offline") != "offline":
                g.online.add(str(p["user"]["id"]))

    def to_json(self) -> list[dict[str, Any]]:
        return [g.to_json() for g in self.guilds.values()]

    def load(self, data: list[dict[str, Any]]) -> None:
        self.guilds = {g["id"]: Guild.from_json(g) for g in data}
