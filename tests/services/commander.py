"""A tiny service that owns a slash command, for the gateway's routing tests."""

from __future__ import annotations

from protocol.discord import CommandAnswer, CommandInvoked
from protocol.runtime import Service

service = Service("commander")


@service.request(CommandInvoked)
async def answer(msg: CommandInvoked) -> CommandAnswer:
    return CommandAnswer(content="all good")
