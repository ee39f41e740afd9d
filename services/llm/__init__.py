"""The llm service: a language model answering in Discord (see service.py)."""

from services.llm.service import build

__all__ = ["build"]
