"""Discord's rules for a message body, checked where Discord checks them.

A create (channel message, interaction response, follow-up) and an edit (channel message,
original response, follow-up) are refused with the error JSON Discord sends: 50035
"Invalid Form Body" naming the field (content over 2,000 characters, more than 10 embeds,
an embed over its limits, malformed ``allowed_mentions``), or 50006 for a message that
would have nothing to show. Limits: https://discord.com/developers/docs/resources/message
(Create Message, Allowed Mentions Object) and .../resources/message#embed-object-embed-limits.
"""

from __future__ import annotations

from typing import Any

from .world import FormError, WorldError

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_MENTION_IDS = 100
MENTION_TYPES = ("roles", "users", "everyone")
#: Embed limits: each text field, and all of them together in one message.
EMBED_TEXT = {"title": 256, "description": 4096}
MAX_FIELDS = 25
FIELD_TEXT = {"name": 256, "value": 1024}
MAX_EMBED_TOTAL = 6000

EMPTY = "Cannot send an empty message"


def check_message(body: dict[str, Any]) -> None:
    """The fields of a create or edit body that Discord validates (absent ones are fine)."""
    content = body.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise FormError("content", "BASE_TYPE_STRING", "Must be a string.")
        if len(content) > MAX_CONTENT:
            raise FormError(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
            )
    embeds = body.get("embeds")
    if embeds is not None:
        if not isinstance(embeds, list) or not all(isinstance(e, dict) for e in embeds):
            raise FormError("embeds", "BASE_TYPE_ARRAY", "Must be an array of embed objects.")
        if len(embeds) > MAX_EMBEDS:
            raise FormError(
                "embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length."
            )
        total = sum(_check_embed(i, e) for i, e in enumerate(embeds))
        if total > MAX_EMBED_TOTAL:
            raise FormError(
                "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
            )
    flags = body.get("flags")
    if flags is not None and (isinstance(flags, bool) or not isinstance(flags, int)):
        raise FormError("flags", "NUMBER_TYPE_COERCE", f"Value {flags!r} is not int.")
    check_allowed_mentions(body.get("allowed_mentions"))


def check_allowed_mentions(allowed: Any) -> None:
    """The Allowed Mentions object: ``parse`` from roles/users/everyone, and ``users`` or
    ``roles`` lists only when their type is not also in ``parse`` (mutually exclusive)."""
    if allowed is None:
        return
    if not isinstance(allowed, dict):
        raise FormError("allowed_mentions", "MODEL_TYPE_CONVERT", "Only dictionaries may be used.")
    parse = allowed.get("parse", [])
    if not isinstance(parse, list):
        raise FormError("allowed_mentions.parse", "BASE_TYPE_ARRAY", "Must be an array.")
    for i, kind in enumerate(parse):
        if kind not in MENTION_TYPES:
            raise FormError(
                f"allowed_mentions.parse.{i}",
                "BASE_TYPE_CHOICES",
                f"Value must be one of {set(MENTION_TYPES)}.",
            )
    for kind in ("users", "roles"):
        ids = allowed.get(kind)
        if ids is None:
            continue
        if not isinstance(ids, list) or not all(
            isinstance(x, str | int) and str(x).isdigit() for x in ids
        ):
            raise FormError(
                f"allowed_mentions.{kind}", "BASE_TYPE_ARRAY", "Must be an array of snowflakes."
            )
        if len(ids) > MAX_MENTION_IDS:
            raise FormError(
                f"allowed_mentions.{kind}",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_MENTION_IDS} or fewer in length.",
            )
        if ids and kind in parse:
            raise FormError(
                "allowed_mentions",
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
            )
    replied = allowed.get("replied_user")
    if replied is not None and not isinstance(replied, bool):
        raise FormError(
            "allowed_mentions.replied_user", "BASE_TYPE_BOOLEAN", "Must be either true or false."
        )


def _check_embed(index: int, embed: dict[str, Any]) -> int:
    """Refuses an embed over Discord's limits; answers how many characters it counts."""
    total = 0
    for key, limit in EMBED_TEXT.items():
        text = embed.get(key)
        if text is None:
            continue
        if not isinstance(text, str) or len(text) > limit:
            raise FormError(
                f"embeds.{index}.{key}",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {limit} or fewer in length.",
            )
        total += len(text)
    fields = embed.get("fields") or []
    if not isinstance(fields, list) or len(fields) > MAX_FIELDS:
        raise FormError(
            f"embeds.{index}.fields",
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_FIELDS} or fewer in length.",
        )
    for j, field in enumerate(fields):
        if not isinstance(field, dict):
            raise FormError(f"embeds.{index}.fields.{j}", "MODEL_TYPE_CONVERT", "Not an object.")
        for key, limit in FIELD_TEXT.items():
            text = field.get(key)
            if not isinstance(text, str) or not 1 <= len(text) <= limit:
                raise FormError(
                    f"embeds.{index}.fields.{j}.{key}",
                    "BASE_TYPE_BAD_LENGTH",
                    f"Must be between 1 and {limit} in length.",
                )
            total += len(text)
    for part, key in (("footer", "text"), ("author", "name")):
        sub = embed.get(part)
        if isinstance(sub, dict) and isinstance(sub.get(key), str):
            total += len(sub[key])
    return total


def has_something_to_show(
    content: str | None,
    embeds: list[Any] | None,
    attachments: list[Any] | None,
    *,
    components: list[Any] | None = None,
    sticker_ids: list[Any] | None = None,
    poll: Any = None,
) -> bool:
    return bool(content or embeds or attachments or components or sticker_ids or poll)


def refuse_empty() -> WorldError:
    """Discord's answer to a message with no content, embeds, attachments, poll..."""
    return WorldError(EMPTY, 50006)
