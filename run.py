#!/usr/bin/env python3
"""Start the bot: the supervisor and every service in services.toml.

python run.py                     run under the supervisor (needs DISCORD_TOKEN)
python run.py --sandbox           run against the local Discord and OpenAI stand-ins
python run.py check               validate services.toml and the environment
python run.py status [--json]     what the running supervisor reports
python run.py restart SERVICE     restart one service
python run.py reload              re-read services.toml, apply settings live (or SIGHUP)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    p.add_argument(
        "command", nargs="?", default="run", choices=["run", "check", "status", "restart", "reload"]
    )
    p.add_argument("service", nargs="?", help="for restart: the service to restart")
    p.add_argument("--config", type=Path, default=HERE / "services.toml")
    p.add_argument("--data-dir", type=Path, default=None, help="default: ./data")
    p.add_argument("--env-file", type=Path, default=HERE / ".env")
    p.add_argument("--log-format", choices=["text", "json"], default=None)
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--sandbox", action="store_true", help="run against local stand-ins")
    p.add_argument("--port", type=int, default=8790, help="sandbox: the Discord emulator's port")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="sandbox: the address the emulator and the OpenAI stand-in listen on",
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import anyio
    from loguru import logger

    from supervisor import control, instance, logs, privacy, privilege
    from supervisor.config import (
        ConfigError,
        ConfigProblem,
        check_environment,
        load,
        load_dotenv,
    )

    # --data-dir is relative to where you are; services.toml's data_dir to the file.
    data_dir = args.data_dir.absolute() if args.data_dir else None
    if args.command in ("status", "restart", "reload"):
        if data_dir is None:
            try:
                data_dir = load(args.config).supervisor.data_dir
            except ConfigError:
                data_dir = Path("data").absolute()
        runtime_dir = data_dir / "run"
        try:
            if args.command == "status":
                data = control.status(runtime_dir).to_body()
                print(json.dumps(data, indent=2) if args.json else control.format_status(data))
                return 0
            if args.command == "reload":
                outcome = control.reload(runtime_dir)
            elif not args.service:
                print("restart: name the service, e.g. python run.py restart llm", file=sys.stderr)
                return 2
            else:
                outcome = control.restart(runtime_dir, args.service)
            print(outcome.detail)
            return 0 if outcome.ok else 1
        except control.SupervisorUnreachable as exc:
            print(exc, file=sys.stderr)
            return 1

    problems = load_dotenv(args.env_file)
    secrets_warning = privacy.secrets_file_warning(args.env_file)
    if args.command == "check" and secrets_warning:
        print(f"warning: {secrets_warning}", file=sys.stderr)
    try:
        config = load(args.config, data_dir)
    except ConfigError as exc:
        problems += exc.problems
        config = None
    if config is not None and not args.sandbox:
        missing = check_environment(config)
        if args.command == "check":
            problems += missing
        elif missing:  # starting: one line that says everything to set
            problems.append(
                ConfigProblem(
                    ", ".join(p.key for p in missing),
                    "not set ("
                    + "; ".join(p.problem.removeprefix("not set (")[:-1] for p in missing)
                    + ")",
                    "export them or put NAME=value lines in .env",
                )
            )
    if args.log_format:
        os.environ["BOT_LOG_FORMAT"] = args.log_format  # the services inherit it
    if args.log_format and config is not None:
        import dataclasses

        config = dataclasses.replace(
            config, supervisor=dataclasses.replace(config.supervisor, log_format=args.log_format)
        )
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2
    assert config is not None
    if args.command == "check":
        from supervisor import preflight

        found = preflight.problems(config)
        for line in found:
            print(line, file=sys.stderr)
        if found:
            return 2
        print(f"{args.config}: {len(config.enabled)} services configured, environment complete")
        return 0

    # One supervisor per data dir, before anything in it is touched; held until we exit
    # (the kernel lets go of it even if we are SIGKILLed).
    try:
        data_dir_lock = instance.hold(config.supervisor.data_dir)
    except instance.DataDirInUse as exc:
        print(exc, file=sys.stderr)
        return 2
    # Before anything is created (the log dir is the first): owner-only, for every child too.
    tightened = privacy.make_private(config.supervisor.data_dir)
    logs.setup(
        "supervisor",
        config.supervisor.log_format,
        config.supervisor.log_dir or config.supervisor.data_dir / "logs",
        logs.level_for(None),  # $LOG_LEVEL
    )
    if tightened:
        logger.warning(
            "data dir {}: {} paths were open to other users, now owner-only",
            config.supervisor.data_dir,
            tightened,
        )
    for warning in (secrets_warning, privilege.root_warning(HERE / "deploy/discord-bot.service")):
        if warning:
            logger.warning("{}", warning)
    try:
        if args.sandbox:
            from sandbox.run import run_sandbox

            return anyio.run(run_sandbox, config, args.port, args.host)
        from supervisor.supervisor import Supervisor

        return anyio.run(Supervisor(config).run)
    finally:
        data_dir_lock.release()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
