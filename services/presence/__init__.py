"""The bot's rotating presence; see service.py."""

from services.presence.service import create_service

service = create_service()

__all__ = ["create_service", "service"]
