"""services.toml: the child specs, read and validated once, in one place.

Every problem becomes one `ConfigProblem` naming the key, what is wrong and
how to fix it; `load` collects them all so `run.py check` can print every
problem at once instead of one per attempt. Secrets are never read from the
toml: a service names the environment variables it needs in `env_required`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.bus import Topology
from protocol.commands import owned_by
from protocol.messages import SUPERVISOR
from protocol.settings import Problem

RESTART_TYPES = ("permanent", "transient", "temporary")
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
SECRET_KEY = re.compile(r"(token|secret|password|api_key)$", re.IGNORECASE)


ConfigProblem = Problem  # one problem: its key, what is wrong, the fix
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
# Settings the sandbox (or a test) changes without editing services.toml: JSON
# {service: {setting: value}} in this environment variable, applied on every load.
OVERRIDES_ENV = "BOT_SETTINGS_OVERRIDES"
# How far a supervisor has moved its services' clocks (the sandbox's POST clock), given
# to each process it starts so a restarted service keeps the sandbox's time.
CLOCK_OFFSET_ENV = "BOT_CLOCK_OFFSET_S"


class ConfigError(Exception):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class RestartPolicy:
    restart: str = "permanent"  # OTP: permanent | transient | temporary
    max_restarts: int = 5  # MaxR ...
    within_s: float = 60.0  # ... within MaxT seconds, else FATAL
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_jitter: float = 0.2  # +-20 % so services restarted together spread out
    stable_after_s: float = 30.0  # up this long: the backoff starts over


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    after: tuple[str, ...] = ()
    subscribes: tuple[str, ...] = ()
    endpoint: str | None = None
    policy: RestartPolicy = RestartPolicy()
    stop_grace_s: float = 3.0  # asked over the bus, then SIGTERM
    shutdown_timeout_s: float = 10.0  # then SIGKILL
    heartbeat_timeout_s: float = 10.0
    start_timeout_s: float = 30.0
    memory_limit_mb: float | None = None
    critical: bool = False
    enabled: bool = True
    env_required: tuple[str, ...] = ()
    log_level: str | None = None  # else LOG_LEVEL from the environment, else INFO
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SupervisorSettings:
    data_dir: Path = Path("data")
    log_dir: Path | None = None  # default: data_dir/logs
    log_format: str = "text"  # text | json
    memory_poll_s: float = 2.0
    heartbeat_interval_s: float = 1.0
    # "HOST:PORT" where /metrics (Prometheus) and /healthz are served; None: not served.
    metrics_address: str | None = None
    # Events the supervisor receives like a service (it turns them into metrics).
    subscribes: tuple[str, ...] = ()

    @property
    def runtime_dir(self) -> Path:
        return self.data_dir / "run"


@dataclass(frozen=True)
class Config:
    path: Path
    supervisor: SupervisorSettings
    services: list[ServiceSpec]  # start order: dependencies first

    @property
    def enabled(self) -> list[ServiceSpec]:
        return [s for s in self.services if s.enabled]

    def service(self, name: str) -> ServiceSpec:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def topology(self) -> Topology:
        """Where each service listens and who subscribes to each event type."""
        runtime = self.supervisor.runtime_dir.resolve()
        endpoints = {SUPERVISOR: f"ipc://{runtime}/{SUPERVISOR}.sock"}
        subscribers: dict[str, list[str]] = {}
        for s in self.enabled:
            endpoints[s.name] = s.endpoint or f"ipc://{runtime}/{s.name}.sock"
            for event_type in s.subscribes:
                subscribers.setdefault(event_type, []).append(s.name)
        for event_type in self.supervisor.subscribes:
            subscribers.setdefault(event_type, []).append("supervisor")
        # Who answers which slash command is declared with the command (protocol/commands.py).
        commands = owned_by({s.name for s in self.enabled})
        return Topology(endpoints, subscribers, commands)


class _Reader:
    """Typed getters that record a problem instead of raising."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def bad(self, key: str, problem: str, fix: str) -> None:
        self.problems.append(ConfigProblem(key, problem, fix))

    def number(
        self,
        table: dict[str, Any],
        name: str,
        key: str,
        default: Any,
        *,
        integer: bool = False,
        minimum: float = 0.0,
        optional: bool = False,
    ) -> Any:
        if name not in table:
            return default
        value = table[name]
        kind = int if integer else (int, float)
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
            what = "an integer" if integer else "a number"
            self.bad(
                f"{key}.{name}",
                f"must be {what} >= {minimum:g} (got {value!r})",
                f"set {name} = {default if default is not None else minimum}",
            )
            return default
        return value

    def boolean(self, table: dict[str, Any], name: str, key: str, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            self.bad(
                f"{key}.{name}",
                f"must be true or false (got {value!r})",
                f"set {name} = {str(default).lower()}",
            )
            return default
        return value

    def strings(self, table: dict[str, Any], name: str, key: str) -> tuple[str, ...]:
        value = table.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.bad(
                f"{key}.{name}",
                f"must be a list of strings (got {value!r})",
                f'set {name} = ["..."]',
            )
            return ()
        return tuple(value)


_POLICY_KEYS = set(RestartPolicy.__dataclass_fields__)
_SERVICE_KEYS = (set(ServiceSpec.__dataclass_fields__) - {"name", "policy"}) | _POLICY_KEYS


def _policy(r: _Reader, table: dict[str, Any], key: str, base: RestartPolicy) -> RestartPolicy:
    restart = table.get("restart", base.restart)
    if restart not in RESTART_TYPES:
        r.bad(
            f"{key}.restart",
            f"unknown restart type {restart!r}",
            "use one of " + ", ".join(RESTART_TYPES),
        )
        restart = base.restart
    return RestartPolicy(
        restart=restart,
        max_restarts=r.number(table, "max_restarts", key, base.max_restarts, integer=True),
        within_s=r.number(table, "within_s", key, base.within_s, minimum=0.1),
        backoff_initial_s=r.number(table, "backoff_initial_s", key, base.backoff_initial_s),
        backoff_max_s=r.number(table, "backoff_max_s", key, base.backoff_max_s),
        backoff_jitter=r.number(table, "backoff_jitter", key, base.backoff_jitter),
        stable_after_s=r.number(table, "stable_after_s", key, base.stable_after_s),
    )


def _service(
    r: _Reader,
    name: str,
    table: Any,
    defaults: dict[str, Any],
    base_policy: RestartPolicy,
    overrides: dict[str, dict[str, Any]],
) -> ServiceSpec | None:
    key = f"services.{name}"
    if not SERVICE_NAME.match(name):
        r.bad(key, "service names are lower-case letters, digits and _", "rename the table")
        return None
    if not isinstance(table, dict):
        r.bad(key, "must be a table", f'write [services.{name}] with module = "..."')
        return None
    merged = {**defaults, **table}
    for unknown in sorted(set(merged) - _SERVICE_KEYS):
        r.bad(f"{key}.{unknown}", "unknown key", "remove it or check its spelling")
    module = merged.get("module")
    if not isinstance(module, str) or not module:
        r.bad(f"{key}.module", "missing", f'set module = "services.{name}"')
        module = ""
    endpoint = merged.get("endpoint")
    if endpoint is not None and not (
        isinstance(endpoint, str) and endpoint.startswith(("ipc://", "tcp://"))
    ):
        r.bad(
            f"{key}.endpoint",
            f"must be an ipc:// or tcp:// address (got {endpoint!r})",
            'set endpoint = "tcp://127.0.0.1:7001" or remove it',
        )
        endpoint = None
    settings = merged.get("settings", {})
    if not isinstance(settings, dict):
        r.bad(f"{key}.settings", "must be a table", f"write [services.{name}.settings]")
        settings = {}
    settings = {**settings, **overrides.get(name, {})}
    for skey, value in _dates(settings):
        r.bad(
            f"{key}.settings.{skey}",
            f"is a TOML date or time ({value}), which services are not given",
            f'quote it: {skey.rsplit(".", 1)[-1]} = "{value}"',
        )
    log_level = merged.get("log_level")
    if log_level is not None and str(log_level).upper() not in LOG_LEVELS:
        r.bad(f"{key}.log_level", f"unknown level {log_level!r}", "use " + ", ".join(LOG_LEVELS))
        log_level = None
    for skey, value in settings.items():
        if SECRET_KEY.search(skey) and value:
            r.bad(
                f"{key}.settings.{skey}",
                "secrets do not belong in services.toml",
                f"put it in the environment or .env and name it in {key}.env_required",
            )
    policy = _policy(r, merged, key, base_policy)
    spec = ServiceSpec(
        name=name,
        module=module,
        after=r.strings(merged, "after", key),
        subscribes=r.strings(merged, "subscribes", key),
        endpoint=endpoint,
        policy=policy,
        stop_grace_s=r.number(merged, "stop_grace_s", key, 3.0),
        shutdown_timeout_s=r.number(merged, "shutdown_timeout_s", key, 10.0, minimum=0.1),
        heartbeat_timeout_s=r.number(merged, "heartbeat_timeout_s", key, 10.0, minimum=0.5),
        start_timeout_s=r.number(merged, "start_timeout_s", key, 30.0, minimum=0.5),
        memory_limit_mb=r.number(merged, "memory_limit_mb", key, None, minimum=1, optional=True),
        critical=r.boolean(merged, "critical", key, False),
        enabled=r.boolean(merged, "enabled", key, True),
        env_required=r.strings(merged, "env_required", key),
        log_level=str(log_level).upper() if log_level else None,
        settings=settings,
    )
    if spec.stop_grace_s > spec.shutdown_timeout_s:
        r.bad(
            f"{key}.stop_grace_s",
            "is longer than shutdown_timeout_s",
            "make stop_grace_s smaller than shutdown_timeout_s",
        )
    return spec


def split_address(address: str) -> tuple[str, int]:
    """("HOST", PORT) from "HOST:PORT" or "[V6]:PORT"; ValueError if it is neither."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(address)
    return host, int(port)


def _metrics_address(r: _Reader, value: Any) -> str | None:
    if value is None or value == "":
        return None  # off
    try:
        split_address(str(value))
    except ValueError:
        r.bad(
            "supervisor.metrics_address",
            f"must be HOST:PORT (got {value!r})",
            'set metrics_address = "127.0.0.1:9464", or remove it to serve no metrics',
        )
        return None
    return str(value)


def _ordered(r: _Reader, specs: list[ServiceSpec]) -> list[ServiceSpec]:
    """Dependencies first, otherwise in file order; cycles and unknown names are problems."""
    by_name = {s.name: s for s in specs}
    for s in specs:
        for dep in s.after:
            if dep not in by_name:
                r.bad(
                    f"services.{s.name}.after",
                    f"names unknown service {dep!r}",
                    f"add [services.{dep}] or remove it from after",
                )
    ordered: list[ServiceSpec] = []
    state: dict[str, str] = {}

    def visit(s: ServiceSpec, path: list[str]) -> None:
        if state.get(s.name) == "done":
            return
        if state.get(s.name) == "visiting":
            cycle = " -> ".join([*path[path.index(s.name) :], s.name])
            r.bad(f"services.{s.name}.after", f"dependency cycle {cycle}", "break the cycle")
            return
        state[s.name] = "visiting"
        for dep in s.after:
            if dep in by_name:
                visit(by_name[dep], [*path, s.name])
        state[s.name] = "done"
        ordered.append(s)

    for s in specs:
        visit(s, [])
    return ordered


def parse(data: dict[str, Any], path: Path, data_dir: Path | None = None) -> Config:
    r = _Reader()
    for unknown in sorted(set(data) - {"supervisor", "defaults", "services"}):
        r.bad(unknown, "unknown top-level table", "use [supervisor], [defaults] or [services.NAME]")
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        r.bad("supervisor", "must be a table", "write [supervisor]")
        sup = {}
    log_format = sup.get("log_format", "text")
    if log_format not in ("text", "json"):
        r.bad("supervisor.log_format", f"unknown format {log_format!r}", 'use "text" or "json"')
        log_format = "text"
    base_dir = path.parent
    ddir = data_dir or base_dir / str(sup.get("data_dir", "data"))
    log_dir = sup.get("log_dir")
    settings = SupervisorSettings(
        data_dir=ddir,
        log_dir=(base_dir / log_dir) if isinstance(log_dir, str) else None,
        log_format=log_format,
        memory_poll_s=r.number(sup, "memory_poll_s", "supervisor", 2.0, minimum=0.1),
        heartbeat_interval_s=r.number(sup, "heartbeat_interval_s", "supervisor", 1.0, minimum=0.05),
        metrics_address=_metrics_address(r, sup.get("metrics_address")),
        subscribes=r.strings(sup, "subscribes", "supervisor"),
    )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        r.bad("defaults", "must be a table", "write [defaults]")
        defaults = {}
    base_policy = _policy(r, defaults, "defaults", RestartPolicy())
    services_table = data.get("services", {})
    if not isinstance(services_table, dict) or not services_table:
        r.bad("services", "no services configured", "add at least one [services.NAME] table")
        services_table = {}
    overrides = settings_overrides()
    specs = [
        spec
        for name, table in services_table.items()
        if (spec := _service(r, name, table, defaults, base_policy, overrides)) is not None
    ]
    enabled = {s.name for s in specs if s.enabled}
    for s in specs:
        if s.enabled:
            for dep in s.after:
                if dep not in enabled and any(x.name == dep for x in specs):
                    r.bad(
                        f"services.{s.name}.after",
                        f"depends on disabled service {dep!r}",
                        f"enable {dep} or disable {s.name}",
                    )
    ordered = _ordered(r, specs)
    if r.problems:
        raise ConfigError(r.problems)
    return Config(path=path, supervisor=settings, services=ordered)


def _dates(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Unquoted TOML dates and times in a settings table (`report_time = 09:00:00`)."""
    found = []
    for k, v in table.items():
        if isinstance(v, dict):
            found += _dates(v, f"{prefix}{k}.")
        elif isinstance(v, datetime.date | datetime.time):
            found.append((f"{prefix}{k}", v))
    return found


def settings_overrides() -> dict[str, dict[str, Any]]:
    """{service: {setting: value}} from $BOT_SETTINGS_OVERRIDES (the sandbox sets it)."""
    try:
        overrides = json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    except ValueError:
        return {}
    if not isinstance(overrides, dict):
        return {}
    return {str(k): v for k, v in overrides.items() if isinstance(v, dict)}


def load(path: Path, data_dir: Path | None = None) -> Config:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(
            [ConfigProblem(str(path), "is not UTF-8 text", "save it as UTF-8")]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    str(path), f"cannot read ({exc.strerror})", "create it or pass --config PATH"
                )
            ]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), f"not valid TOML ({exc})", "fix the syntax at that line")]
        ) from None
    return parse(data, path, data_dir)


def check_environment(config: Config, environ: dict[str, str] | None = None) -> list[ConfigProblem]:
    """Secrets the enabled services need, without ever printing their values."""
    env = os.environ if environ is None else environ
    problems = []
    for s in config.enabled:
        for var in s.env_required:
            if not env.get(var):
                problems.append(
                    ConfigProblem(
                        var,
                        f"not set (needed by service {s.name})",
                        f"export {var}=... or put {var}=... in .env",
                    )
                )
    return problems


def load_dotenv(path: Path, environ: dict[str, str] | None = None) -> list[ConfigProblem]:
    """Read KEY=VALUE lines into the environment (never overriding what is set).

    Small enough to write by hand: comments, blank lines, `export `, and single
    or double quotes. Problems name the line, never the value.
    """
    env = os.environ if environ is None else environ
    problems: list[ConfigProblem] = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return problems
    except (OSError, UnicodeDecodeError) as exc:
        return [ConfigProblem(str(path), f"cannot read ({exc})", "fix or remove the file")]
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.append(
                ConfigProblem(f"{path}:{n}", "not a KEY=VALUE line", "write it as NAME=value")
            )
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env.setdefault(name, value)
    return problems
