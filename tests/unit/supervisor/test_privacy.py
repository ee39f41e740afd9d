"""Private by default: the data dir owner-only whatever the umask, and `.env` kept closed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.privacy import secrets_file_warning, tighten

ROOT = Path(__file__).resolve().parents[3]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def open_paths(root: Path) -> list[str]:
    """Every path under root (root included) that group or others can use."""
    paths = [root, *root.rglob("*")]
    return [f"{p} {mode(p):04o}" for p in paths if not p.is_symlink() and mode(p) & 0o077]


def open_tree(root: Path) -> None:
    """A data dir as a umask of 022 leaves it: directories 0755, files 0644."""
    (root / "journal").mkdir(parents=True)
    (root / "logs").mkdir()
    for name in ("bot.sqlite3", "bot.sqlite3-wal", "journal/000001.jsonl", "logs/llm.log"):
        (root / name).write_text("private")
    (root / "tool").write_text("#!/bin/sh\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path.name == "tool" else 0o644)


def test_an_existing_0755_0644_data_dir_is_tightened_to_owner_only_and_counted_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    open_tree(data)
    assert tighten(data) == 8  # 3 directories, 5 files
    assert open_paths(data) == []
    assert mode(data) == mode(data / "journal") == 0o700
    assert mode(data / "bot.sqlite3") == mode(data / "logs/llm.log") == 0o600
    assert mode(data / "tool") == 0o700  # the owner keeps what it had
    assert tighten(data) == 0  # nothing left to say the next time


def test_symlinks_out_of_the_data_dir_are_not_followed(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    open_tree(data)
    elsewhere.mkdir(mode=0o755)
    (elsewhere / "shared.txt").write_text("not ours to close")
    (elsewhere / "shared.txt").chmod(0o644)
    (data / "link-dir").symlink_to(elsewhere)
    (data / "link-file").symlink_to(elsewhere / "shared.txt")
    tighten(data)
    assert mode(elsewhere) == 0o755
    assert mode(elsewhere / "shared.txt") == 0o644


def test_a_data_dir_someone_else_owns_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    open_tree(data)
    assert tighten(data, uid=os.geteuid() + 1) == 0
    assert mode(data / "bot.sqlite3") == 0o644


def test_a_data_dir_that_is_the_home_directory_is_never_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_tree(tmp_path / "home")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tighten(tmp_path / "home") == 0
    assert mode(tmp_path / "home/bot.sqlite3") == 0o644


MAKE_PRIVATE = """
import os, subprocess, sys
from pathlib import Path
from supervisor.privacy import make_private
os.umask(0o022)
data = Path(sys.argv[1])
print(make_private(data))
(data / "logs").mkdir()
(data / "logs" / "supervisor.log").write_text("mine")
child = "mkdir -p journal/a && echo child > journal/a/1.jsonl"
subprocess.run(["sh", "-c", child], cwd=data, check=True)
"""


def test_after_make_private_this_process_and_its_children_create_owner_only_files(
    tmp_path: Path,
) -> None:
    data = tmp_path / "a" / "data"
    out = subprocess.run(
        [sys.executable, "-c", MAKE_PRIVATE, str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "0"  # created, so nothing to tighten
    assert (data / "journal/a/1.jsonl").read_text() == "child\n"
    assert open_paths(data) == []
    assert mode(tmp_path / "a") == 0o700  # parents it had to create, too


def test_a_secrets_file_open_to_others_gets_one_line_naming_chmod_600(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DISCORD_TOKEN=s3cret\n")
    env.chmod(0o644)
    warning = secrets_file_warning(env)
    assert warning is not None and "\n" not in warning
    assert warning.endswith(f"chmod 600 {env}") and "0644" in warning
    assert "s3cret" not in warning
    env.chmod(0o640)
    assert secrets_file_warning(env) is not None  # the group is other users too
    env.chmod(0o600)
    assert secrets_file_warning(env) is None
    assert secrets_file_warning(tmp_path / "missing.env") is None


CHECK_TOML = '[services.echo]\nmodule = "tests.support.services.echo"\n'


def run_check(tmp_path: Path, env_mode: int) -> subprocess.CompletedProcess:
    (tmp_path / "services.toml").write_text(CHECK_TOML)
    env = tmp_path / ".env"
    env.write_text("OPENAI_API_KEY=sk-s3cret\n")
    env.chmod(env_mode)
    args = ["check", "--config", "services.toml", "--env-file", str(env)]
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_with_a_world_readable_env_file_warns_with_chmod_600(tmp_path: Path) -> None:
    result = run_check(tmp_path, 0o644)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "chmod 600" in line]
    assert warnings == [
        f"warning: {tmp_path / '.env'} holds the bot's secrets and other users can access it "
        f"(mode 0644): chmod 600 {tmp_path / '.env'}"
    ]
    assert "sk-s3cret" not in result.stdout + result.stderr


def test_check_with_an_owner_only_env_file_says_nothing_about_it(tmp_path: Path) -> None:
    result = run_check(tmp_path, 0o600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
