"""Fake gateway, persistence and supervisor services for in-process tests, and the
helpers that run them.

Each fake is a real `Service` on the real bus that answers with the protocol's declared
reply types (so a service under test meets the same shapes it meets in production) and
records what it got. Like the real ones, the gateway publishes its guild and counts and
the supervisor pushes its status: all retained, so a service started later gets them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from protocol.bus import Topology, request_once
from protocol.commands import Tier
from protocol.discord import (
    ChannelCreated,
    CommandAnswer,
    CommandInvoked,
    CountsRequest,
    CreateChannel,
    CreateScheduledEvent,
    DeleteMessage,
    DirectChannel,
    EditInteraction,
    EditMessage,
    ExpirePoll,
    GuildCounts,
    GuildInfoRequest,
    GuildReady,
    InteractionFollowup,
    ListScheduledEvents,
    OpenDirectMessage,
    PollSent,
    PollVotersRequest,
    PollVotes,
    RenameChannel,
    ScheduledEventInfo,
    ScheduledEventList,
    ScheduledEventUsers,
    SendMessage,
    SendPoll,
    Sent,
    SetPresence,
    Typing,
    UserIds,
)
from protocol.messages import (
    Done,
    Message,
    Outcome,
    Request,
    RestartRequest,
    StatusRequest,
    SupervisorStatus,
)
from protocol.runtime import Refused, RuntimeContext, Service
from protocol.store import (
    Counts,
    KvGet,
    KvSet,
    KvStored,
    KvValue,
    LlmExchange,
    MemberEventList,
    MemberEvents,
    RecentMessages,
    ReplyChain,
    StoreCounts,
    StoredMessages,
    Usage,
    UsageRequest,
)

R = TypeVar("R", bound=Message)

GUILD = "100"
BOT_USER = "900"
CHANNELS = [
    {"id": "201", "name": "general", "type": "text"},
    {"id": "202", "name": "admin", "type": "text"},
    {"id": "203", "name": "stats", "type": "text"},
    {"id": "204", "name": "Members", "type": "voice"},
    {"id": "205", "name": "Online", "type": "voice"},
]
NAMES = (
    "gateway",
    "persistence",
    "supervisor",
    "stats",
    "heartbeat",
    "presence",
    "scheduler",
    "tester",
)
SCHEDULER_EVENTS = (
    "discord.poll.vote_added",
    "discord.poll.vote_removed",
    "discord.poll.ended",
    "discord.scheduled_event",
    "discord.scheduled_event.interest",
)


def topology(tmp: Path) -> Topology:
    return Topology(
        {name: f"ipc://{tmp}/{name}.sock" for name in NAMES},
        {
            "discord.guild.counts": ["stats", "presence"],
            "discord.guild.ready": ["stats", "heartbeat", "presence", "scheduler"],
            "discord.connection": ["heartbeat"],
            "supervisor.status": ["heartbeat", "presence"],
            **{event: ["scheduler"] for event in SCHEDULER_EVENTS},
        },
    )


class FakeGateway:
    """Answers like the gateway (counts, renames, messages, presence) and, once it runs,
    publishes the guild and its counts as the real one does when it connects."""

    def __init__(self) -> None:
        self.service = Service("gateway")
        self.channels = {c["id"]: dict(c) for c in CHANNELS}
        self.counts = GuildCounts(GUILD, members=10, humans=9, bots=1, online=4)
        self.renames: list[tuple[str, str]] = []
        self.sent: list[SendMessage] = []
        self.edits: list[EditMessage] = []
        self.presences: list[SetPresence] = []
        self.messages: dict[str, SendMessage] = {}
        self.fail_sends: str | None = None
        self.fail_reason = "discord_error"  # the reason fail_sends answers with
        # The message is sent, but the answer is lost (Discord or the gateway died first).
        self.lose_replies = False
        self.dms: dict[str, str] = {}  # user id -> DM channel id
        self.polls: dict[str, SendPoll] = {}  # message id -> the poll
        self.voters: dict[str, dict[str, list[str]]] = {}  # message id -> answer id -> users
        self.expired: list[str] = []
        self.events: dict[str, dict[str, Any]] = {}  # id -> ScheduledEventList's dict
        self.interested: dict[str, list[str]] = {}
        s = self.service
        s.request(GuildInfoRequest)(self.guild_info)
        s.request(CountsRequest)(self.counts_request)
        s.request(RenameChannel)(self.rename)
        s.request(CreateChannel)(self.create_channel)
        s.request(SendMessage)(self.send)
        s.request(EditMessage)(self.edit)
        s.request(DeleteMessage)(self.delete)
        s.request(SetPresence)(self.presence)
        s.request(OpenDirectMessage)(self.open_dm)
        s.request(SendPoll)(self.send_poll)
        s.request(ExpirePoll)(self.expire_poll)
        s.request(PollVotersRequest)(self.poll_voters)
        s.request(CreateScheduledEvent)(self.create_event)
        s.request(ListScheduledEvents)(self.list_events)
        s.request(ScheduledEventUsers)(self.event_users)
        s.command("help")(self.help)
        s.setup(self.connected)

    def guild(self) -> GuildReady:
        return GuildReady(GUILD, "Test", list(self.channels.values()), 10, BOT_USER)

    async def connected(self) -> None:
        await self.service.publish(self.guild())
        await self.service.publish(self.counts)

    async def guild_info(self, _: GuildInfoRequest) -> GuildReady:
        return self.guild()

    async def counts_request(self, _: CountsRequest) -> GuildCounts:
        return self.counts

    async def rename(self, msg: RenameChannel) -> Done:
        self.renames.append((msg.channel_id, msg.name))
        self.channels[msg.channel_id]["name"] = msg.name
        return Done()

    async def create_channel(self, msg: CreateChannel) -> ChannelCreated:
        channel_id = str(300 + len(self.channels))
        self.channels[channel_id] = {"id": channel_id, "name": msg.name, "type": msg.kind}
        return ChannelCreated(channel_id)

    async def send(self, msg: SendMessage) -> Sent:
        if self.fail_sends:
            raise Refused(self.fail_reason, self.fail_sends)
        self.sent.append(msg)
        message_id = str(5000 + len(self.sent))
        self.messages[message_id] = msg
        if self.lose_replies:
            raise Refused("timeout", "Discord did not answer within 15s")
        return Sent(message_id)

    async def open_dm(self, msg: OpenDirectMessage) -> DirectChannel:
        return DirectChannel(self.dms.setdefault(msg.user_id, str(7000 + len(self.dms))))

    async def send_poll(self, msg: SendPoll) -> PollSent:
        message_id = str(6000 + len(self.polls))
        self.polls[message_id] = msg
        self.voters[message_id] = {}
        expiry = self.service.clock.wall() + msg.hours * 3600.0
        return PollSent(message_id, expiry, list(range(1, len(msg.answers) + 1)))

    async def expire_poll(self, msg: ExpirePoll) -> Done:
        self.expired.append(msg.message_id)
        return Done()

    async def poll_voters(self, msg: PollVotersRequest) -> PollVotes:
        votes = self.voters.get(msg.message_id)
        if votes is None:
            raise Refused("not_found", "404 (code 10008) Unknown Message")
        return PollVotes({str(a): list(votes.get(str(a), [])) for a in msg.answer_ids})

    async def create_event(self, msg: CreateScheduledEvent) -> ScheduledEventInfo:
        event_id = str(8000 + len(self.events))
        self.events[event_id] = {
            "id": event_id,
            "guild_id": msg.guild_id,
            "name": msg.name,
            "description": msg.description,
            "start": msg.start,
            "end": msg.end,
            "location": msg.location,
            "status": "scheduled",
            "user_count": 0,
            "creator_id": BOT_USER,
            "channel_id": None,
        }
        return ScheduledEventInfo(dict(self.events[event_id]))

    async def list_events(self, _: ListScheduledEvents) -> ScheduledEventList:
        return ScheduledEventList(
            [{**e, "user_count": len(self.interested.get(i, []))} for i, e in self.events.items()]
        )

    async def event_users(self, msg: ScheduledEventUsers) -> UserIds:
        return UserIds(list(self.interested.get(msg.event_id, [])))

    async def edit(self, msg: EditMessage) -> Done:
        if msg.message_id not in self.messages:
            raise Refused("not_found", "404 Not Found (error code: 10008): Unknown Message")
        self.edits.append(msg)
        return Done()

    async def delete(self, msg: DeleteMessage) -> Done:
        self.messages.pop(msg.message_id, None)
        return Done()

    async def presence(self, msg: SetPresence) -> Done:
        self.presences.append(msg)
        return Done()

    async def help(self, _: CommandInvoked) -> CommandAnswer:
        return CommandAnswer("the fake gateway's help", ephemeral=True)

    async def publish_counts(self, **changes: int) -> None:
        self.counts = GuildCounts(**{**self.counts.to_body(), **changes})
        await self.service.publish(self.counts)


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

    async def get(self, msg: KvGet) -> KvValue:
        return KvValue(self.kv.get((msg.namespace, msg.key)))

    async def set(self, msg: KvSet) -> KvStored:
        self.kv_sets.append(msg)
        if msg.only_if_absent and (msg.namespace, msg.key) in self.kv:
            return KvStored(False)
        self.kv[(msg.namespace, msg.key)] = msg.value
        return KvStored(True)

    async def member_events(self, msg: MemberEvents) -> MemberEventList:
        return MemberEventList([e for e in self.events if msg.since <= e["at"] < msg.until])

    async def recent(self, msg: RecentMessages) -> StoredMessages:
        sent = self.gateway.sent if self.gateway else []
        return StoredMessages(
            [
                {"channel_id": m.channel_id, "content": m.content, "author_bot": True}
                for m in sent
                if m.channel_id == msg.channel_id
            ]
        )

    async def store_counts(self, _: StoreCounts) -> Counts:
        return Counts(5, 0, 0, 2, 0, 4, db_bytes=2_000_000)

    async def usage(self, _: UsageRequest) -> Usage:
        return Usage(4, 400, 200, {"ok": 3, "error": 1}, latency_p50_ms=900.0)


class FakeSupervisor:
    """Pushes its status (SupervisorStatus) to its subscribers when it starts and at each
    `set`, answers StatusRequest too, and records restarts."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.service = Service("supervisor")
        self.restarts: list[str] = []
        self.supervisor = {"pid": 1, "uptime_s": 3700.0, "rss_mb": 30.0, "summary": "ok"}
        self.services: list[dict[str, Any]] = [
            {"name": n, "pid": None, "state": "RUNNING", "restarts": 0, "uptime_s": 60.0,
             "rss_mb": 40.0, "last_exit": None, "reason": None, "critical": n == "gateway",
             "channels": []}
            for n in names
        ]  # fmt: skip
        self.service.request(StatusRequest)(self.status_request)
        self.service.request(RestartRequest)(self.restart)
        self.service.setup(self.publish)

    def status(self) -> SupervisorStatus:
        return SupervisorStatus(copy.deepcopy(self.supervisor), copy.deepcopy(self.services))

    def change(self, name: str, **changes: Any) -> None:
        """Edit a service's status without telling anyone (e.g. while nobody listens)."""
        for svc in self.services:
            if svc["name"] == name:
                svc.update(changes)

    async def set(self, name: str, **changes: Any) -> None:
        """Edit a service's status and push it, as the supervisor does at a transition."""
        self.change(name, **changes)
        await self.publish()

    async def publish(self) -> None:
        await self.service.publish(self.status())

    async def status_request(self, _: StatusRequest) -> SupervisorStatus:
        return self.status()

    async def restart(self, msg: RestartRequest) -> Outcome:
        self.restarts.append(msg.service)
        return Outcome(True, f"{msg.service} is restarting")


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


async def ask(tmp: Path, peer: str, msg: Request[R], timeout: float = 5.0) -> R:
    """A request from outside (a test acting as another service): its declared reply."""
    return await request_once("tester", topology(tmp), peer, msg, timeout=timeout)


def command(
    name: str, user: str = "55", tier: Tier = Tier.MEMBER, **options: Any
) -> CommandInvoked:
    """A slash command as the gateway routes it, from a caller of `tier`."""
    return CommandInvoked("1", name, options, user, "someone", "201", GUILD, tier.value)


# --- the llm's peers: the same fakes, with what an answer streamed into Discord uses -----


class StreamingGateway(FakeGateway):
    """The fake gateway, also serving typing and interaction edits and follow-ups, with the
    time each write arrived (`writes`) and what each message shows now (`showing`)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, Request[Any]]] = []  # (monotonic time, request)
        self.showing: dict[str, str] = {}  # message id -> its content now
        s = self.service
        s.request(Typing)(self.record)
        s.request(EditInteraction)(self.record)
        s.request(InteractionFollowup)(self.followup)

    async def send(self, msg: SendMessage) -> Sent:
        sent = await super().send(msg)
        self.writes.append((time.monotonic(), msg))
        self.showing[sent.message_id] = msg.content
        return sent

    async def edit(self, msg: EditMessage) -> Done:
        done = await super().edit(msg)
        self.writes.append((time.monotonic(), msg))
        self.showing[msg.message_id] = msg.content or ""
        return done

    async def record(self, msg: Typing | EditInteraction) -> Done:
        self.writes.append((time.monotonic(), msg))
        return Done()

    async def followup(self, msg: InteractionFollowup) -> Sent:
        self.writes.append((time.monotonic(), msg))
        return Sent(f"followup-{len(self.writes)}")

    def of(self, kind: type[R]) -> list[R]:
        return [msg for _, msg in self.writes if isinstance(msg, kind)]  # type: ignore[misc]

    def shown(self) -> list[str]:
        """What the channels show now, in the order the messages were sent."""
        return [self.showing[k] for k in sorted(self.showing, key=int)]


class ConversationStore(FakePersistence):
    """The fake persistence, also serving a channel's messages (`rows`) and a reply chain
    (`chain`) as set by the test, recording those queries, and storing the exchanges the
    llm publishes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.chain: list[dict[str, Any]] = []
        self.queries: list[Request[Any]] = []
        self.exchanges: dict[str, LlmExchange] = {}
        self.service.request(ReplyChain)(self.reply_chain)
        self.service.event(LlmExchange)(self.exchange)

    async def recent(self, msg: RecentMessages) -> StoredMessages:
        self.queries.append(msg)
        return StoredMessages(self.rows)

    async def reply_chain(self, msg: ReplyChain) -> StoredMessages:
        self.queries.append(msg)
        return StoredMessages(self.chain)

    async def usage(self, msg: UsageRequest) -> Usage:
        self.queries.append(msg)
        return await super().usage(msg)

    async def exchange(self, ev: LlmExchange) -> None:
        self.exchanges[ev.id] = ev
