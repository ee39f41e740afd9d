"""Rebuild the database from the journal: the way back after losing the database.

    python -m services.persistence.rebuild --data-dir DIR [--database-url URL]

Replays every journal file under DIR/journal, in order, into an empty database
(DIR/bot.sqlite3 by default, or the URL; DATABASE_URL is honoured too), through
the same code the service stores with, so the rows come out the same. It refuses
a database that already holds data: move the old one aside first. Stop the
service while this runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from protocol.messages import Message, MessageError, decode
from protocol.store import KvSet
from services.persistence.journal import JournalRecord, journal_files, read_journal
from services.persistence.models import DATA_MODELS
from services.persistence.store import Store, describe_url, open_database

BATCH = 500  # as the runtime hands them to the service


@dataclass
class RebuildReport:
    files: int = 0
    events: int = 0
    stored: int = 0
    skipped: int = 0


class NotEmpty(Exception):
    """The target database already holds data."""


def _batches(records: Iterator[JournalRecord]) -> Iterator[tuple[str, list[Message], int]]:
    """Consecutive records of one type, decoded, up to BATCH at a time (with a count of
    those that no longer decode)."""
    type_name, batch, bad = "", [], 0
    for record in records:
        if batch and (record.type != type_name or len(batch) >= BATCH):
            yield type_name, batch, bad
            batch, bad = [], 0
        type_name = record.type
        try:
            batch.append(decode(record.type, record.body))
        except MessageError as exc:
            logger.warning("journal {}: skipped: {}", record.source, exc)
            bad += 1
    if batch or bad:
        yield type_name, batch, bad


def rebuild(data_dir: Path, database_url: str | None = None) -> RebuildReport:
    """Replay the journal into an empty database; raises NotEmpty if it is not empty."""
    db = open_database(database_url, data_dir / "bot.sqlite3", synchronous="OFF")
    store = Store(db)
    report = RebuildReport(files=len(journal_files(data_dir / "journal")))
    try:
        store.open()
        if any(model.select().exists() for model in DATA_MODELS):
            raise NotEmpty("the target database already holds data: move it aside first")
        for type_name, events, bad in _batches(read_journal(data_dir / "journal")):
            report.events += len(events) + bad
            report.skipped += bad
            if type_name == KvSet.TYPE:
                for req in events:
                    store.kv_set(req)  # type: ignore[arg-type]
                report.stored += len(events)
            elif type_name in store.event_types:
                result = store.apply(type_name, events)
                report.stored += result.stored
                report.skipped += result.skipped
            else:
                logger.warning("journal: {} {} events of an unknown type", len(events), type_name)
                report.skipped += len(events)
    finally:
        store.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.persistence.rebuild", description=__doc__.splitlines()[0]
    )
    p.add_argument("--data-dir", type=Path, required=True, help="holds journal/ (and bot.sqlite3)")
    p.add_argument("--database-url", default=None, help="default: DATABASE_URL, else SQLite")
    args = p.parse_args(argv)
    url = args.database_url or os.environ.get("DATABASE_URL") or None
    target = describe_url(url) if url else str(args.data_dir / "bot.sqlite3")
    if not journal_files(args.data_dir / "journal"):
        print(f"no journal files in {args.data_dir / 'journal'}", file=sys.stderr)
        return 1
    try:
        report = rebuild(args.data_dir, url)
    except NotEmpty as exc:
        print(f"{target}: {exc}", file=sys.stderr)
        return 1
    print(
        f"rebuilt {target} from {report.files} journal files: {report.events} events, "
        f"{report.stored} stored, {report.skipped} skipped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
