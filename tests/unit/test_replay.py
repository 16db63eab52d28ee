"""A stream's replay, in this process: written in pages, and a client that reads none of it
is dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app import Hub, Metrics, Settings, Storage


async def test_a_replay_is_written_in_pages_and_an_unread_one_is_dropped(tmp_path: Path):
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        history_size=400,
        replay_page_bytes=16_384,
        replay_write_timeout_s=0.2,
    )
    storage = Storage(settings.database, settings.history_size)

    async def accounts_changed() -> None:
        pass

    hub = Hub(settings, Metrics(), storage, accounts_changed)
    await hub.start()
    try:
        room = hub.find_room(None)
        pad = "x" * 1000
        for _ in range(0, 400, 50):
            await hub.publish([(room, {"speaker": "s", "data": {"pad": pad}})] * 50)
        bodies: list[bytes] = []
        stuck = asyncio.Event()

        async def write(message: dict) -> None:
            bodies.append(message.get("body", b""))
            if len(bodies) == 3:  # then the client stops reading
                await stuck.wait()

        async def start(message: dict) -> None:
            pass

        async def receive() -> dict:
            await asyncio.Event().wait()

        async with asyncio.timeout(10):
            await hub.serve_stream(start, write, receive, room, "player", 0)
        assert len(bodies) == 3 and max(map(len, bodies)) <= settings.replay_page_bytes
        assert hub.metrics.value("slow_consumer_disconnects_total") == 1
        assert not room.subscribers
    finally:
        await hub.close()
        await storage.close()
