"""`python run.py --sandbox` as a user runs it, driven through the emulator's control API."""

from __future__ import annotations

import json
import socket
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protocol.channel import RemoteError
from protocol.messages import Message
from tests.support.harness import Running, wait_for

ROOT = Path(__file__).resolve().parents[2]

# The start of a sandbox test's services.toml: quick restarts, and the two services
# every such test needs. Tests append the tables of the services they exercise.
FAST_CORE = """
[supervisor]
heartbeat_interval_s = 0.3

[defaults]
max_restarts = 20
within_s = 60
backoff_initial_s = 0.05
backoff_max_s = 0.3
backoff_jitter = 0

[services.persistence]
module = "services.persistence"
subscribes = ["discord.message.created", "discord.message.edited", "discord.message.deleted",
              "discord.member.joined", "discord.member.left", "discord.member.banned",
              "discord.member.unbanned", "llm.exchange"]

[services.gateway]
module = "services.gateway"
after = ["persistence"]
env_required = ["DISCORD_TOKEN"]
"""

LLM_TABLE = """
[services.llm]
module = "services.llm"
after = ["gateway", "persistence"]
subscribes = ["discord.message.created", "discord.message.edited", "discord.message.deleted",
              "discord.guild.ready", "discord.connection"]
env_required = ["OPENAI_API_KEY"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox(Running):
    def __init__(
        self,
        tmp_path: Path,
        toml: str | None = None,
        umask: int = -1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        toml = toml if toml is not None else (ROOT / "services.toml").read_text()
        args = ("--sandbox", "--port", str(self.port))
        super().__init__(tmp_path, toml, env=env, args=args, umask=umask)
        self.base = f"http://127.0.0.1:{self.port}/_sandbox/"
        wait_for(lambda: self.get("state"), 20, "the emulator")
        self.state = self.get("state")
        self.channels = {c["name"]: c["id"] for c in self.state["channels"]}
        self.users = {m["username"]: m["id"] for m in self.state["members"]}

    # --- control API ---

    def call(self, method: str, path: str, body: Any = None) -> Any:  # type: ignore[override]
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:200]!r}") from None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def say(
        self,
        content: str,
        user: str = "alice",
        channel: str = "general",
        reply_to: str | None = None,
    ) -> str:
        body = {
            "channel_id": self.channels[channel],
            "author_id": self.users[user],
            "content": content,
        }
        if reply_to:
            body["reply_to_id"] = reply_to
        return self.post("messages", body)["id"]

    def messages(self, channel: str = "general") -> list[dict[str, Any]]:
        return self.get(f"channels/{self.channels[channel]}/messages")

    def bot_messages(self, channel: str = "general") -> list[dict[str, Any]]:
        bot = self.state["bot_user_id"]
        return [m for m in self.messages(channel) if m["author_id"] == bot]

    def requests(self, mark: int = 0, method: str | None = None, route: str | None = None) -> Any:
        """The REST calls the bot made (``GET requests``), from the ``mark``-th on, filtered
        by method and route template (``/channels/{channel_id}/messages``)."""
        made = self.get("requests")[mark:]
        return [
            r
            for r in made
            if (method is None or r["method"] == method) and (route is None or r["route"] == route)
        ]

    def mark(self) -> int:
        """Where the request log ends now: pass it to `requests` to see only what follows."""
        return len(self.get("requests"))

    # --- the bus: requests as another service sends them ---

    def bus(self, service: str, msg: Message, timeout: float = 5.0) -> dict[str, Any]:
        return Running.call(self, service, msg, timeout)

    def refusal(self, service: str, msg: Message, timeout: float = 5.0) -> RemoteError:
        """The error `service` answers `msg` with (fails if it carries it out)."""
        try:
            answer = self.bus(service, msg, timeout)
        except RemoteError as exc:
            return exc
        raise AssertionError(f"{msg.TYPE} was carried out ({answer}); expected a refusal")

    def wait_connected(self) -> None:
        wait_for(
            lambda: (
                self.get("gateway/sessions")["connections"] >= 1
                and any(s["connected"] for s in self.get("gateway/sessions")["sessions"])
            ),
            20,
            "the bot's gateway connection",
        )

    # --- the database ---

    def db(self, sql: str, *args: Any) -> list[tuple]:
        path = self.data / "bot.sqlite3"
        if not path.exists():
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            con.close()


class Standin:
    """The OpenAI stand-in's control API (it runs inside the sandbox's supervisor)."""

    def __init__(self, llm_url: str) -> None:
        self.base = llm_url.removesuffix("/v1") + "/_control/"

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def settings(self, **changes: Any) -> None:
        self._call("POST", "settings", changes)

    def faults(self, *faults: dict[str, Any]) -> None:
        self._call("POST", "faults", list(faults))

    def calls(self) -> int:
        return self._call("GET", "state")["calls"]


@contextmanager
def running_sandbox(
    tmp_path: Path, toml: str | None = None, commands: bool = False
) -> Iterator[Sandbox]:
    """A sandbox with every service RUNNING and the bot connected to the emulator (with
    `commands`, its slash commands registered too), cleaned up on the way out."""
    box = Sandbox(tmp_path, toml)
    try:
        box.wait_all_running()
        box.wait_connected()
        if commands:
            wait_for(lambda: box.get("commands")["global"], 20, "the slash commands")
        yield box
    finally:
        box.cleanup()
