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
