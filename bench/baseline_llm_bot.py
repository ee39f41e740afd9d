"""The single-process baseline for bench/llm.py: one py-cord bot calling the model directly.

This is how most LLM bots answer (llmcord style, one process): on a mention, call
`AsyncOpenAI.chat.completions.create(stream=True)`, send the first chunk as a reply, then
edit that message with the text so far at most once per EDIT_INTERVAL_S (llmcord's
EDIT_DELAY_SECONDS is 1 s, like the project's edit_interval_s), and once more at the end.
"Typing" is fired without waiting for it, as the project does. No history, no rate limits,
no retries, no splitting past 2,000 characters: the least work an answer can take.

    python -m bench.baseline_llm_bot API_BASE TOKEN OPENAI_BASE_URL OPENAI_API_KEY MODEL
"""

from __future__ import annotations

import asyncio
import sys
import time

import discord
from openai import AsyncOpenAI

EDIT_INTERVAL_S = 1.0
NO_PINGS = discord.AllowedMentions.none()


def main(api_base: str, token: str, openai_base: str, openai_key: str, model: str) -> None:
    discord.http.Route.API_BASE_URL = api_base
    intents = discord.Intents.default()
    intents.message_content = True
    client = discord.Client(intents=intents, cache_default_sounds=False)
    llm = AsyncOpenAI(base_url=openai_base, api_key=openai_key, max_retries=0)
    background: set[asyncio.Task[None]] = set()

    @client.event
    async def on_message(message: discord.Message) -> None:
        me = client.user
        if me is None or message.author.bot or me not in message.mentions:
            return
        typing = asyncio.create_task(message.channel.trigger_typing())
        background.add(typing)
        typing.add_done_callback(background.discard)
        prompt = message.content.replace(f"<@{me.id}>", "").replace(f"<@!{me.id}>", "").strip()
        stream = await llm.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": "You are a helpful Discord bot."},
                {"role": "user", "content": prompt},
            ],
            stream=True,
        )
        reply: discord.Message | None = None
        text = ""
        shown = ""
        last_write = 0.0
        async for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if not piece:
                continue
            text += piece
            if reply is None:
                reply = await message.reply(text[:2000], allowed_mentions=NO_PINGS)
                shown, last_write = text, time.monotonic()
            elif time.monotonic() - last_write >= EDIT_INTERVAL_S:
                await reply.edit(content=text[:2000], allowed_mentions=NO_PINGS)
                shown, last_write = text, time.monotonic()
        if reply is not None and shown != text:
            await asyncio.sleep(max(0.0, last_write + EDIT_INTERVAL_S - time.monotonic()))
            await reply.edit(content=text[:2000], allowed_mentions=NO_PINGS)

    client.run(token)


if __name__ == "__main__":
    main(*sys.argv[1:6])
