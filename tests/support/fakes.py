"""Fake gateway, persistence and supervisor services for in-process tests, and the
helpers that run them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from protocol.bus import Topology, request_once
from protocol.discord import (
    CommandInvoked,
    CountsRequest,
    EditMessage,
    GuildCounts,
    GuildInfoRequest,
    RenameChannel,
    SendMessage,
    SetPresence,
)
from protocol.messages import RestartRequest, StatusRequest
from protocol.runtime import Refused, RuntimeContext, Service
from protocol.store import KvGet, KvSet, MemberEvents, RecentMessages, StoreCounts, UsageRequest

GUILD = "100"
CHANNELS = [
    {"id": "201", "name": "general", "type": "text"},
    {"id": "202", "name": "admin", "type": "text"},
    {"id": "203", "name": "stats", "type": "text"},
    {"id": "204", "name": "Members", "type": "voice"},
    {"id": "205", "name": "Online", "type": "voice"},
]
NAMES = ("gateway", "persistence", "supervisor", "stats", "heartbeat", "presence", "tester")


def topology(tmp: Path) -> Topology:
    return Topology(
        {name: f"ipc://{tmp}/{name}.sock" for name in NAMES},
        {
            "discord.guild.counts": ["stats", "presence"],
            "discord.guild.ready": ["stats", "heartbeat", "presence"],
            "discord.connection": ["heartbeat"],
        },
    )


class FakeGateway:
    """Answers like the gateway: guild info, counts, renames, messages, presence."""

    def __init__(self) -> None:
        self.service = Service("gateway")
        self.channels = {c["id"]: dict(c) for c in CHANNELS}
        self.counts = {"guild_id": GUILD, "members": 10, "humans": 9, "bots": 1, "online": 4}
        self.renames: list[tuple[str, str]] = []
        self.sent: list[SendMessage] = []
        self.edits: list[EditMessage] = []
        self.presences: list[SetPresence] = []
        self.messages: dict[str, SendMessage] = {}
        self.fail_sends: str | None = None
        s = self.service
        s.request(GuildInfoRequest)(self.guild_info)
        s.request(CountsRequest)(self.counts_request)
        s.request(RenameChannel)(self.rename)
        s.request(SendMessage)(self.send)
        s.request(EditMessage)(self.edit)
        s.request(SetPresence)(self.presence)

    def guild_body(self) -> dict[str, Any]:
        channels = list(self.channels.values())
        return {"guild_id": GUILD, "name": "Test", "channels": channels, "member_count": 10,
                "bot_user_id": "900"}  # fmt: skip

    async def guild_info(self, _: GuildInfoRequest) -> dict[str, Any]:
        return self.guild_body()

    async def counts_request(self, _: CountsRequest) -> dict[str, Any]:
        return dict(self.counts)

    async def rename(self, msg: RenameChannel) -> dict[str, Any]:
        self.renames.append((msg.channel_id, msg.name))
        self.channels[msg.channel_id]["name"] = msg.name
        return {"id": msg.channel_id, "name": msg.name}

    async def send(self, msg: SendMessage) -> dict[str, Any]:
        if self.fail_sends:
            raise Refused("discord_error", self.fail_sends)
        self.sent.append(msg)
        message_id = str(5000 + len(self.sent))
        self.messages[message_id] = msg
        return {"id": message_id}

    async def edit(self, msg: EditMessage) -> dict[str, Any]:
        if msg.message_id not in self.messages:
            raise Refused("not_found", "404 Not Found (error code: 10008): Unknown Message")
        self.edits.append(msg)
        return {"id": msg.message_id}

    async def presence(self, msg: SetPresence) -> dict[str, Any]:
        self.presences.append(msg)
        return {}

    async def publish_counts(self, **changes: int) -> None:
        self.counts.update(changes)
        await self.service.publish(GuildCounts(**self.counts))


class FakePersistence:
    """Answers like persistence: a key-value store with atomic claims, member events,
    the bot's own messages, and the counts and usage for the health embed."""

    def __init__(self, gateway: FakeGateway | None = None) -> None:
        self.service = Service("persistence")
        self.kv: dict[tuple[str, str], Any] = {}
        self.kv_sets: list[KvSet] = []
        self.events: list[dict[str, Any]] = []
        self.gateway = gateway
        s = self.service
        s.request(KvGet)(self.get)
        s.request(KvSet)(self.set)
        s.request(MemberEvents)(self.member_events)
        s.request(RecentMessages)(self.recent)
        s.request(StoreCounts)(self.store_counts)
        s.request(UsageRequest)(self.usage)

    async def get(self, msg: KvGet) -> dict[str, Any]:
        return {"value": self.kv.get((msg.namespace, msg.key))}

    async def set(self, msg: KvSet) -> dict[str, Any]:
        self.kv_sets.append(msg)
        if msg.only_if_absent and (msg.namespace, msg.key) in self.kv:
            return {"stored": False}
        self.kv[(msg.namespace, msg.key)] = msg.value
        return {"stored": True}

    async def member_events(self, msg: MemberEvents) -> dict[str, Any]:
        return {"events": [e for e in self.events if msg.since <= e["at"] < msg.until]}

    async def recent(self, msg: RecentMessages) -> dict[str, Any]:
        sent = self.gateway.sent if self.gateway else []
        return {
            "messages": [
                {"channel_id": m.channel_id, "content": m.content, "author_bot": True}
                for m in sent
                if m.channel_id == msg.channel_id
            ]
        }

    async def store_counts(self, _: StoreCounts) -> dict[str, Any]:
        return {"messages": 5, "db_bytes": 2_000_000}

    async def usage(self, _: UsageRequest) -> dict[str, Any]:
        return {"exchanges": 4, "by_outcome": {"ok": 3, "error": 1}, "latency_p50_ms": 900.0}


class FakeSupervisor:
    """Answers StatusRequest from `status` (tests edit it) and records restarts."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.service = Service("supervisor")
        self.restarts: list[str] = []
        self.status: dict[str, Any] = {
            "supervisor": {"pid": 1, "uptime_s": 3700.0, "rss_mb": 30.0, "summary": "ok"},
            "services": [
                {"name": n, "pid": None, "state": "RUNNING", "restarts": 0, "uptime_s": 60.0,
                 "rss_mb": 40.0, "last_exit": None, "critical": n == "gateway", "channels": []}
                for n in names
            ],
        }  # fmt: skip
        self.service.request(StatusRequest)(self.status_request)
        self.service.request(RestartRequest)(self.restart)

    def set(self, name: str, **changes: Any) -> None:
        for svc in self.status["services"]:
            if svc["name"] == name:
                svc.update(changes)

    async def status_request(self, _: StatusRequest) -> dict[str, Any]:
        return self.status

    async def restart(self, msg: RestartRequest) -> dict[str, Any]:
        self.restarts.append(msg.service)
        return {"ok": True, "detail": f"{msg.service} is restarting"}


class Processes:
    """Runs services in-process as the supervisor would run them as processes."""

    def __init__(self, tg: TaskGroup, tmp: Path) -> None:
        self.tg = tg
        self.tmp = tmp
        self.done: dict[int, anyio.Event] = {}

    async def start(self, service: Service, settings: dict[str, Any] | None = None) -> Service:
        """Start a service and return once its bus exists (it can publish and call)."""
        ctx = RuntimeContext(service.name, topology(self.tmp), self.tmp, settings=settings or {})
        done = self.done[id(service)] = anyio.Event()

        async def run() -> None:
            try:
                await service.run(ctx)
            finally:
                done.set()

        self.tg.start_soon(run)
        await eventually(lambda: service.bus is not None)
        return service

    async def stop(self, service: Service) -> None:
        service.stop()
        with anyio.fail_after(5):
            await self.done[id(service)].wait()


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    with anyio.move_on_after(timeout):
        while not (result := predicate()):
            await anyio.sleep(0.02)
        return result
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


async def ask(tmp: Path, peer: str, msg: Any, timeout: float = 5.0) -> dict[str, Any]:
    return await request_once("tester", topology(tmp), peer, msg, timeout=timeout)


def command(name: str, user: str = "55", admin: bool = False, **options: Any) -> CommandInvoked:
    return CommandInvoked("1", name, options, user, "someone", "201", GUILD, admin)
