"""Root outside a container gets one warning naming the unit's User=; inside one, none."""

from __future__ import annotations

from pathlib import Path

from supervisor.privilege import in_container, root_warning, unit_user

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "deploy" / "discord-bot.service"


def no_files(path: str) -> bool:
    return False


def plain_cgroup() -> str:
    return "0::/user.slice/user-1000.slice/session-2.scope\n"


def test_a_plain_host_is_not_a_container() -> None:
    assert not in_container(no_files, {}, plain_cgroup)


def test_docker_podman_nspawn_and_kubernetes_are_containers() -> None:
    assert in_container(lambda p: p == "/.dockerenv", {}, plain_cgroup)
    assert in_container(lambda p: p == "/run/.containerenv", {}, plain_cgroup)
    assert in_container(no_files, {"container": "systemd-nspawn"}, plain_cgroup)
    assert in_container(no_files, {}, lambda: "12:pids:/kubepods/besteffort/pod1/abc\n")
    assert in_container(no_files, {}, lambda: "0::/system.slice/docker-0123abcd.scope\n")


def test_root_outside_a_container_is_told_the_units_user() -> None:
    assert unit_user(UNIT) == "discordbot"
    warning = root_warning(UNIT, euid=0, container=False)
    assert warning is not None and "\n" not in warning
    assert "running as root" in warning and "User=discordbot" in warning


def test_root_in_a_container_and_any_other_user_hear_nothing() -> None:
    assert root_warning(UNIT, euid=0, container=True) is None
    assert root_warning(UNIT, euid=1000, container=False) is None


def test_without_the_unit_file_the_warning_still_says_where_to_look(tmp_path: Path) -> None:
    warning = root_warning(tmp_path / "missing.service", euid=0, container=False)
    assert warning is not None and "User=" in warning
