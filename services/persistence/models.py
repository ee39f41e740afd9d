"""The schema: peewee models, and the ordered migrations that bring a database up to date.

Every stored value is a function of the event bodies alone (no wall clock), so
replaying the journal into an empty database reproduces the same rows. There are
no foreign keys on purpose: Discord events arrive in any order (an edit before its
create, a member event before the user is known), and a row must never be refused
because its neighbour has not arrived yet.

Models carry no database; `bind_models` attaches them to the one database a
process uses (the service's, or the rebuild's target).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from peewee import (
    BigIntegerField,
    BooleanField,
    CompositeKey,
    Database,
    DoubleField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migrations


class BaseModel(Model):
    class Meta:
        legacy_table_names = False


class Guild(BaseModel):
    id = TextField(primary_key=True)
    first_seen_at = DoubleField()

    class Meta:
        table_name = "guilds"


class Channel(BaseModel):
    id = TextField(primary_key=True)
    guild_id = TextField(null=True)  # None: a DM channel
    name = TextField(null=True)
    is_dm = BooleanField(null=True)
    first_seen_at = DoubleField()

    class Meta:
        table_name = "channels"


class User(BaseModel):
    id = TextField(primary_key=True)
    name = TextField()
    bot = BooleanField(null=True)
    seen_at = DoubleField()  # time of the event the name and flag come from

    class Meta:
        table_name = "users"


class Member(BaseModel):
    """A user's latest known standing in a guild (the history is in `member_events`)."""

    guild_id = TextField()
    user_id = TextField()
    status = TextField()  # kind of the latest event: joined | left | banned | unbanned
    updated_at = DoubleField()
    joined_at = DoubleField(null=True)

    class Meta:
        table_name = "members"
        primary_key = CompositeKey("guild_id", "user_id")


class StoredMessage(BaseModel):
    """A Discord message. A row known only from an edit or a delete has `created_at`
    None until its create arrives and fills in the rest."""

    id = TextField(primary_key=True)
    channel_id = TextField()
    guild_id = TextField(null=True)
    author_id = TextField(null=True)
    author_name = TextField(null=True)
    author_bot = BooleanField(null=True)
    content = TextField(null=True)
    original_content = TextField(null=True)  # the content before the first edit
    created_at = DoubleField(null=True)
    edited_at = DoubleField(null=True)
    deleted = BooleanField(default=False)
    deleted_at = DoubleField(null=True)
    reply_to_id = TextField(null=True)
    reply_to_author_id = TextField(null=True)
    is_dm = BooleanField(null=True)
    mention_everyone = BooleanField(null=True)
    mentions_bot = BooleanField(null=True)
    mentions = TextField(null=True)  # JSON lists and objects, as text on every backend
    mention_roles = TextField(null=True)
    attachments = TextField(null=True)

    class Meta:
        table_name = "messages"
        indexes = ((("channel_id", "created_at"), False),)


class MessageEdit(BaseModel):
    """Each edit's new content: the history behind `messages.content`."""

    message_id = TextField()
    edited_at = DoubleField()
    content = TextField()

    class Meta:
        table_name = "message_edits"
        primary_key = CompositeKey("message_id", "edited_at")


class MemberEvent(BaseModel):
    guild_id = TextField()
    user_id = TextField()
    kind = TextField()  # joined | left | banned | unbanned
    at = DoubleField()
    username = TextField()
    bot = BooleanField(null=True)  # ban events do not say

    class Meta:
        table_name = "member_events"
        primary_key = CompositeKey("guild_id", "user_id", "kind", "at")
        indexes = ((("guild_id", "at"), False),)


class KvEntry(BaseModel):
    """Small state other services keep across restarts; `value` is JSON text."""

    namespace = TextField()
    key = TextField()
    value = TextField()

    class Meta:
        table_name = "kv"
        primary_key = CompositeKey("namespace", "key")


class LlmExchangeRow(BaseModel):
    id = TextField(primary_key=True)
    guild_id = TextField(null=True)
    channel_id = TextField(null=True)
    user_id = TextField()
    model = TextField()
    prompt_tokens = BigIntegerField()
    completion_tokens = BigIntegerField()
    latency_ms = DoubleField()
    outcome = TextField()
    at = DoubleField(index=True)
    provider = TextField(null=True)  # who answered ("" none; NULL: stored before v2)

    class Meta:
        table_name = "llm_exchanges"


class SchemaVersion(BaseModel):
    version = IntegerField(primary_key=True)
    applied_at = DoubleField()

    class Meta:
        table_name = "schema_version"


DATA_MODELS: list[type[Model]] = [
    Guild,
    Channel,
    User,
    Member,
    StoredMessage,
    MessageEdit,
    MemberEvent,
    KvEntry,
    LlmExchangeRow,
]
MODELS: list[type[Model]] = [SchemaVersion, *DATA_MODELS]


def bind_models(db: Database) -> None:
    db.bind(MODELS, bind_refs=False, bind_backrefs=False)


def _initial_schema(db: Database) -> None:
    db.create_tables(DATA_MODELS, safe=True)


def _exchange_provider(db: Database) -> None:
    migrator = SchemaMigrator.from_database(db)
    run_migrations(migrator.add_column("llm_exchanges", "provider", TextField(null=True)))


# Ordered; append only. A fresh database gets the current models at once and the
# latest version; an older one runs every migration above its version, in order.
# Later entries use playhouse.migrate (e.g. migrator.add_column) on `db`.
Migration = tuple[int, str, Callable[[Database], None]]
MIGRATIONS: list[Migration] = [
    (1, "initial schema", _initial_schema),
    (2, "llm_exchanges.provider: which provider answered", _exchange_provider),
]
LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(db: Database) -> tuple[int, int]:
    """Create or upgrade the schema; returns (version before, version after)."""
    with db.atomic():
        db.create_tables([SchemaVersion], safe=True)
        current = (
            SchemaVersion.select(SchemaVersion.version)
            .order_by(SchemaVersion.version.desc())
            .scalar()
        )
        if current is None:
            _initial_schema(db)
            SchemaVersion.create(version=LATEST_VERSION, applied_at=time.time())
            return 0, LATEST_VERSION
        for version, _description, apply in MIGRATIONS:
            if version > current:
                apply(db)
                SchemaVersion.create(version=version, applied_at=time.time())
        return current, max(current, LATEST_VERSION)
