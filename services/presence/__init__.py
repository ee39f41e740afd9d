"""The bot's rotating presence; see service.py."""

from services.presence.service import build

__all__ = ["build"]
