"""A stand-in for the heartbeat service in the gateway's routing tests: it answers the
commands declared for heartbeat (/status, /restart) with "all good", slowly on demand.
Run it as `[services.heartbeat] module = "tests.support.services.commander"`."""

from __future__ import annotations

import anyio

from protocol.clock import Clock
from protocol.discord import CommandAnswer, CommandInvoked
from protocol.runtime import Service


def build(clock: Clock | None = None) -> tuple[Service, None]:
    service = Service("heartbeat", clock=clock)

    @service.command("status")
    @service.command("restart")
    async def answer(msg: CommandInvoked) -> CommandAnswer:
        if msg.options.get("service") == "slow":  # /restart service:slow takes its time
            await anyio.sleep(1.5)
        return CommandAnswer(content="all good")

    return service, None
