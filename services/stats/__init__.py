"""Counter channels and member reports; see service.py."""

from services.stats.service import build

__all__ = ["build"]
