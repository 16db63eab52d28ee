"""Scheduled and expiring messages (issue 17): `at`/`delay` on a publish store the message
in SQLite and deliver it when due (with the id of its delivery), once, whichever process and
across restarts; publishers list and cancel them; `expires_in` and a room's `max_age_s` keep
messages out of replays and the history API. Against the real server, with and without
BROKER_URL where the broker takes part. No timing assertions: short delays, and waiting
for the event."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

import httpx
import pytest
import redis
from conftest import Server, assert_envelope, collect, subscribe
from test_access_rules import new_room, new_token, new_user, root


def send(server: Server, room: str, i: int, **fields) -> httpx.Response:
    body = {"room": room, "speaker": "s", "data": {"i": i}, **fields}
    return httpx.post(f"{server.url}/api/v1/send", json=body, headers=root(server))


def scheduled(server: Server, room: str, i: int, **fields) -> dict:
    """Schedule {"i": i} (fields: at or delay, ...); the schedule of the 202 reply."""
    reply = send(server, room, i, **fields)
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["msg"] == "Message Scheduled" and body["target"] == {"room": room}
    assert "id" not in body and "event" not in body  # no message (id) yet
    return body["scheduled"]


def listed(server: Server, room: str, headers: dict | None = None) -> list[dict]:
    url = f"{server.url}/api/v1/rooms/{room}/scheduled"
    reply = httpx.get(url, headers=root(server) if headers is None else headers)
    assert reply.status_code == 200, reply.text
    return reply.json()["scheduled"]


def history(server: Server, room: str) -> list[dict]:
    reply = httpx.get(f"{server.url}/api/v1/rooms/{room}/messages", params={"order": "asc"})
    assert reply.status_code == 200, reply.text
    return reply.json()["messages"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def numbers(events) -> list[int]:
    return [json.loads(event.data)["data"]["i"] for event in events]


async def test_a_delayed_message_comes_when_due_with_the_id_of_its_delivery(
    make_server, broker_env
):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    async with subscribe(f"{server.url}/api/v1/events/{room}") as live:
        assert send(server, room, 1).json()["id"] == 1
        schedule = scheduled(server, room, 2, delay=2, expires_in=600)
        assert schedule["room"] == room and schedule["expires_in"] == 600
        assert schedule["data"] == {"i": 2} and schedule["speaker"] == "s"
        assert send(server, room, 3).json()["id"] == 2  # published after the reply, before due
        events = await collect(live, 3)
    assert numbers(events) == [1, 3, 2]
    assert [int(event.id) for event in events] == [1, 2, 3]  # ids in delivery order
    delivered = json.loads(events[2].data)
    assert delivered["time"] >= schedule["due_at"]  # never before it is due
    assert delivered["expires_at"] == delivered["time"] + 600_000
    assert [message["id"] for message in history(server, room)] == [1, 2, 3]
    assert listed(server, room) == []

    # the GET form takes at, delay and expires_in as query parameters
    params = {"token": server.token, "msg": "later", "room": room, "delay": "1"}
    reply = httpx.get(f"{server.url}/api/v1/send/bob", params=params)
    assert reply.status_code == 202 and reply.json()["scheduled"]["speaker"] == "bob"
    wait_until(lambda: len(history(server, room)) == 4, "the GET's message is delivered")


async def test_scheduled_messages_are_listed_and_a_cancelled_one_never_comes(
    make_server, broker_env
):
    server = make_server(**broker_env)
    owner = new_user(server)
    room = new_room(server, owner.auth)
    publisher = {"Authorization": f"Bearer {new_token(server, owner, room, 'publish')}"}
    reader = {"Authorization": f"Bearer {new_token(server, owner, room, 'subscribe')}"}
    far = scheduled(server, room, 1, at=int(time.time() * 1000) + 3_600_000)
    doomed = scheduled(server, room, 2, delay=5)
    assert listed(server, room, publisher) == [doomed, far]  # the soonest first
    assert listed(server, room, owner.auth) == [doomed, far]
    url = f"{server.url}/api/v1/rooms/{room}/scheduled"
    assert_envelope(httpx.get(url), 401, "")
    assert_envelope(httpx.get(url, headers=reader), 403, "")  # reading is no publishing
    assert_envelope(httpx.delete(f"{url}/{doomed['id']}", headers=reader), 403, "")

    other = new_room(server, owner.auth)
    refused = httpx.delete(
        f"{server.url}/api/v1/rooms/{other}/scheduled/{doomed['id']}", headers=owner.auth
    )
    assert_envelope(refused, 404, "No such scheduled message")  # not that room's
    cancelled = httpx.delete(f"{url}/{doomed['id']}", headers=publisher)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["id"] == doomed["id"]
    assert_envelope(httpx.delete(f"{url}/{doomed['id']}", headers=publisher), 404, "cancelled")
    assert listed(server, room) == [far]

    async with subscribe(f"{server.url}/api/v1/events/{room}") as live:
        scheduled(server, room, 3, delay=6)  # due after the cancelled one would have been
        (event,) = await collect(live, 1)
    assert numbers([event]) == [3] and event.id == "1"
    assert [message["data"] for message in history(server, room)] == [{"i": 3}]
    assert listed(server, room) == [far]

    # deleting the room deletes its scheduled messages
    httpx.delete(f"{server.url}/api/v1/rooms/{room}", headers=owner.auth).raise_for_status()
    new_room_again = httpx.post(f"{server.url}/api/v1/rooms", json={"id": room}, headers=owner.auth)
    assert new_room_again.status_code == 201
    assert listed(server, room) == []


async def test_a_scheduled_message_survives_a_restart_and_comes_once(make_server, broker_env):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    scheduled(server, room, 1, delay=2)
    server.stop()
    server.start()  # (due now, or soon)
    wait_until(lambda: len(history(server, room)) == 1, "it is delivered")
    server.stop()
    server.start()  # delivered: not again
    async with subscribe(f"{server.url}/api/v1/events/{room}", **{"Last-Event-ID": "0"}) as sub:
        scheduled(server, room, 2, delay=1)
        events = await collect(sub, 2)
    assert numbers(events) == [1, 2] and [event.id for event in events] == ["1", "2"]
    assert [message["data"]["i"] for message in history(server, room)] == [1, 2]


async def test_of_two_processes_one_delivers_each_scheduled_message(
    make_server, broker_url, tmp_path
):
    """Two processes on one SQLite file and one Redis: each due message is claimed in the
    transaction that stores it, so one process delivers it, once; one scheduled on a
    process that stopped is delivered by the other."""
    a, b = (make_server(data_dir=tmp_path / "hub", BROKER_URL=broker_url) for _ in range(2))
    room = new_room(a, root(a))
    async with (
        subscribe(f"{a.url}/api/v1/events/{room}") as on_a,
        subscribe(f"{b.url}/api/v1/events/{room}") as on_b,
    ):
        at = int(time.time() * 1000) + 8000  # due at once on both: both try to deliver
        for i in range(10):
            scheduled(a if i % 2 else b, room, i, at=at)
        for events in (await collect(on_a, 10), await collect(on_b, 10)):
            assert sorted(numbers(events)) == list(range(10))
            assert [int(event.id) for event in events] == list(range(1, 11))
    assert len(history(a, room)) == 10

    scheduled(a, room, 10, delay=1)
    a.stop()  # b takes it over (it looks every second)
    async with subscribe(f"{b.url}/api/v1/events/{room}", **{"Last-Event-ID": "10"}) as on_b:
        (event,) = await collect(on_b, 1)
    assert numbers([event]) == [10] and event.id == "11"
    a.start()
    scheduled(b, room, 11, delay=1)
    wait_until(lambda: len(history(a, room)) == 12, "the last one is delivered")
    assert [message["id"] for message in history(b, room)] == list(range(1, 13))


async def test_an_expired_message_is_not_replayed_but_was_delivered_live(make_server, broker_env):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    async with subscribe(f"{server.url}/api/v1/events/{room}") as live:
        short = send(server, room, 1, expires_in=1).json()["event"]
        assert short["expires_at"] == short["time"] + 1000
        assert "expires_at" not in send(server, room, 2).json()["event"]
        assert numbers(await collect(live, 2)) == [1, 2]  # live: both
    wait_until(lambda: [m["id"] for m in history(server, room)] == [2], "1 expires")
    async with subscribe(f"{server.url}/api/v1/events/{room}", **{"Last-Event-ID": "0"}) as sub:
        assert sub.hello["gap"] is False  # left out on purpose: no gap
        send(server, room, 3)
        assert numbers(await collect(sub, 2)) == [2, 3]


async def test_a_rooms_max_age_hides_then_trims_its_old_messages(make_server, broker_env):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    url = f"{server.url}/api/v1/rooms/{room}"
    changed = httpx.patch(url, json={"max_age_s": 1}, headers=root(server))
    assert changed.status_code == 200 and changed.json()["room"]["max_age_s"] == 1
    send(server, room, 1).raise_for_status()
    wait_until(lambda: history(server, room) == [], "it is older than the max age")
    database = server.data_dir / "streaming-message.db"

    def stored() -> int:
        with sqlite3.connect(database) as db:
            return db.execute("SELECT COUNT(*) FROM messages WHERE room = ?", (room,)).fetchone()[0]

    wait_until(lambda: stored() == 0, "it is trimmed from SQLite")
    if broker_env:
        stream = redis.Redis.from_url(broker_env["BROKER_URL"])
        wait_until(lambda: stream.xlen(f"sm:room:{room}:stream") == 0, "and from Redis")
    changed = httpx.patch(url, json={"max_age_s": None}, headers=root(server))
    assert changed.json()["room"]["max_age_s"] is None
    send(server, room, 2).raise_for_status()
    async with subscribe(f"{server.url}/api/v1/events/{room}", **{"Last-Event-ID": "0"}) as sub:
        send(server, room, 3)
        assert numbers(await collect(sub, 2)) == [2, 3]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"delay": 0}, "delay"),
        ({"delay": -1}, "delay"),
        ({"delay": "5"}, "delay"),
        ({"delay": 11}, "at most 10 s ahead"),
        ({"delay": 1e308}, "at most 10 s ahead"),
        ({"at": 1_000}, "not in the future"),
        ({"at": 1.5}, "at"),
        ({"at": "2030-01-01T00:00:00Z"}, "at"),
        ({"at": 4_000_000_000_000, "delay": 1}, "not both"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": "soon"}, "expires_in"),
    ],
)
def test_bad_schedules_and_expiries_are_refused_storing_nothing(make_server, fields, says):
    server = make_server(MAX_SCHEDULE_AHEAD_S="10")
    room = new_room(server, root(server))
    assert_envelope(send(server, room, 1, **fields), 400, says)
    assert history(server, room) == [] and listed(server, room) == []


def test_what_a_schedule_cannot_be(make_server):
    server = make_server(MAX_SCHEDULED_PER_ROOM="2")
    room = new_room(server, root(server))
    batch = [{"room": room, "speaker": "s", "data": {}, "delay": 1}] * 2
    reply = httpx.post(f"{server.url}/api/v1/send", json=batch, headers=root(server))
    assert_envelope(reply, 400, "A batch cannot be scheduled")
    keyed = {**root(server), "Idempotency-Key": "k"}
    body = {"room": room, "speaker": "s", "data": {}, "delay": 60}
    reply = httpx.post(f"{server.url}/api/v1/send", json=body, headers=keyed)
    assert_envelope(reply, 400, "no idempotency key")
    params = {"token": server.token, "msg": "m", "room": room, "delay": "soon"}
    assert_envelope(httpx.get(f"{server.url}/api/v1/send/s", params=params), 400, "number")
    assert history(server, room) == [] and listed(server, room) == []
    scheduled(server, room, 1, delay=60)
    scheduled(server, room, 2, delay=60)
    assert_envelope(send(server, room, 3, delay=60), 403, "Schedule limit reached")
    assert len(listed(server, room)) == 2
    other = new_room(server, root(server))  # a limit per room
    scheduled(server, other, 1, delay=60)
    assert_envelope(
        httpx.patch(
            f"{server.url}/api/v1/rooms/{room}", json={"max_age_s": 0}, headers=root(server)
        ),
        400,
        "max_age_s",
    )
