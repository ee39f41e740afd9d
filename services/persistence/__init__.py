"""Persistence: stores Discord and llm events in SQL (SQLite or PostgreSQL) behind a JSONL
journal, and answers the store.* queries. See docs/persistence.md."""

from services.persistence.service import build

__all__ = ["build"]
