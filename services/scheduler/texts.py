"""What the scheduler writes, as pure functions of what it knows (tested without Discord).

Times are Discord's `<t:UNIX:STYLE>` markup, which each reader's app shows in their own
time zone: F long date and time, f short, t time only, R relative ("in 10 minutes").
"""

from __future__ import annotations

from typing import Any

from protocol.discord import MESSAGE_LIMIT
from services.scheduler.store import Event, Reminder
from services.scheduler.when import Repeat


def stamp(at: float, style: str = "F") -> str:
    return f"<t:{int(at)}:{style}>"


def reminder(r: Reminder) -> str:
    """The reminder itself: it names its person (in a channel) and says when it is late.
    The same reminder always reads the same (how an interrupted post is recognised)."""
    mention = "" if r.private or r.channel_id is None else f"<@{r.user_id}> "
    late = f" (late: it was due {stamp(r.due_at, 'f')})" if r.late else ""
    return f"{mention}⏰ {r.text}{late}"[:MESSAGE_LIMIT]


def scheduled(r_id: int, at: float, repeat: Repeat | None, private: bool, text: str) -> str:
    where = "by DM" if private else "here"
    every = f", then {repeat.describe()}" if repeat else ""
    return (
        f"⏰ I'll remind you {where} on {stamp(at)} ({stamp(at, 'R')}){every}: {text} "
        f"· reminder #{r_id} (`/reminders cancel:{r_id}` cancels it)"
    )[:MESSAGE_LIMIT]


def reminder_list(reminders: list[Reminder], tz: str) -> str:
    if not reminders:
        return "You have no reminders. `/remind when:in 10 minutes text:stretch` makes one."
    lines = [f"Your reminders (times read in {tz}):"]
    for r in reminders:
        extra = [Repeat.from_json(r.repeat).describe()] if r.repeat else []
        extra += ["by DM"] if r.private else []
        tail = f" · {', '.join(extra)}" if extra else ""
        lines.append(f"`#{r.id}` {stamp(r.due_at)} ({stamp(r.due_at, 'R')}) {r.text[:100]}{tail}")
    lines.append("Cancel one with `/reminders cancel:NUMBER`.")
    return _fit(lines)


def poll_results(
    question: str, answers: list[tuple[int, str]], voters: dict[str, list[str]]
) -> str:
    """The results message: the winner (or the tie) and every answer's count."""
    counts = [(text, len(voters.get(str(answer_id), []))) for answer_id, text in answers]
    total = sum(n for _, n in counts)
    if total == 0:
        return f"📊 The poll **{question}** has ended: nobody voted."[:MESSAGE_LIMIT]
    top = max(n for _, n in counts)
    winners = [text for text, n in counts if n == top]
    if len(winners) == 1:
        share = round(100 * top / total)
        head = f"**{winners[0]}** wins with {_votes(top)} ({share}%)"
    else:
        head = f"a tie between {_and(f'**{w}**' for w in winners)} with {_votes(top)} each"
    tally = " · ".join(f"{text}: {n}" for text, n in counts)
    return f"📊 The poll **{question}** has ended: {head}.\n{tally} ({_votes(total)} in all)"[
        :MESSAGE_LIMIT
    ]


def event_created(event: dict[str, Any], lead_min: float) -> str:
    end = f" to {stamp(event['end'], 't')}" if event.get("end") else ""
    where = f" · {event['location']}" if event.get("location") else ""
    remind = (
        f"\nMark yourself interested to be reminded {lead_min:g} minutes before it starts."
        if lead_min > 0
        else ""
    )
    return f"📅 **{event['name']}** {stamp(event['start'])}{end}{where}{remind}"[:MESSAGE_LIMIT]


def event_list(events: list[dict[str, Any]]) -> str:
    if not events:
        return "No upcoming events. `/event create name:... start:...` makes one."
    lines = ["Upcoming events:"]
    for e in events:
        where = f" · {e['location']}" if e.get("location") else ""
        count = e.get("user_count")
        interested = f" · {count} interested" if isinstance(count, int) else ""
        lines.append(
            f"**{e['name']}** {stamp(e['start'])} ({stamp(e['start'], 'R')}){where}{interested}"
        )
    lines.append("`/events ics:True` gives them as a calendar file.")
    return _fit(lines)


def event_reminder(event: Event, user_ids: list[str]) -> str:
    where = f" · {event.location}" if event.location else ""
    mentions = " ".join(f"<@{u}>" for u in user_ids)
    return (
        f"⏰ **{event.name}** starts {stamp(event.start, 'R')} ({stamp(event.start)}){where}\n"
        f"{mentions}"
    )[:MESSAGE_LIMIT]


def _votes(n: int) -> str:
    return f"{n} vote" if n == 1 else f"{n} votes"


def _and(items: Any) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _fit(lines: list[str]) -> str:
    """As many whole lines as fit in one message."""
    out: list[str] = []
    for line in lines:
        if sum(len(x) + 1 for x in out) + len(line) > MESSAGE_LIMIT - 20:
            out.append("…")
            break
        out.append(line)
    return "\n".join(out)
