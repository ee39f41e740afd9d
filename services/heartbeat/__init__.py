"""The status embed, alerts, /status and /restart; see service.py."""

from services.heartbeat.service import create_service

service = create_service()

__all__ = ["create_service", "service"]
