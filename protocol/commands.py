"""The slash commands the bot offers, each declared once, as data.

A declaration says everything about a command: its name, description, options,
the service that answers it and who may run it. The gateway registers the
commands of enabled services with Discord from here, checks the caller's tier
before routing (so it can refuse, or say "restarting", while the owner is down),
and answers `/help` from here; the owner binds a handler by name
(`@service.command("ask")`), and a declaration without a handler, or a handler
without a declaration, stops start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Tier(StrEnum):
    """Who may run a command, each tier including the ones above it in this list."""

    PUBLIC = "public"  # anyone, DMs included
    MEMBER = "member"  # a member of the guild it is run in
    ADMIN = "admin"  # Manage Server (or Administrator), or one of the configured roles
    OWNER = "owner"  # the bot's owners (owner_ids)

    def allows(self, needed: Tier) -> bool:
        """True if a caller of this tier may run a command that needs `needed`."""
        order = list(Tier)
        return order.index(self) >= order.index(needed)

    @property
    def refusal(self) -> str:
        return {
            Tier.PUBLIC: "",
            Tier.MEMBER: "This command works in a server, not here.",
            Tier.ADMIN: "Only server admins (Manage Server) can run this command.",
            Tier.OWNER: "Only the bot's owners can run this command.",
        }[self]


@dataclass(frozen=True)
class Option:
    name: str
    type: str  # "string" | "integer" | "boolean" | "number"
    description: str
    required: bool = True


@dataclass(frozen=True)
class Subcommand:
    """`/event create name: start:`: Discord's SUB_COMMAND option; the handler reads its
    name from `CommandInvoked.subcommand` and its options as the command's own."""

    name: str
    description: str
    options: tuple[Option, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    owner: str  # the service that answers it
    options: tuple[Option, ...] = field(default_factory=tuple)
    tier: Tier = Tier.PUBLIC
    # Defer at once ("thinking...") because the answer takes longer than Discord's 3 s.
    slow: bool = False
    # A command with subcommands has no options of its own (Discord's rule).
    subcommands: tuple[Subcommand, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.subcommands and self.options:
            raise ValueError(f"/{self.name}: options belong to its subcommands")

    def usages(self) -> list[str]:
        """How it is typed: `/remind when: text: [private:]`, one line per subcommand."""
        if not self.subcommands:
            return [_usage(self.name, self.options)]
        return [_usage(f"{self.name} {sub.name}", sub.options) for sub in self.subcommands]


def _usage(name: str, options: tuple[Option, ...]) -> str:
    shown = " ".join(f"{o.name}:" if o.required else f"[{o.name}:]" for o in options)
    return f"/{name}{' ' + shown if shown else ''}"


CATALOGUE: dict[str, Command] = {}


def declare(*commands: Command) -> None:
    """Add commands to the catalogue; a name declared twice is a programming error."""
    for cmd in commands:
        known = CATALOGUE.get(cmd.name)
        if known is not None and known != cmd:
            raise ValueError(f"/{cmd.name} is declared twice ({known.owner} and {cmd.owner})")
        CATALOGUE[cmd.name] = cmd


def owned_by(enabled: set[str] | list[str]) -> dict[str, str]:
    """Command name -> owning service, for the commands whose owner is enabled."""
    return {c.name: c.owner for c in CATALOGUE.values() if c.owner in enabled}


def runnable_by(tier: Tier, enabled: set[str] | list[str]) -> list[Command]:
    """The commands a caller of `tier` may run, among those whose owner is enabled."""
    return sorted(
        (c for c in CATALOGUE.values() if c.owner in enabled and tier.allows(c.tier)),
        key=lambda c: c.name,
    )


declare(
    Command("help", "The commands you can run here", "gateway"),
    Command(
        "ask",
        "Ask the bot's language model",
        "llm",
        (Option("prompt", "string", "What to ask"),),
        slow=True,
    ),
    Command("reset", "Start a fresh conversation in this channel", "llm"),
    Command("usage", "Recent language model usage in this server", "llm", tier=Tier.MEMBER),
    Command(
        "stats",
        "Joins, leaves and bans for a day",
        "stats",
        (Option("date", "string", "YYYY-MM-DD (default: yesterday)", required=False),),
        tier=Tier.MEMBER,
    ),
    Command("status", "The bot's health", "heartbeat"),
    Command(
        "restart",
        "Restart one of the bot's services",
        "heartbeat",
        (Option("service", "string", "Service name"),),
        tier=Tier.ADMIN,
    ),
    # --- the scheduler: reminders, polls, scheduled events --------------------------
    Command(
        "remind",
        "Remind you of something later, here or by DM",
        "scheduler",
        (
            Option(
                "when", "string", "in 10 minutes, tomorrow 9:00, friday 18:30, every monday 9:00"
            ),
            Option("text", "string", "What to remind you of"),
            Option("private", "boolean", "By DM instead of in this channel", required=False),
        ),
    ),
    Command(
        "reminders",
        "Your reminders; cancel one by its number",
        "scheduler",
        (Option("cancel", "integer", "The number of the reminder to cancel", required=False),),
    ),
    Command(
        "timezone",
        "Your time zone, for reminders and events",
        "scheduler",
        subcommands=(
            Subcommand(
                "set", "Set your time zone", (Option("zone", "string", "e.g. Europe/Paris"),)
            ),
            Subcommand("show", "Show your time zone"),
        ),
    ),
    Command(
        "poll",
        "Start a poll (Discord's own)",
        "scheduler",
        (
            Option("question", "string", "The question"),
            Option("answers", "string", "2 to 10 answers separated by ;"),
            Option("hours", "integer", "How long it stays open (default 24)", required=False),
            Option("multiple", "boolean", "Allow several answers per person", required=False),
        ),
        tier=Tier.MEMBER,
    ),
    Command(
        "endpoll",
        "End a poll early: yours, or any as an admin",
        "scheduler",
        (Option("poll", "string", "Its message id (default: the last one here)", required=False),),
        tier=Tier.MEMBER,
    ),
    Command(
        "event",
        "Scheduled events of this server",
        "scheduler",
        tier=Tier.MEMBER,
        subcommands=(
            Subcommand(
                "create",
                "Create a scheduled event",
                (
                    Option("name", "string", "The event's name"),
                    Option("start", "string", "tomorrow 18:00, friday 20:30, 2026-12-24 18:00"),
                    Option(
                        "duration", "string", "e.g. 90 minutes, 2h (default 1h)", required=False
                    ),
                    Option("location", "string", "Where it happens", required=False),
                    Option("description", "string", "What it is about", required=False),
                ),
            ),
        ),
    ),
    Command(
        "events",
        "Upcoming events; ics: as a calendar file",
        "scheduler",
        (Option("ics", "boolean", "As an iCalendar (.ics) file", required=False),),
        tier=Tier.MEMBER,
    ),
)
