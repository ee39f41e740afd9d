"""The gateway service: the only holder of the Discord connection (see service.py)."""

from services.gateway.service import build

__all__ = ["build"]
