"""The sandbox listens on 127.0.0.1 unless told otherwise, and says so when it is."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from sandbox.run import is_loopback, run_sandbox
from supervisor.config import load

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        yield lines
    finally:
        logger.remove(sink)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port already listened on from every address, so the sandbox stops right there."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


def test_loopback_addresses_are_told_from_the_others() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


async def test_a_host_beyond_loopback_is_said_in_one_log_line(
    tmp_path: Path,
    taken_port: int,
    log_lines: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = load(ROOT / "services.toml", tmp_path / "data")
    assert await run_sandbox(config, taken_port, "0.0.0.0") == 2
    said = [line for line in log_lines if "--host 0.0.0.0" in line]
    assert len(said) == 1 and "reachable beyond this machine" in said[0]
    assert f"cannot listen on 0.0.0.0:{taken_port}" in capsys.readouterr().err


async def test_the_default_host_says_nothing_about_it(
    tmp_path: Path,
    taken_port: int,
    log_lines: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = load(ROOT / "services.toml", tmp_path / "data")
    assert await run_sandbox(config, taken_port) == 2
    assert [line for line in log_lines if "--host" in line] == []
    assert f"cannot listen on 127.0.0.1:{taken_port}" in capsys.readouterr().err
