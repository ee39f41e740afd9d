"""The gateway service: the only holder of the Discord connection."""

from services.gateway.service import service

__all__ = ["service"]
