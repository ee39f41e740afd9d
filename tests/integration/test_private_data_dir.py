"""`python run.py` tightens a data dir an older run left open, says so once, and whatever
its umask, everything its services create is owner-only."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.support.harness import Running

TOML = """
[services.echo]
module = "tests.support.services.echo"
"""

SAID = "paths were open to other users, now owner-only"


def open_to_others(root: Path) -> list[str]:
    return [
        f"{p} {stat.S_IMODE(p.lstat().st_mode):04o}"
        for p in [root, *root.rglob("*")]
        if not p.is_symlink() and p.lstat().st_mode & 0o077
    ]


def run_once(tmp_path: Path) -> str:
    running = Running(tmp_path, TOML, umask=0o022)
    try:
        running.wait_all_running()
        assert running.stop() == 0
        return running.output()
    finally:
        running.cleanup()


def test_an_open_data_dir_is_tightened_with_one_log_line_and_then_stays_quiet(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "bot.sqlite3").write_text("every message the bot has seen")
    (data / "logs" / "supervisor.log").write_text("an older run\n")
    for path in (data, data / "logs"):
        path.chmod(0o755)
    for path in (data / "bot.sqlite3", data / "logs" / "supervisor.log"):
        path.chmod(0o644)

    first = [line for line in run_once(tmp_path).splitlines() if SAID in line]
    assert len(first) == 1 and f"data dir {data}: 4 {SAID}" in first[0]
    assert open_to_others(data) == []
    assert (data / "run").is_dir()  # the run created things too, all owner-only

    second = [line for line in run_once(tmp_path).splitlines() if SAID in line]
    assert second == []
