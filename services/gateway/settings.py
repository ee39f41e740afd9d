"""The gateway's settings (services.toml `[services.gateway.settings]`)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.settings import ServiceSettings, setting


@dataclass(frozen=True)
class Settings(ServiceSettings):
    # Discord asks for a pause before re-identifying after an invalid session.
    identify_delay_s: float = setting(5.0, min=0, max=60, live=False)
    request_timeout_s: float = setting(15.0, min=1, max=120)
    owner_ids: tuple[str, ...] = setting(factory=tuple)  # the `owner` tier
    admin_roles: tuple[str, ...] = setting(factory=tuple)  # role ids counted as admins
    # After a gap (Discord refused to RESUME), what is read back from Discord's history:
    # at most this many messages per channel, and in all.
    backfill_channel_limit: int = setting(1000, min=0, max=100_000)
    backfill_total_limit: int = setting(10_000, min=0, max=1_000_000)
    # A pause between two history pages: the backfill leaves Discord's rate limits to
    # the live work (answers, edits).
    backfill_page_pause_s: float = setting(0.1, min=0, max=10)
