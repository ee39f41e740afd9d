"""The heartbeat service's settings: `[services.heartbeat.settings]`, declared once with
their bounds. All apply live (a reload: SIGHUP or `run.py reload`) except state_wait_s,
which only matters at start. Who may run /restart is the gateway's business (the
command's tier, and the gateway's owner_ids and admin_roles).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.settings import ServiceSettings, channel, setting


def _role_id(value: str) -> tuple[str, str] | None:
    if value.isdigit():
        return None
    return f"{value!r} is not a role id", 'give the role\'s id as a string of digits, e.g. "4242"'


def _http_url(value: str) -> tuple[str, str] | None:
    if value.startswith(("http://", "https://")):
        return None
    return f"{value!r} is not an http(s) URL", 'write it as "https://host/path"'


@dataclass(frozen=True)
class Settings(ServiceSettings):
    interval_s: float = setting(30.0, min=1)  # between edits of the status embed
    check_s: float = setting(5.0, min=0.1)  # between samples of the host's numbers
    alert_group_s: float = setting(5.0, min=0, max=300)  # alerts this close are one message
    admin_channel: str = setting("admin", check=channel)  # the embed's and alerts' channel
    alert_role_id: str | None = setting(None, check=_role_id)  # pinged by alerts; None: nobody
    memory_alert_percent: float = setting(90.0, min=0, max=100)
    disk_alert_percent: float = setting(90.0, min=0, max=100)
    flap_restarts: int = setting(3, min=2)  # this many restarts ...
    flap_window_s: float = setting(600.0, min=1)  # ... within this window: flapping
    deadman_url: str | None = setting(None, check=_http_url)  # pinged while healthy
    state_wait_s: float = setting(30.0, min=0, live=False)  # for persistence at start
    disk_path: str | None = setting(None)  # whose disk to watch; None: the data directory
