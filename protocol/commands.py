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
class Command:
    name: str
    description: str
    owner: str  # the service that answers it
    options: tuple[Option, ...] = field(default_factory=tuple)
    tier: Tier = Tier.PUBLIC
    # Defer at once ("thinking...") because the answer takes longer than Discord's 3 s.
    slow: bool = False


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
)
