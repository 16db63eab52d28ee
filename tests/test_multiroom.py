"""Several rooms in one stream (issue 17): GET /api/v1/events?rooms=a,b,c. Each event says
its room; the `id:` lines say every room's cursor and Last-Event-ID resumes each room
exactly; every room is authorized as its own stream; a deleted room ends alone. Real
server, real SSE clients, with and without BROKER_URL."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from conftest import Server, assert_envelope, collect, dispatched, sse_client, subscribe
from httpx_sse import ServerSentEvent, aconnect_sse
from test_access_rules import new_room, new_token, new_user, open_stream, publish, root
from test_bounded_streams import publish_batches, stalled_reader, until_health


class RoomsStream:
    """A stream's events but its hellos (`event: meta`, one per room, each before its
    room's replay), which are kept in `hellos` as they come (data, with their `id`)."""

    def __init__(self, events: AsyncIterator[ServerSentEvent]) -> None:
        self.events, self.hellos = events, []

    def __aiter__(self) -> RoomsStream:
        return self

    async def __anext__(self) -> ServerSentEvent:
        while (event := await anext(self.events)).event == "meta":
            self.hellos.append(json.loads(event.data) | {"id": event.id})
        return event


@asynccontextmanager
async def rooms_stream(
    server: Server, client: httpx.AsyncClient, rooms: list[str], last_id: str = "", query=""
) -> AsyncIterator[RoomsStream]:
    """A stream of `rooms`, resuming after `last_id`."""
    url = f"{server.url}/api/v1/events?rooms={','.join(rooms)}{query}"
    headers = {"Last-Event-ID": last_id} if last_id else {}
    async with aconnect_sse(client, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200, await source.response.aread()
        yield RoomsStream(dispatched(source.aiter_sse()))


async def until(events, kind: str, check: Callable[[dict], bool]) -> dict:
    """The data of the next `kind` event that passes `check`."""
    while True:
        (event,) = await collect(events, 1, kind)
        if check(data := json.loads(event.data)):
            return data


def payloads(events: list) -> list[tuple[str, int]]:
    return [(json.loads(e.data)["room"], json.loads(e.data)["data"]["i"]) for e in events]


def cursors(event_id: str) -> dict[str, int]:
    return {room: int(n) for room, _, n in (part.partition(":") for part in event_id.split(","))}


async def test_one_stream_carries_events_of_several_rooms(make_server, broker_env):
    server = make_server(HEARTBEAT_S="0.3", PRESENCE_INTERVAL_S="0.1", **broker_env)
    rooms = [new_room(server, root(server)) for _ in range(3)]
    async with sse_client() as client, rooms_stream(server, client, rooms) as stream:
        for i, room in enumerate(rooms * 2):
            publish(server, room, i).raise_for_status()
        events = await collect(stream, 6)
        assert [hello["room"] for hello in stream.hellos] == rooms
        assert all(hello["rooms"] == rooms and hello["gap"] is False for hello in stream.hellos)
        assert payloads(events) == [(room, i) for i, room in enumerate(rooms * 2)]
        # each id says every room's cursor, in the stream's order
        assert events[0].id == f"{rooms[0]}:1,{rooms[1]}:0,{rooms[2]}:0"
        assert events[-1].id == f"{rooms[0]}:2,{rooms[1]}:2,{rooms[2]}:2"

        # a controller of one room: its heartbeat and presence say that room
        controller = f"{server.url}/api/v1/events/{rooms[1]}?role=controller&token={server.token}"
        async with subscribe(controller, client):
            beat = await until(stream, "heartbeat", lambda beat: beat["controllers"] == 1)
            assert beat["room"] == rooms[1]
            presence = await until(stream, "presence", lambda p: p["controllers"] == 1)
            assert presence == {"room": rooms[1], "players": 1, "controllers": 1}

        # a preview (the admin's) of several rooms is left out of presence, as of one room
        async with rooms_stream(server, client, [rooms[0]], query="&role=preview") as preview:
            assert (await anext(preview.events)).event == "meta"  # it has joined
            async with subscribe(f"{server.url}/api/v1/events/{rooms[0]}", client) as player:
                assert player.hello["presence"]["players"] == 2  # the stream above and this


async def test_a_reconnect_resumes_each_room_exactly(make_server, broker_env):
    server = make_server(**broker_env)
    a, b, c = rooms = [new_room(server, root(server)) for _ in range(3)]
    publish(server, a, 0).raise_for_status()  # before the stream: not replayed without an id
    async with sse_client() as client:
        async with rooms_stream(server, client, rooms) as stream:
            publish(server, a, 1).raise_for_status()
            publish(server, b, 2).raise_for_status()
            events = await collect(stream, 2)
        assert payloads(events) == [(a, 1), (b, 2)]
        assert cursors(events[-1].id) == {a: 2, b: 1, c: 0}

        # while disconnected: every room moves on, c for the first time
        missed = [(a, 3), (c, 4), (b, 5), (a, 6), (c, 7)]
        for room, i in missed:
            publish(server, room, i).raise_for_status()
        async with rooms_stream(server, client, rooms, events[-1].id) as stream:
            resumed = await collect(stream, len(missed))
            assert [hello["gap"] for hello in stream.hellos] == [False] * 3
            # each room's own, in order; room by room (one replay after the other)
            assert sorted(payloads(resumed), key=lambda p: rooms.index(p[0])) == payloads(resumed)
            assert sorted(payloads(resumed), key=lambda p: p[1]) == missed
            assert cursors(resumed[-1].id) == {a: 4, b: 2, c: 2}
            publish(server, b, 8).raise_for_status()  # then live ones, nothing twice
            (live,) = await collect(stream, 1)
            assert payloads([live]) == [(b, 8)] and cursors(live.id) == {a: 4, b: 3, c: 2}

        # A stream that saw no message still resumes exactly: its hellos carry the cursors.
        async with rooms_stream(server, client, [b, c]) as stream:
            hello_id = [(await anext(stream.events)).id for _ in range(2)][-1]
        assert hello_id == f"{b}:3,{c}:2"
        publish(server, c, 9).raise_for_status()
        # A changed list: rooms the id names resume, one it does not starts from now, and
        # one it names that the list leaves out is ignored.
        d = new_room(server, root(server))
        publish(server, d, 10).raise_for_status()
        async with rooms_stream(server, client, [c, d, b], f"{a}:1,{hello_id}") as stream:
            publish(server, d, 11).raise_for_status()
            events = await collect(stream, 2)
            assert [hello["room"] for hello in stream.hellos] == [c, d, b]
            assert payloads(events) == [(c, 9), (d, 11)]
            assert cursors(events[-1].id) == {c: 3, d: 2, b: 3}


async def test_the_rooms_are_bounded_and_each_authorized(make_server):
    server = make_server(MAX_STREAM_ROOMS="3")
    owner, stranger = new_user(server), new_user(server)
    public = [new_room(server, owner.auth) for _ in range(3)]
    private = new_room(server, owner.auth, private=True)
    url = f"{server.url}/api/v1/events"

    async def status(rooms: list[str], path: str = url, **params) -> httpx.Response:
        return await open_stream(path, params={"rooms": ",".join(rooms), **params})

    assert_envelope(await status([*public, private]), 400, "Too many rooms: at most 3")
    assert_envelope(await status([public[0], "bad-room!"]), 400, "Invalid room id")
    assert_envelope(await status([public[0], "nosuchroom"]), 404, "Unknown room: nosuchroom")
    assert_envelope(await status([public[0], ""]), 400, "Invalid room id")
    assert_envelope(await status(public, f"{url}/{public[0]}"), 400, "rooms=")
    # a private room without the right refuses the whole stream, as its own stream would
    assert_envelope(await status([public[0], private]), 401, "Missing token")
    assert_envelope(await status([public[0], private], token=stranger.access), 403, private)
    writer = new_token(server, owner, private, "publish")
    assert_envelope(await status([private], token=writer), 403, "No subscribe right")
    assert_envelope(await status(public, role="controller"), 401, "Missing token")

    reader = new_token(server, owner, private, "subscribe")
    publish(server, private, 1).raise_for_status()
    async with sse_client() as client:
        query = f"&token={reader}"
        duplicated = [public[0], public[0].upper(), private]
        async with rooms_stream(server, client, duplicated, "", query) as stream:
            # duplicates count once (two hellos): the token reads the private room
            hellos = [json.loads((await anext(stream.events)).data) for _ in range(2)]
            assert [hello["room"] for hello in hellos] == [public[0], private]
        id_ = f"{private}:0"
        async with rooms_stream(server, client, [private, public[1]], id_, query) as stream:
            (event,) = await collect(stream, 1)
            assert payloads([event]) == [(private, 1)]


async def test_a_deleted_room_ends_alone(make_server, broker_env):
    server = make_server(**broker_env)
    a, b, c = rooms = [new_room(server, root(server)) for _ in range(3)]
    async with sse_client() as client, rooms_stream(server, client, rooms) as stream:
        publish(server, a, 1).raise_for_status()
        await collect(stream, 1)
        httpx.delete(f"{server.url}/api/v1/rooms/{b}", headers=root(server)).raise_for_status()
        (deleted,) = await collect(stream, 1, "deleted")
        assert json.loads(deleted.data) == {"room": b}
        publish(server, c, 2).raise_for_status()
        (event,) = await collect(stream, 1)
        assert payloads([event]) == [(c, 2)] and cursors(event.id) == {a: 1, c: 1}


async def test_shutdown_ends_the_stream_with_each_rooms_final_event(make_server, broker_env):
    server = make_server(**broker_env)
    rooms = [new_room(server, root(server)) for _ in range(3)]
    async with sse_client() as client, rooms_stream(server, client, rooms) as stream:
        publish(server, rooms[2], 1).raise_for_status()
        await collect(stream, 1)
        stopping = asyncio.create_task(asyncio.to_thread(server.stop, signal.SIGTERM))
        rest = [event async for event in stream]  # until the server ends the stream
        await stopping
    assert [event.event for event in rest[-3:]] == ["shutdown"] * 3
    assert [json.loads(event.data)["room"] for event in rest[-3:]] == rooms


async def test_a_stream_slow_in_one_room_is_dropped_and_resumes_by_its_id(make_server, broker_env):
    """A stream that does not read while one of its rooms goes a whole SUBSCRIBER_QUEUE on
    is dropped; what it got, then a reconnect with the last id it got, is everything."""
    server = make_server(SUBSCRIBER_QUEUE="16", **broker_env)
    quiet, busy = rooms = [new_room(server, root(server)) for _ in range(2)]
    stalled = stalled_reader(server, f"/api/v1/events?rooms={quiet},{busy}")
    try:
        await until_health(server, subscribers=2)
        publish(server, quiet, -1).raise_for_status()
        publish_batches(server, 400, 30_000, busy)  # outgrows the kernel's socket buffers
        await until_health(server, subscribers=0, slow_consumer_disconnects=1)
        stalled.settimeout(10)
        got = b"".join(iter(lambda: stalled.recv(65536), b""))  # what it had, then the end
    finally:
        stalled.close()
    # Each write is a whole chunk of whole frames, so the frames can be read off the bytes.
    frames = re.findall(rb"id: ([^\n]+)\ndata: ([^\n]+)\n\n", got)
    received = [(json.loads(data)["room"], json.loads(data)["data"]["i"]) for _, data in frames]
    assert len(received) < 401  # it was dropped before it had everything
    last_id = frames[-1][0].decode() if frames else ""
    async with sse_client() as client, rooms_stream(server, client, rooms, last_id) as stream:
        received += payloads(await collect(stream, 401 - len(received)))
    assert sorted(received, key=lambda p: p[1]) == [(quiet, -1)] + [(busy, i) for i in range(400)]
