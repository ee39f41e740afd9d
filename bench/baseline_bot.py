"""The single-process baseline: one py-cord bot writing each message with peewee directly.

This is how most bots store messages (llmcord-style single process): on_message,
one INSERT, SQLite in WAL mode. bench/messages.py runs it against the same
emulator as the project and compares.

    python -m bench.baseline_bot API_BASE TOKEN DB_PATH
"""

from __future__ import annotations

import sys

import discord
import peewee

db = peewee.SqliteDatabase(None, pragmas={"journal_mode": "wal", "synchronous": "normal"})


class StoredMessage(peewee.Model):
    id = peewee.CharField(primary_key=True)
    channel_id = peewee.CharField()
    author_id = peewee.CharField()
    content = peewee.TextField()

    class Meta:
        database = db
        table_name = "messages"


def main(api_base: str, token: str, path: str) -> None:
    discord.http.Route.API_BASE_URL = api_base
    db.init(path)
    db.create_tables([StoredMessage])
    intents = discord.Intents.default()
    intents.message_content = True
    client = discord.Client(intents=intents, cache_default_sounds=False)

    @client.event
    async def on_message(message: discord.Message) -> None:
        StoredMessage.insert(
            id=str(message.id),
            channel_id=str(message.channel.id),
            author_id=str(message.author.id),
            content=message.content,
        ).on_conflict_ignore().execute()

    client.run(token)


if __name__ == "__main__":
    main(*sys.argv[1:4])
