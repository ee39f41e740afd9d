"""The slash commands the bot offers, as data the gateway registers with Discord.

Which service answers which command is set in services.toml (`commands = [...]`),
so the data flow stays visible in one place; the gateway builds the py-cord
commands from this catalogue and routes each invocation to its owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    options: tuple[Option, ...] = field(default_factory=tuple)
    # Defer at once ("thinking...") because the answer takes longer than Discord's 3 s.
    slow: bool = False


CATALOGUE: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "ask",
            "Ask the bot's language model",
            (Option("prompt", "string", "What to ask"),),
            slow=True,
        ),
        Command("reset", "Start a fresh conversation in this channel"),
        Command("usage", "Recent language model usage in this server"),
        Command(
            "stats",
            "Joins, leaves and bans for a day",
            (Option("date", "string", "YYYY-MM-DD (default: yesterday)", required=False),),
        ),
        Command("status", "The bot's health"),
        Command(
            "restart",
            "Restart one of the bot's services (admins)",
            (Option("service", "string", "Service name"),),
        ),
    )
}
