"""Host and per-process numbers from psutil, without blocking the event loop.

`cpu_percent(interval=None)` compares with the previous call instead of
sleeping, so the first reading of a process is 0 and later ones are the
average since the last check. Process objects are kept per pid for that.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass
class HostSample:
    uptime_s: float
    cpu_percent: float
    memory_percent: float
    memory_used_mb: float
    memory_total_mb: float
    disk_percent: float
    disk_free_gb: float
    load: tuple[float, float, float]


def host_sample(disk_path: Path) -> HostSample:
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(str(disk_path))
    return HostSample(
        uptime_s=time.time() - psutil.boot_time(),
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_percent=mem.percent,
        memory_used_mb=(mem.total - mem.available) / 1e6,
        memory_total_mb=mem.total / 1e6,
        disk_percent=disk.percent,
        disk_free_gb=disk.free / 1e9,
        load=os.getloadavg(),
    )


class ProcessCpu:
    """CPU percent per pid since the previous reading; forgets pids that are gone."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def read(self, pids: list[int]) -> dict[int, float | None]:
        out: dict[int, float | None] = {}
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                out[pid] = proc.cpu_percent(interval=None)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                out[pid] = None
        for pid in set(self._procs) - set(pids):
            del self._procs[pid]
        return out


def duration(seconds: float | None) -> str:
    """`3d 4h`, `5h 12m`, `7m 3s`: short enough for an embed column."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s}s" if minutes else f"{s}s"


def service_pids(services: list[dict[str, Any]]) -> list[int]:
    return [int(s["pid"]) for s in services if s.get("pid")]
