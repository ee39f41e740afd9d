"""Counter channels and member reports; see service.py."""

from services.stats.service import create_service

service = create_service()

__all__ = ["create_service", "service"]
