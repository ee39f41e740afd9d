"""Log lines: every line names its service; JSON for machines; journald priorities."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import logging, sys
from loguru import logger
from supervisor import logs
logs.setup("llm", sys.argv[1], None)
logger.info("hello")
logger.error("broken")
logging.getLogger("discord.gateway").warning("from py-cord")
"""


def run(fmt: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin", **(env or {})},
        timeout=30,
    )
    return out.stderr.strip().splitlines()


def test_text_lines_name_the_service() -> None:
    lines = run("text")
    assert len(lines) == 3
    assert all(" llm " in line for line in lines)
    assert "discord.gateway: from py-cord" in lines[2]


def test_json_lines_parse_and_carry_level_and_service() -> None:
    records = [json.loads(line) for line in run("json")]
    assert [(r["service"], r["level"]) for r in records] == [
        ("llm", "INFO"),
        ("llm", "ERROR"),
        ("llm", "WARNING"),
    ]
    assert records[0]["msg"] == "hello"


def test_under_journald_lines_get_priorities_and_no_timestamps() -> None:
    lines = run("text", {"JOURNAL_STREAM": "8:1234"})
    assert lines == ["<6>llm: hello", "<3>llm: broken", "<4>llm: discord.gateway: from py-cord"]


def test_log_format_json_reaches_the_services_too(tmp_path) -> None:
    from tests.support.harness import Running

    toml = '[services.echo]\nmodule = "tests.support.services.echo"\n'
    bot = Running(tmp_path, toml, args=("--log-format", "json"))
    try:
        bot.wait_all_running()
    finally:
        bot.stop()
        bot.cleanup()
    records = [json.loads(line) for line in bot.output().splitlines() if line.strip()]
    assert {"supervisor", "echo"} <= {r["service"] for r in records}
