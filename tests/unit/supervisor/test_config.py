"""services.toml and .env validation: every problem named by key, with a fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.config import ConfigError, check_environment, load, load_dotenv, parse

ROOT = Path(__file__).resolve().parents[3]


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, Path("/x/services.toml"))
    return [str(p) for p in info.value.problems]


def test_a_valid_config_orders_dependencies_first_and_builds_the_topology() -> None:
    cfg = parse(
        {
            "defaults": {"max_restarts": 4},
            "services": {
                "llm": {"module": "m.llm", "after": ["gateway"], "subscribes": ["message.created"]},
                "gateway": {"module": "m.gw", "endpoint": "tcp://127.0.0.1:7001"},
                "stats": {"module": "m.stats", "enabled": False},
            },
        },
        Path("/x/services.toml"),
    )
    assert [s.name for s in cfg.services] == ["gateway", "llm", "stats"]
    assert [s.name for s in cfg.enabled] == ["gateway", "llm"]
    assert cfg.service("llm").policy.max_restarts == 4
    topo = cfg.topology()
    assert topo.endpoints["gateway"] == "tcp://127.0.0.1:7001"
    assert topo.endpoints["llm"].startswith("ipc://") and topo.endpoints["llm"].endswith("llm.sock")
    assert topo.subscribers == {"message.created": ["llm"]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"services": {}}, "services: no services configured"),
        ({"services": {"a": {}}}, "services.a.module: missing"),
        ({"services": {"a": {"module": "m", "restart": "always"}}}, "services.a.restart"),
        ({"services": {"a": {"module": "m", "max_restarts": -1}}}, "services.a.max_restarts"),
        ({"services": {"a": {"module": "m", "max_restarts": "5"}}}, "services.a.max_restarts"),
        ({"services": {"a": {"module": "m", "after": ["b"]}}}, "names unknown service 'b'"),
        (
            {
                "services": {
                    "a": {"module": "m", "after": ["b"]},
                    "b": {"module": "m", "after": ["a"]},
                }
            },
            "dependency cycle",
        ),
        ({"services": {"a": {"module": "m", "memroy_limit_mb": 5}}}, "services.a.memroy_limit_mb"),
        ({"services": {"a": {"module": "m", "endpoint": "http://x"}}}, "services.a.endpoint"),
        (
            {"services": {"a": {"module": "m", "settings": {"api_key": "sk-123"}}}},
            "secrets do not belong",
        ),
        ({"services": {"Bad-Name": {"module": "m"}}}, "services.Bad-Name"),
        (
            {"supervisor": {"log_format": "xml"}, "services": {"a": {"module": "m"}}},
            "supervisor.log_format",
        ),
    ],
)
def test_each_problem_names_its_key_and_a_fix(data: dict, expected: str) -> None:
    problems = problems_of(data)
    assert any(expected in p for p in problems), problems
    assert all("; fix: " in p for p in problems)


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of(
        {"services": {"a": {"module": "m", "within_s": 0, "critical": "yes"}, "b": {}}}
    )
    assert len(problems) == 3


def test_secrets_come_from_the_environment_and_are_never_echoed(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport DISCORD_TOKEN='s3cret'\nBROKEN LINE\nEMPTY=\n")
    env: dict[str, str] = {"DISCORD_TOKEN_KEEP": "x"}
    problems = load_dotenv(env_file, env)
    assert env["DISCORD_TOKEN"] == "s3cret"
    assert [p.key for p in problems] == [f"{env_file}:3"]
    cfg = parse(
        {"services": {"g": {"module": "m", "env_required": ["DISCORD_TOKEN", "EMPTY"]}}},
        tmp_path / "services.toml",
    )
    missing = check_environment(cfg, env)
    assert [p.key for p in missing] == ["EMPTY"]
    assert "s3cret" not in " ".join(str(p) for p in missing)


def run_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "services.toml"
    cfg.write_text('[services.a]\nmodule = "m"\nmax_restarts = "x"\nbogus = 1\n')
    result = run_py(
        "check", "--config", str(cfg), "--env-file", str(tmp_path / ".env"), cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("services.a.") and "fix:" in lines[0]


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "services.toml"
    cfg.write_text("[services.a\n")
    result = run_py("check", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and str(cfg) in result.stderr


def test_the_shipped_services_toml_is_valid() -> None:
    cfg = load(ROOT / "services.toml")
    assert cfg.enabled
