"""A small service for backbone tests: publishes numbered durable events on request."""

from __future__ import annotations

from protocol.clock import Clock
from protocol.runtime import Service
from tests.support.services.messages import Item, Note, Produce, Produced


def build(clock: Clock | None = None) -> tuple[Service, None]:
    service = Service("producer", clock=clock)

    @service.request(Produce)
    async def produce(msg: Produce) -> Produced:
        items = [Item(n) for n in range(msg.start, msg.start + msg.count)]
        for i in range(0, len(items), 200):
            await service.publish_many(items[i : i + 200])
        await service.publish(Note(msg.start))
        return Produced(msg.count)

    return service, None
