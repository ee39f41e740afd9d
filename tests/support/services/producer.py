"""A small service for backbone tests: publishes numbered durable events on request."""

from __future__ import annotations

from protocol.runtime import Service
from tests.support.services.messages import Item, Note, Produce

service = Service("producer")


@service.request(Produce)
async def produce(msg: Produce) -> dict:
    items = [Item(n) for n in range(msg.start, msg.start + msg.count)]
    for i in range(0, len(items), 200):
        await service.publish_many(items[i : i + 200])
    await service.publish(Note(msg.start))
    return {"published": msg.count}
