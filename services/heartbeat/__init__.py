"""The status embed, alerts, /status and /restart; see service.py."""

from services.heartbeat.service import build

__all__ = ["build"]
