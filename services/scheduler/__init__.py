from services.scheduler.service import build

__all__ = ["build"]
