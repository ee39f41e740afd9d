"""Settings through the whole lifecycle, with real processes: `run.py check` and start-up
refuse a bad setting naming its key, and a reload (SIGHUP or `run.py reload`) applies
new settings to a running service without restarting it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.harness import ROOT, Running, wait_for
from tests.support.services.messages import Count

TOML = """
[supervisor]
heartbeat_interval_s = 0.2

[defaults]
backoff_initial_s = 0.1
stop_grace_s = 1
shutdown_timeout_s = 3

[services.echo]
module = "tests.support.services.echo"
[services.echo.settings]
{settings}
"""


def run_py(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args, "--data-dir", str(tmp / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_check_names_the_key_of_a_bad_setting_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "services.toml"
    config.write_text(TOML.format(settings='label = 5\nslow_start_s = -1\nlabl = "x"'))
    result = run_py(tmp_path, "check", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert any(line.startswith("services.echo.settings.label: ") for line in lines)
    assert any(line.startswith("services.echo.settings.slow_start_s: ") for line in lines)
    assert any(line.startswith("services.echo.settings.labl: unknown setting") for line in lines)


def test_the_shipped_services_toml_passes_check_with_every_setting_in_a_schema(
    tmp_path: Path,
) -> None:
    env = {"DISCORD_TOKEN": "x", "OPENAI_API_KEY": "y"}
    result = run_py(tmp_path, "check", "--config", str(ROOT / "services.toml"), env=env)
    assert result.returncode == 0, result.stderr
    assert "environment complete" in result.stdout


def test_check_catches_a_bad_time_zone_and_a_negative_interval_in_the_shipped_services(
    tmp_path: Path,
) -> None:
    text = (ROOT / "services.toml").read_text()
    text = text.replace('timezone = "UTC"', 'timezone = "Mars/Olympus"')
    text = text.replace("interval_s = 30\n", "interval_s = -5\n")
    config = tmp_path / "services.toml"
    config.write_text(text)
    env = {"DISCORD_TOKEN": "x", "OPENAI_API_KEY": "y"}
    result = run_py(tmp_path, "check", "--config", str(config), env=env)
    assert result.returncode == 2
    keys = [line.split(":")[0] for line in result.stderr.strip().splitlines()]
    assert sorted(keys) == [
        "services.heartbeat.settings.interval_s",
        "services.stats.settings.timezone",
    ], result.stderr


def test_start_up_stops_with_exit_2_and_the_key_when_a_setting_is_bad(tmp_path: Path) -> None:
    bot = Running(tmp_path, TOML.format(settings="label = 5"))
    try:
        assert bot.proc.wait(timeout=20) == 2
        out = bot.output()
        assert "services.echo.settings.label: " in out
        assert "STARTING -> FATAL (exit code 78: configuration problem)" in out
        assert "restart in" not in out  # not restarted: it cannot help
    finally:
        bot.cleanup()


def test_sighup_and_run_py_reload_apply_settings_live_without_a_restart(tmp_path: Path) -> None:
    bot = Running(tmp_path, TOML.format(settings='label = "one"'))
    try:
        bot.wait_all_running()
        pid = bot.service("echo")["pid"]
        assert bot.call("echo", Count())["label"] == "one"
        bot.config_path.write_text(TOML.format(settings='label = "two"'))
        os.kill(bot.proc.pid, signal.SIGHUP)
        wait_for(lambda: bot.call("echo", Count())["label"] == "two", 10, "the reload")
        bot.config_path.write_text(TOML.format(settings='label = "three"\nslow_start_s = 1'))
        result = run_py(tmp_path, "reload")
        assert result.returncode == 0, result.stderr
        assert "echo: applied label; slow_start_s change on restart" in result.stdout
        assert bot.call("echo", Count())["label"] == "three"
        bot.config_path.write_text(TOML.format(settings="label = 4"))
        refused = run_py(tmp_path, "reload")
        assert refused.returncode == 1
        assert "services.echo.settings.label" in refused.stdout
        assert bot.call("echo", Count())["label"] == "three"  # the old settings stay
        assert bot.service("echo")["pid"] == pid and bot.service("echo")["restarts"] == 0
        time.sleep(0.1)
        assert bot.proc.poll() is None
    finally:
        bot.cleanup()


def test_log_level_from_the_environment_and_per_service(tmp_path: Path) -> None:
    toml = TOML.format(settings="").replace(
        '[services.echo]\nmodule = "tests.support.services.echo"',
        '[services.echo]\nmodule = "tests.support.services.echo"\nlog_level = "DEBUG"',
    )
    bot = Running(tmp_path, toml, env={"LOG_LEVEL": "WARNING"})
    try:
        bot.wait_all_running()
        bot.stop()
        supervisor_log = (bot.data / "logs" / "supervisor.log").read_text()
        echo_log = (bot.data / "logs" / "echo.log").read_text()
        assert " INFO " not in supervisor_log  # LOG_LEVEL=WARNING
        assert " INFO " in echo_log  # its own log_level = "DEBUG" wins
    finally:
        bot.cleanup()


def test_a_subscription_without_its_handler_stops_check_and_start_up(tmp_path: Path) -> None:
    toml = TOML.format(settings="").replace(
        '[services.echo]\nmodule = "tests.support.services.echo"',
        '[services.echo]\nmodule = "tests.support.services.echo"\n'
        'subscribes = ["test.item", "discord.guild.ready"]',
    )
    config = tmp_path / "services.toml"
    config.write_text(toml)
    line = "echo: subscribes to discord.guild.ready but has no handler for it"
    result = run_py(tmp_path, "check", "--config", str(config))
    assert (result.returncode, result.stderr.strip()) == (2, line)
    (tmp_path / "run").mkdir()
    bot = Running(tmp_path / "run", toml)
    try:
        assert bot.proc.wait(timeout=20) == 2
        assert line in bot.output()
    finally:
        bot.cleanup()
