"""Past one process: several processes of one hub share rooms, ids, history and presence
through Redis (BROKER_URL) and SQLite (one DATA_DIR) (issue 10)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import suppress

import httpx
import pytest
import redis
from conftest import Server, collect, subscribe


@pytest.fixture
def make_hub(make_server, tmp_path, broker_url) -> Callable[..., list[Server]]:
    """make_hub(n, **env): n processes of one hub (one DATA_DIR, one Redis database)."""

    def make(count: int, **env: str) -> list[Server]:
        return [
            make_server(data_dir=tmp_path / "shared", BROKER_URL=broker_url, **env)
            for _ in range(count)
        ]

    return make


async def publish_all(server: Server, room: str, items: list[int], batch: int = 1) -> list[dict]:
    """Publish {"i": item} for every item, `batch` messages per request; the 202 events."""
    events = []
    async with httpx.AsyncClient() as client:
        for start in range(0, len(items), batch):
            body = [
                {"room": room, "speaker": "bot", "data": {"i": i}} for i in items[start:][:batch]
            ]
            reply = await client.post(
                f"{server.url}/api/v1/send",
                json=body if batch > 1 else body[0],
                headers={"Authorization": f"Bearer {server.token}"},
            )
            assert reply.status_code == 202, reply.text
            events += reply.json()["events"] if batch > 1 else [reply.json()["event"]]
    return events


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def presence(server: Server, room: str = "lobby") -> dict:
    reply = httpx.get(f"{server.url}/api/v1/rooms/{room}")
    assert reply.status_code == 200, reply.text
    return reply.json()["room"]["subscribers"]


def presence_route(server: Server, room: str = "lobby") -> dict:
    reply = httpx.get(f"{server.url}/api/v1/rooms/{room}/presence")
    assert reply.status_code == 200, reply.text
    return {role: reply.json()[role] for role in ("players", "controllers")}


async def test_publishes_on_any_process_reach_every_subscriber_once_in_order(make_hub):
    a, b, c = make_hub(3)
    assert {server.health()["broker"] for server in (a, b, c)} == {"redis"}
    urls = [f"{server.url}/api/v1/events" for server in (a, b, b, c, c)]
    async with (
        subscribe(urls[0]) as on_a,
        subscribe(urls[1]) as on_b1,
        subscribe(urls[2]) as on_b2,
        subscribe(urls[3]) as on_c1,
        subscribe(urls[4]) as on_c2,
    ):
        subscriptions = [on_a, on_b1, on_b2, on_c1, on_c2]
        # A publishes one by one, B in batches of 5, C one by one, all at once.
        published = await asyncio.gather(
            publish_all(a, "lobby", list(range(0, 30))),
            publish_all(b, "lobby", list(range(100, 130)), batch=5),
            publish_all(c, "lobby", list(range(200, 220))),
        )
        received = await asyncio.gather(*(collect(s, 80) for s in subscriptions))

    events = sorted((event for events in published for event in events), key=lambda e: e["id"])
    assert [event["id"] for event in events] == list(range(1, 81))  # one sequence, no reuse
    for stream in received:  # everyone: every message once, in id order, as acknowledged
        assert [int(event.id) for event in stream] == list(range(1, 81))
        assert [json.loads(event.data) for event in stream] == events
    for events_of_one_publisher in published:  # each publisher's messages kept their order
        ids = [event["id"] for event in events_of_one_publisher]
        assert ids == sorted(ids)
    stored = sqlite3.connect(a.data_dir / "streaming-message.db").execute(
        "SELECT id, payload FROM messages WHERE room = 'lobby' ORDER BY id"
    )
    assert [(i, json.loads(payload)) for i, payload in stored] == [(e["id"], e) for e in events]


async def test_resume_on_another_process(make_hub):
    a, b, c = make_hub(3)
    published = await publish_all(a, "lobby", list(range(5)))
    async with subscribe(f"{b.url}/api/v1/events", **{"Last-Event-ID": "2"}) as resumed:
        assert resumed.hello["gap"] is False and resumed.hello["last_id"] == 5
        published += await publish_all(c, "lobby", [5])
        received = await collect(resumed, 4)
    assert [int(event.id) for event in received] == [3, 4, 5, 6]
    assert [json.loads(event.data) for event in received] == published[2:]


async def test_history_outlives_redis_losing_its_data(make_hub, broker_url):
    """Redis here keeps nothing on disk: after it loses everything, ids go on from SQLite
    (never reused) and a resume gets the older messages from SQLite."""
    a, b = make_hub(2)
    await publish_all(a, "lobby", [1, 2, 3])
    redis.Redis.from_url(broker_url).flushdb()
    later = await publish_all(b, "lobby", [4, 5])
    assert [event["id"] for event in later] == [4, 5]
    async with subscribe(f"{a.url}/api/v1/events?lastEventId=1") as resumed:
        received = await collect(resumed, 4)
    assert [json.loads(event.data)["data"]["i"] for event in received] == [2, 3, 4, 5]
    assert resumed.hello["gap"] is False


async def test_gap_flag_when_history_is_trimmed_across_processes(make_hub):
    a, b = make_hub(2, HISTORY_SIZE="3")
    await publish_all(a, "lobby", list(range(300)), batch=100)
    async with subscribe(f"{b.url}/api/v1/events", **{"Last-Event-ID": "10"}) as resumed:
        assert resumed.hello["gap"] is True
        ids = []
        async with asyncio.timeout(15):
            async for event in resumed:  # what is kept (at least 3), in order, up to the last
                ids.append(int(event.id))
                if ids[-1] == 300:
                    break
    assert len(ids) >= 3 and ids[0] > 11 and ids == list(range(ids[0], 301))


async def test_killed_process_leaves_the_others_serving(make_hub):
    a, b, c = make_hub(3)
    async with (
        subscribe(f"{a.url}/api/v1/events") as on_a,
        subscribe(f"{b.url}/api/v1/events") as on_b,
        subscribe(f"{c.url}/api/v1/events") as on_c,
    ):
        await publish_all(a, "lobby", [0])
        for stream in (on_a, on_b, on_c):
            assert len(await collect(stream, 1)) == 1
        a.stop(signal.SIGKILL)
        with suppress(httpx.HTTPError):  # its stream ends with it
            assert await collect(on_a, 1) == []
        await publish_all(b, "lobby", [1, 2])
        await publish_all(c, "lobby", [3])
        for stream in (on_b, on_c):
            received = await collect(stream, 3)
            assert [json.loads(event.data)["data"]["i"] for event in received] == [1, 2, 3]
            assert [int(event.id) for event in received] == [2, 3, 4]


async def test_presence_counts_are_summed_across_processes(make_hub):
    a, b, c = make_hub(3, PRESENCE_TTL_S="1")
    controller = f"/api/v1/events?role=controller&token={a.token}"
    async with (
        subscribe(f"{a.url}/api/v1/events"),
        subscribe(f"{a.url}/api/v1/events"),
        subscribe(f"{b.url}/api/v1/events"),
        subscribe(f"{b.url}{controller}"),
        subscribe(f"{c.url}/api/v1/events"),
    ):
        everyone = {"players": 4, "controllers": 1}
        for server in (a, b, c):
            wait_until(lambda server=server: presence(server) == everyone, f"{server.url} counts")
        async with subscribe(f"{c.url}/api/v1/events"):
            wait_until(lambda: presence(a)["players"] == 5, "a sees a new player on c")
        wait_until(lambda: presence(b)["players"] == 4, "b sees a player leave c")
        c.stop(signal.SIGKILL)  # its counts expire after PRESENCE_TTL_S
        wait_until(lambda: presence(a) == {"players": 3, "controllers": 1}, "c's counts expire")
        b.stop()  # a graceful stop takes its counts away at once
        assert presence(a) == {"players": 2, "controllers": 0}


async def test_rooms_created_on_one_process_are_served_by_the_others(make_hub):
    a, b = make_hub(2)
    a.create_room("Stage")
    wait_until(lambda: httpx.get(f"{b.url}/api/v1/rooms/stage").status_code == 200, "b knows")
    reply = httpx.post(
        f"{b.url}/api/v1/rooms",
        json={"id": "stage"},
        headers={"Authorization": f"Bearer {b.token}"},
    )
    assert reply.status_code == 409 and reply.json()["msg"] == "Room already exists: stage"
    async with subscribe(f"{b.url}/api/v1/events/stage") as on_b:
        published = await publish_all(a, "stage", [1])
        (event,) = await collect(on_b, 1)
    assert json.loads(event.data) == published[0]


async def test_hypercorn_workers_serve_one_hub(make_server, tmp_path, broker_url):
    server = make_server(workers=2, BROKER_URL=broker_url)
    pids = set()
    for _ in range(100):  # each new connection may reach either worker
        pids.add(httpx.get(f"{server.url}/healthz", headers={"Connection": "close"}).json()["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2
    url = f"{server.url}/api/v1/events"
    async with (
        subscribe(url) as one,
        subscribe(url) as two,
        subscribe(url) as three,
        subscribe(url) as four,
    ):
        published = await asyncio.gather(*(publish_all(server, "lobby", [i]) for i in range(20)))
        received = await asyncio.gather(*(collect(s, 20) for s in (one, two, three, four)))
    assert sorted(event["id"] for events in published for event in events) == list(range(1, 21))
    for stream in received:
        assert [int(event.id) for event in stream] == list(range(1, 21))


async def until_event(events, kind: str, done: Callable[[dict], bool]) -> dict:
    """The data of the first `kind` event that is `done`."""
    async with asyncio.timeout(15):
        async for event in events:
            if event.event == kind and done(data := json.loads(event.data)):
                return data
    raise AssertionError("stream ended")


async def test_heartbeats_and_presence_events_count_every_process(make_hub):
    a, b = make_hub(2, HEARTBEAT_S="0.3", PRESENCE_INTERVAL_S="0.2", COALESCE_MS="0")
    controller = f"{a.url}/api/v1/events?role=controller&token={a.token}"
    async with subscribe(f"{b.url}/api/v1/events") as player:
        assert player.hello["presence"] == {"players": 1, "controllers": 0}
        async with subscribe(controller):
            # The player, on the other process, hears of the controller at once and then on
            # every beat.
            beat = await until_event(player, "heartbeat", lambda beat: beat["controllers"] == 1)
            assert beat["interval_s"] == 0.3
            presence = await until_event(player, "presence", lambda p: p["controllers"] == 1)
            assert presence == {"room": "lobby", "players": 1, "controllers": 1}
            await until_event(player, "heartbeat", lambda beat: beat["controllers"] == 1)
            async with subscribe(f"{b.url}/api/v1/events") as second:
                assert second.hello["presence"] == {"players": 2, "controllers": 1}
            wait_until(
                lambda: presence_route(b) == {"players": 1, "controllers": 1},
                "b's presence route counts a's controller, not the player who left",
            )
        # The controller left process A: one heartbeat saying so, at once.
        await until_event(player, "heartbeat", lambda beat: beat["controllers"] == 0)
        presence = await until_event(player, "presence", lambda p: p["controllers"] == 0)
        assert presence == {"room": "lobby", "players": 1, "controllers": 0}


async def test_room_changes_reach_every_process(make_hub):
    a, b = make_hub(2)
    root = {"Authorization": f"Bearer {a.token}"}
    a.create_room("Show")
    wait_until(lambda: httpx.get(f"{b.url}/api/v1/rooms/show").status_code == 200, "b knows")
    reply = httpx.patch(f"{a.url}/api/v1/rooms/show", json={"title": "The show"}, headers=root)
    assert reply.status_code == 200, reply.text
    wait_until(
        lambda: httpx.get(f"{b.url}/api/v1/rooms/show").json()["room"]["title"] == "The show",
        "b has the new title",
    )
    async with subscribe(f"{b.url}/api/v1/events/show") as on_b:
        httpx.patch(f"{a.url}/api/v1/rooms/show", json={"private": True}, headers=root)
        ended = await until_event(on_b, "private", lambda data: True)
    assert ended == {"room": "show"}
    assert httpx.get(f"{b.url}/api/v1/rooms/show").status_code == 401  # private now
    async with subscribe(f"{b.url}/api/v1/events/show?token={a.token}") as on_b:
        assert httpx.delete(f"{a.url}/api/v1/rooms/show", headers=root).status_code == 200
        assert await until_event(on_b, "deleted", lambda data: True) == {"room": "show"}
    reply = httpx.post(
        f"{b.url}/api/v1/send", json={"room": "show", "speaker": "x", "data": {}}, headers=root
    )
    assert reply.status_code == 404
    # Made again, it starts afresh: no history and ids from 1 (as with one process).
    b.create_room("show")
    wait_until(lambda: httpx.get(f"{a.url}/api/v1/rooms/show").status_code == 200, "a knows")
    (event,) = await publish_all(a, "show", [1])
    assert event["id"] == 1


async def test_accounts_are_shared_by_every_process(make_hub):
    admin = {"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin password 1"}
    a, b = make_hub(2, **admin)
    reply = httpx.post(
        f"{a.url}/api/v1/auth/login", json={"username": "admin", "password": "admin password 1"}
    )
    assert reply.status_code == 200, reply.text
    access = {"Authorization": f"Bearer {reply.json()['access_token']}"}
    me = f"{b.url}/api/v1/auth/me"
    wait_until(lambda: httpx.get(me, headers=access).status_code == 200, "b knows the session")
    reply = httpx.post(
        f"{a.url}/api/v1/tokens",
        json={"name": "bot", "rooms": "*", "rights": ["publish"]},
        headers=access,
    )
    assert reply.status_code == 201, reply.text
    token = reply.json()
    bot = {"Authorization": f"Bearer {token['token']}"}
    message = {"speaker": "bot", "data": {"message": "hi"}}
    send = f"{b.url}/api/v1/send"
    wait_until(lambda: httpx.post(send, json=message, headers=bot).status_code == 202, "token")
    revoked = httpx.delete(f"{a.url}/api/v1/tokens/{token['api_token']['id']}", headers=access)
    assert revoked.status_code == 200, revoked.text
    wait_until(lambda: httpx.post(send, json=message, headers=bot).status_code == 401, "revoked")
    assert httpx.post(f"{a.url}/api/v1/auth/logout", headers=access).status_code == 200
    wait_until(lambda: httpx.get(me, headers=access).status_code == 401, "b ends the session")
