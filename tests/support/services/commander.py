"""A tiny service that owns a slash command, for the gateway's routing tests."""

from __future__ import annotations

import anyio

from protocol.discord import CommandAnswer, CommandInvoked
from protocol.runtime import Service

service = Service("commander")


@service.request(CommandInvoked)
async def answer(msg: CommandInvoked) -> CommandAnswer:
    if msg.options.get("service") == "slow":  # /restart service:slow takes its time
        await anyio.sleep(1.5)
    return CommandAnswer(content="all good")
