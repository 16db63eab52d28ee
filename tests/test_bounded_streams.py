"""Streams that cannot hold the server (issue 14: 1, 2, 6, 13): a replay is paged and
dropped when not read, shutdown ends whatever a client does, the clock has one ticker, a
big batch's fan-out lets other requests through."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from datetime import datetime

import httpx
import pytest
from conftest import Server, collect, subscribe


def root(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def stalled_reader(server: Server, path: str, last_id: int | None = None) -> socket.socket:
    """Asks for a stream and never reads it (a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    resume = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{resume}\r\n".encode())
    return sock


def publish_batches(server: Server, count: int, size: int, room: str = "lobby") -> None:
    pad = "x" * size
    with httpx.Client(headers=root(server), timeout=30) as client:
        for start in range(0, count, 10):
            batch = [
                {"speaker": "s", "room": room, "data": {"i": i, "pad": pad}}
                for i in range(start, min(count, start + 10))
            ]
            assert client.post(f"{server.url}/api/v1/send", json=batch).status_code == 202


async def until_health(server: Server, within_s: float = 30, **expected: int) -> dict:
    deadline = time.monotonic() + within_s
    while True:
        health = server.health()
        if all(health[key] == value for key, value in expected.items()):
            return health
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.1)


@pytest.fixture(params=["local", "redis"])
def broker_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "local":
        return {}
    return {"BROKER_URL": request.getfixturevalue("broker_url")}


# 1. Bounded replay


async def test_a_replay_that_is_not_read_is_dropped(make_server):
    """Last-Event-ID: 0 on a large history, and never a byte read: the server drops the
    stream within REPLAY_WRITE_TIMEOUT_S (it held it forever, and the whole history)."""
    server: Server = make_server(HISTORY_SIZE="300", REPLAY_WRITE_TIMEOUT_S="1")
    publish_batches(server, 300, 20_000)
    stalled = [stalled_reader(server, "/api/v1/events", 0) for _ in range(3)]
    try:
        await until_health(server, subscribers=3)
        await until_health(server, subscribers=0, slow_consumer_disconnects=3)
    finally:
        for sock in stalled:
            sock.close()


async def test_a_replaying_subscriber_the_ring_passes_is_dropped(make_server):
    """While a replay is stuck, the room goes a whole SUBSCRIBER_QUEUE on: the subscriber
    is dropped (it pinned the ring, which grew with every message)."""
    server: Server = make_server(
        HISTORY_SIZE="200", SUBSCRIBER_QUEUE="16", REPLAY_WRITE_TIMEOUT_S="3600"
    )
    publish_batches(server, 200, 20_000)
    stalled = stalled_reader(server, "/api/v1/events", 0)
    try:
        await until_health(server, subscribers=1)
        publish_batches(server, 100, 10)
        await until_health(server, subscribers=0, slow_consumer_disconnects=1)
    finally:
        stalled.close()


async def test_a_large_replay_arrives_whole_once_and_in_order(make_server, broker_env):
    """A replay of many pages, with messages published while it is read: each message
    once, in order, nothing lost."""
    server: Server = make_server(HISTORY_SIZE="600", REPLAY_PAGE_BYTES="4096", **broker_env)
    publish_batches(server, 500, 300)

    async def publish_more() -> None:
        async with httpx.AsyncClient(headers=root(server)) as client:
            for i in range(500, 560):
                message = {"speaker": "s", "data": {"i": i}}
                reply = await client.post(f"{server.url}/api/v1/send", json=message)
                assert reply.status_code == 202

    more = asyncio.create_task(publish_more())
    async with subscribe(f"{server.url}/api/v1/events", **{"Last-Event-ID": "0"}) as events:
        assert events.hello["gap"] is False
        received = await collect(events, 560)
    await more
    assert [int(event.id) for event in received] == list(range(1, 561))
    assert [json.loads(event.data)["data"]["i"] for event in received] == list(range(560))


# 2. Shutdown that always ends


@pytest.mark.parametrize("workers", [0, 1], ids=["python app.py", "hypercorn app:app"])
async def test_sigterm_ends_within_the_timeout_whatever_clients_do(make_server, workers):
    """Streams whose clients never read, on a flooded room, cannot hold a SIGTERM (one held
    it until the client went); a client that reads still gets its final event."""
    # 1 s: the streams end before `hypercorn app:app`'s own graceful timeout (3 s)
    server: Server = make_server(workers=workers, SHUTDOWN_TIMEOUT="1")
    stalled = [stalled_reader(server, "/api/v1/events") for _ in range(4)]
    try:
        async with subscribe(f"{server.url}/api/v1/events") as events:
            await until_health(server, subscribers=5)

            async def read_all() -> list:
                return [event async for event in events]

            reading = asyncio.create_task(read_all())
            # 12 MB for each stream: more than the sockets hold, less than the ring
            await asyncio.to_thread(publish_batches, server, 200, 60_000)
            server.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.process.wait, 1 + 10)  # a liveness bound
            received = await asyncio.wait_for(reading, 10)
        assert code == 0
        assert received[-1].event == "shutdown"
        assert len([e for e in received if e.event == "message"]) == 200
        assert "Traceback" not in server.log()
    finally:
        for sock in stalled:
            sock.close()


# 6. One clock for every clock stream


async def test_clock_streams_share_one_ticker_and_keep_their_format(server: Server):
    """Two clock streams get the same ticks (one ticker made them: a task per stream cost a
    core at 2000 streams), framed as they always were: a comment, then `id:` and `data:`."""
    url = f"{server.url}/api/v1/clock"
    bodies: list[bytes] = [b"", b""]

    async def read(client: httpx.AsyncClient, index: int) -> None:
        async with client.stream("GET", url) as reply:
            assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
            async for chunk in reply.aiter_bytes():
                bodies[index] += chunk
                if bodies[index].count(b"data:") >= 4:
                    return

    async with httpx.AsyncClient(timeout=20) as client:
        await asyncio.gather(read(client, 0), read(client, 1))
    for body in bodies:
        assert body.startswith(b":\n\n")
        # the ticks (a keepalive comment may come between them on a busy machine)
        frames = [frame for frame in body.split(b"\n\n") if frame.startswith(b"id:")][:3]
        assert len(frames) == 3, body
        for frame in frames:
            assert re.fullmatch(rb'id: (\d+)\ndata: \{"time":\1,"iso":"[^"]+"\}', frame), frame
            tick = json.loads(frame.partition(b"data: ")[2])
            iso = datetime.fromisoformat(tick["iso"])
            assert iso.tzinfo is not None and abs(iso.timestamp() * 1000 - tick["time"]) < 1
    ticks = [re.findall(rb"id: (\d+)", body) for body in bodies]
    shared = set(ticks[0]) & set(ticks[1])
    assert len(shared) >= 2  # both streams got the same ticks
