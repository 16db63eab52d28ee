"""Controller presence and heartbeat (issue 4)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import Server, collect, sse_client, subscribe
from httpx_sse import ServerSentEvent

HEARTBEAT_S = 0.2
PRESENCE_INTERVAL_S = 0.5


@pytest.fixture(scope="module")
def beat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("presence"),
        HEARTBEAT_S=str(HEARTBEAT_S),
        PRESENCE_INTERVAL_S=str(PRESENCE_INTERVAL_S),
        COALESCE_MS="0",  # frames go out at once, so none can overtake a stream's hello
    ).start()
    yield server
    server.stop()


def room_urls(server: Server, room: str) -> tuple[str, str]:
    """(player URL, controller URL) of a new room."""
    server.create_room(room)
    url = f"{server.url}/api/v1/events/{room}"
    return url, f"{url}?role=controller&token={server.token}"


async def until(events, kind: str, done: Callable[[dict], bool]) -> list[dict]:
    """The data of every `kind` event up to and including the first one that is `done`."""
    seen = []
    async with asyncio.timeout(15):
        async for event in events:
            if event.event == kind:
                seen.append(json.loads(event.data))
                if done(seen[-1]):
                    return seen
    raise AssertionError("stream ended")


async def before_sentinel(server: Server, room: str, events) -> list[ServerSentEvent]:
    """Publish a sentinel message and return every event received before it."""
    server.publish(room=room, data={"message": "sentinel"})
    seen = []
    async with asyncio.timeout(15):
        async for event in events:
            if event.event == "message" and json.loads(event.data)["data"]["message"] == "sentinel":
                return seen
            seen.append(event)
    raise AssertionError("stream ended")


def controllers(n: int) -> Callable[[dict], bool]:
    return lambda beat: beat["controllers"] == n


async def test_hello_tells_the_heartbeat_interval_and_presence(beat_server: Server):
    url, controller_url = room_urls(beat_server, "greeted")
    async with subscribe(url) as player:
        assert player.hello["heartbeat_s"] == HEARTBEAT_S
        assert player.hello["fallback"] is False
        assert player.hello["presence"] == {"players": 1, "controllers": 0}
        async with subscribe(controller_url) as controller:
            assert controller.hello["presence"] == {"players": 1, "controllers": 1}


async def test_heartbeats_start_with_the_first_controller_and_stop_with_the_last(
    beat_server: Server,
):
    url, controller_url = room_urls(beat_server, "beats")
    async with subscribe(url) as player:
        await asyncio.sleep(3 * HEARTBEAT_S)
        quiet = await before_sentinel(beat_server, "beats", player)
        assert "heartbeat" not in [event.event for event in quiet]  # no controller yet

        async with subscribe(controller_url):
            beats = [json.loads(e.data) for e in await collect(player, 3, "heartbeat")]
            assert [beat["controllers"] for beat in beats] == [1, 1, 1]
            assert all(beat["interval_s"] == HEARTBEAT_S for beat in beats)
            async with subscribe(controller_url):
                counts = [
                    b["controllers"] for b in await until(player, "heartbeat", controllers(2))
                ]
            counts += [b["controllers"] for b in await until(player, "heartbeat", controllers(1))]
            assert 0 not in counts  # a controller was online all along

        # the last controller left: one heartbeat says so, then they stop
        counts = [b["controllers"] for b in await until(player, "heartbeat", controllers(0))]
        assert 0 not in counts[:-1]
        await asyncio.sleep(3 * HEARTBEAT_S)
        after = await before_sentinel(beat_server, "beats", player)
        assert "heartbeat" not in [event.event for event in after]

        async with subscribe(controller_url):  # and start again with the next one
            (beat,) = await collect(player, 1, "heartbeat")
            assert json.loads(beat.data)["controllers"] == 1


async def test_a_resuming_controller_gets_hello_and_replay_before_the_heartbeat(
    beat_server: Server,
):
    """Its own join starts the heartbeat while its replay is still being read."""
    _, controller_url = room_urls(beat_server, "resumed")
    for i in range(3):
        beat_server.publish(room="resumed", data={"i": i})
    async with subscribe(controller_url, **{"Last-Event-ID": "0"}) as controller:
        assert controller.hello["presence"] == {"players": 0, "controllers": 1}
        async with asyncio.timeout(15):
            first = [await anext(controller) for _ in range(4)]
    assert [event.event for event in first] == ["message"] * 3 + ["heartbeat"]
    assert [event.id for event in first[:3]] == ["1", "2", "3"]


async def test_one_heartbeat_per_interval_whatever_the_number_of_controllers(
    beat_server: Server,
):
    """One timer per room and one frame per beat: every player sees the same frames, and
    three controllers do not make three times as many."""
    url, controller_url = room_urls(beat_server, "crowded")
    async with (
        subscribe(url) as first,
        subscribe(url) as second,
        subscribe(controller_url),
        subscribe(controller_url),
        subscribe(controller_url),
    ):
        await until(first, "heartbeat", controllers(3))
        beats = [event.data for event in await collect(first, 6, "heartbeat")]
        await until(second, "heartbeat", controllers(3))
        assert [event.data for event in await collect(second, 6, "heartbeat")] == beats
    times = [json.loads(beat)["time"] for beat in beats]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= HEARTBEAT_S * 1000 / 2, gaps


async def test_presence_events_are_coalesced_under_200_joins(beat_server: Server):
    url, _ = room_urls(beat_server, "stadium")
    joins = 200
    async with subscribe(url) as watcher, sse_client() as client:
        release = asyncio.Event()

        async def spectator() -> None:
            async with subscribe(url, client):
                await release.wait()

        started = time.monotonic()
        tasks = [asyncio.create_task(spectator()) for _ in range(joins)]
        events = await until(watcher, "presence", lambda p: p["players"] == joins + 1)
        elapsed = time.monotonic() - started
        # at most one event per interval, not one per join
        assert len(events) <= elapsed / PRESENCE_INTERVAL_S + 2, (len(events), elapsed)
        assert all(p["controllers"] == 0 for p in events)
        players = [p["players"] for p in events]
        assert players == sorted(set(players))  # each event tells a change
        presence = httpx.get(f"{beat_server.url}/api/v1/rooms/stadium/presence").json()
        assert (presence["players"], presence["controllers"]) == (joins + 1, 0)

        release.set()
        await asyncio.gather(*tasks)
        await until(watcher, "presence", lambda p: p["players"] == 1)


async def test_presence_event_and_endpoint_count_players_and_controllers(beat_server: Server):
    url, controller_url = room_urls(beat_server, "counted")
    endpoint = f"{beat_server.url}/api/v1/rooms/Counted/presence"
    async with subscribe(url) as player, subscribe(url), subscribe(controller_url):
        await until(
            player, "presence", lambda p: p == {"room": "counted", "players": 2, "controllers": 1}
        )
        bad = httpx.get(f"{url}?role=controller&token=wrong")  # not a controller: refused
        assert bad.status_code == 401
        reply = httpx.get(endpoint)
        assert reply.status_code == 200
        assert reply.json() == {
            "success": True,
            "code": 200,
            "msg": "OK",
            "room": "counted",
            "players": 2,
            "controllers": 1,
        }
        room = httpx.get(f"{beat_server.url}/api/v1/rooms/counted").json()["room"]
        assert room["subscribers"] == {"players": 2, "controllers": 1}
    for path, status in [("bad-id!", 400), ("nosuchroom", 404)]:
        reply = httpx.get(f"{beat_server.url}/api/v1/rooms/{path}/presence")
        assert reply.status_code == status and reply.json()["success"] is False
