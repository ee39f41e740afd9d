"""Building the prompt: which messages the model sees, in which roles, within a budget.

The conversation is the reply chain when the user replied to a message, else the
channel's recent messages; the bot's own messages are the assistant's turns. The newest
turns are kept when the budget runs out, and the triggering message always is.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.llm.settings import Settings

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb; no tokenizer dependency for an estimate
MESSAGE_OVERHEAD = 4  # framing tokens per message
PROMPT_OVERHEAD = 3


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def message_tokens(content: str) -> int:
    return MESSAGE_OVERHEAD + estimate_tokens(content)


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str
    author: str = ""
    id: str = ""


@dataclass(frozen=True)
class Conversation:
    system: str
    turns: tuple[Turn, ...]

    def trimmed(self, budget_tokens: int) -> Conversation:
        """The newest turns that fit in the budget; the last (triggering) one always stays."""
        if not self.turns:
            return self
        used = (
            PROMPT_OVERHEAD + message_tokens(self.system) + message_tokens(self.turns[-1].content)
        )
        kept = [self.turns[-1]]
        for turn in reversed(self.turns[:-1]):
            used += message_tokens(turn.content)
            if used > budget_tokens:
                break
            kept.append(turn)
        return Conversation(self.system, tuple(reversed(kept)))

    def tokens(self) -> int:
        return PROMPT_OVERHEAD + sum(message_tokens(m["content"]) for m in self.to_messages())

    def to_messages(self) -> list[dict[str, str]]:
        """OpenAI chat messages; with several people talking, each line says who spoke."""
        humans = {t.author for t in self.turns if t.role == "user"}
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for t in self.turns:
            content = t.content
            if t.role == "user" and len(humans) > 1 and t.author:
                content = f"{t.author}: {content}"
            messages.append({"role": t.role, "content": content})
        return messages


def strip_mention(content: str, bot_id: str | None) -> str:
    """`<@123> hi` -> `hi`: the model need not see its own ping."""
    if bot_id:
        content = re.sub(rf"<@!?{re.escape(bot_id)}>", "", content)
    return content.strip()


def turns_from_rows(
    rows: Iterable[Mapping[str, Any]],
    bot_id: str | None,
    *,
    exclude_id: str,
    before_ts: float,
    after_ts: float | None,
) -> list[Turn]:
    """Stored messages (oldest first) to turns; consecutive bot messages are one answer."""
    turns: list[Turn] = []
    for row in rows:
        created = float(row.get("created_at") or 0.0)
        if row.get("id") == exclude_id or row.get("deleted") or created > before_ts:
            continue
        if after_ts is not None and created <= after_ts:
            continue
        mine = bot_id is not None and str(row.get("author_id")) == bot_id
        if row.get("author_bot") and not mine:
            continue  # other bots are noise (and could talk us into a loop)
        content = strip_mention(str(row.get("content") or ""), bot_id)
        if not content:
            continue
        role = "assistant" if mine else "user"
        if role == "assistant" and turns and turns[-1].role == "assistant":
            last = turns.pop()
            content = last.content + "\n" + content
        turns.append(Turn(role, content, str(row.get("author_name") or ""), str(row.get("id"))))
    return turns


@dataclass(frozen=True)
class Place:
    """Where and with whom the bot is talking: fills the system prompt's placeholders."""

    user: str
    channel_id: str | None = None
    channel: str = ""
    guild_id: str | None = None
    guild: str = ""


def system_prompt(settings: Settings, place: Place, today: dt.date) -> str:
    """The channel's prompt, else the guild's, else the default; placeholders filled."""
    prompts = settings.system_prompts
    template = settings.system_prompt
    for key in (place.channel_id, place.channel, place.guild_id, place.guild):
        if key and key in prompts:
            template = prompts[key]
            break
    try:
        return template.format(
            date=today.isoformat(),
            guild=place.guild or ("a direct message" if place.guild_id is None else "this server"),
            channel=place.channel or ("DM" if place.guild_id is None else "this channel"),
            user=place.user,
        )
    except (KeyError, ValueError, IndexError, AttributeError):
        # The schema checks the placeholders, not what follows them ({user.x}, {date:%Y}):
        # better the raw prompt than no answer.
        return template
