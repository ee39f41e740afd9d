"""Root is never needed: the bot is a network client that writes its own data dir.

Run as root on a host, a bug in any service (each parses what strangers send on
Discord) would own the machine, so start-up says so once. In a container root is
the norm and the container is the boundary, so nothing is said there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

CONTAINER_FILES = ("/.dockerenv", "/run/.containerenv")  # docker, podman
CGROUP_HINTS = ("docker", "kubepods", "containerd", "libpod", "lxc")


def _pid1_cgroup() -> str:
    try:
        return Path("/proc/1/cgroup").read_text()
    except OSError:
        return ""


def in_container(
    exists: Callable[[str], bool] = os.path.exists,
    environ: Mapping[str, str] = os.environ,
    cgroup: Callable[[], str] = _pid1_cgroup,
) -> bool:
    """The usual signs: docker's and podman's marker files, the `container` variable
    (systemd-nspawn, podman, lxc), or a container runtime named in pid 1's cgroup."""
    if any(exists(path) for path in CONTAINER_FILES) or environ.get("container"):
        return True
    text = cgroup()
    return any(hint in text for hint in CGROUP_HINTS)


def unit_user(unit_file: Path) -> str | None:
    """The `User=` the shipped systemd unit runs the bot as."""
    try:
        lines = unit_file.read_text().splitlines()
    except OSError:
        return None
    users = [line.split("=", 1)[1].strip() for line in lines if line.startswith("User=")]
    return users[0] if users else None


def root_warning(
    unit_file: Path, euid: int | None = None, container: bool | None = None
) -> str | None:
    """One line when running as root outside a container, naming the user to run as."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    if in_container() if container is None else container:
        return None
    user = unit_user(unit_file)
    unit = f"{unit_file} runs it with User={user}" if user else f"see User= in {unit_file}"
    return (
        "running as root outside a container: the bot needs no privileges; "
        f"run it as an unprivileged user ({unit})"
    )
