"""Edit and retract (issue 16): PATCH and DELETE /api/v1/rooms/<room>/messages/<id> send
`event: edit` / `event: retract` to the room's streams, and history and replays show the
edited message or leave the retracted one out: one process, Redis, and processes of one
hub over Redis."""

from __future__ import annotations

import asyncio
import json

import httpx
import redis
from conftest import Server, Subscription, assert_envelope, collect, subscribe
from test_access_rules import new_room, new_token, new_user, publish, root
from test_scale import wait_until


def edit(server: Server, room: str, message_id: int | str, body: dict, **headers) -> httpx.Response:
    url = f"{server.url}/api/v1/rooms/{room}/messages/{message_id}"
    return httpx.patch(url, json=body, headers=headers or root(server))


def retract(server: Server, room: str, message_id: int | str, **headers) -> httpx.Response:
    url = f"{server.url}/api/v1/rooms/{room}/messages/{message_id}"
    return httpx.delete(url, headers=headers or root(server))


def messages(server: Server, room: str, **query) -> list[dict]:
    reply = httpx.get(f"{server.url}/api/v1/rooms/{room}/messages", params=query)
    assert reply.status_code == 200, reply.text
    return reply.json()["messages"]


async def replay(server: Server, room: str, after: int, count: int) -> tuple[dict, list[dict]]:
    """The hello and the first `count` messages of a stream resumed after `after`."""
    url = f"{server.url}/api/v1/events/{room}"
    async with subscribe(url, **{"Last-Event-ID": str(after)}) as stream:
        return stream.hello, [json.loads(e.data) for e in await collect(stream, count)]


async def room_events(stream: Subscription, count: int) -> list[tuple[str, dict]]:
    """The next `count` messages, edits and retractions: (type, data)."""
    received = []
    async with asyncio.timeout(15):
        async for event in stream:
            if event.event in ("message", "edit", "retract"):
                received.append((event.event, json.loads(event.data)))
                if len(received) == count:
                    return received
    return received


async def test_edit_and_retract_reach_streams_history_and_replays(make_server, broker_env):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    async with subscribe(f"{server.url}/api/v1/events/{room}") as live:
        sent = [publish(server, room, i).json()["event"] for i in range(3)]
        assert sent[0]["status"] == "✔ success"
        assert [json.loads(e.data) for e in await collect(live, 3)] == sent

        reply = edit(server, room, 2, {"data": {"message": "fixed"}, "speaker": "Narrator"})
        assert reply.status_code == 200, reply.text
        edited = reply.json()["event"]
        assert reply.json()["id"] == 2 and reply.json()["target"] == {"room": room}
        assert edited == {
            **sent[1],
            "speaker": "Narrator",
            "data": {"message": "fixed"},
            "edited": edited["edited"],
        }
        assert edited["edited"] >= sent[1]["time"]
        (event,) = await collect(live, 1, "edit")
        assert json.loads(event.data) == edited and event.id == "3"  # no id of its own

        reply = retract(server, room, 3)
        assert reply.status_code == 200, reply.text
        assert reply.json()["msg"] == "Message Retracted" and reply.json()["id"] == 3
        (event,) = await collect(live, 1, "retract")
        assert json.loads(event.data) == {"id": 3, "room": room}

    assert messages(server, room) == [edited, sent[0]]
    assert messages(server, room, order="asc") == [sent[0], edited]
    later = publish(server, room, 3).json()["event"]
    hello, replayed = await replay(server, room, 0, 3)
    assert replayed == [sent[0], edited, later] and hello["gap"] is False
    hello, replayed = await replay(server, room, 2, 1)  # only the retracted one in between
    assert replayed == [later] and hello["gap"] is False
    # a page of the history holds `limit` messages, retracted ones aside
    reply = httpx.get(f"{server.url}/api/v1/rooms/{room}/messages", params={"limit": 2})
    assert [m["id"] for m in reply.json()["messages"]] == [4, 2]
    assert reply.json()["next"] == f"/api/v1/rooms/{room}/messages?limit=2&before=2"

    server.stop()  # and after a restart, from SQLite
    server.start()
    assert messages(server, room) == [later, edited, sent[0]]


def test_edit_and_retract_say_why_not_and_change_nothing(make_server):
    server = make_server(MAX_MESSAGE_BYTES="300")
    owner, stranger = new_user(server), new_user(server)
    room = new_room(server, owner.auth)
    kept = publish(server, room, 0).json()["event"]
    reader = new_token(server, owner, room, "subscribe")
    writer = new_token(server, owner, room, "publish")
    text = {"data": {"message": "new"}}

    assert_envelope(edit(server, room, 2, text), 404, "Unknown message: 2")
    assert_envelope(edit(server, room, "x1", text), 404, "Unknown message: x1")
    assert_envelope(edit(server, room, 10**20, text), 404, "Unknown message")
    assert_envelope(edit(server, "nosuchroom", 1, text), 404, "Unknown room")
    assert_envelope(edit(server, room, 1, {}), 400, "Nothing to change")
    assert_envelope(edit(server, room, 1, {"speaker": " "}), 400, "speaker")
    assert_envelope(edit(server, room, 1, {"speaker": None}), 400, "speaker")
    assert_envelope(edit(server, room, 1, {"data": "text"}), 400, "data must be a JSON object")
    assert_envelope(edit(server, room, 1, {"room": "other"}), 400, "Unknown field: room")
    assert_envelope(edit(server, room, 1, {"meta": "x" * 300}), 413, "Message too large")
    deep = {"data": {"a": json.loads("[" * 40 + "]" * 40)}}
    assert_envelope(edit(server, room, 1, deep), 400, "deeper")
    anonymous = httpx.patch(f"{server.url}/api/v1/rooms/{room}/messages/1", json=text)
    assert_envelope(anonymous, 401, "")
    assert_envelope(edit(server, room, 1, text, **stranger.auth), 403, "")
    bearer = {"Authorization": f"Bearer {reader}"}
    assert_envelope(edit(server, room, 1, text, **bearer), 403, "")
    assert_envelope(retract(server, room, 1, **bearer), 403, "")
    assert_envelope(retract(server, room, 1, **stranger.auth), 403, "")
    assert_envelope(httpx.delete(f"{server.url}/api/v1/rooms/{room}/messages/1"), 401, "")
    assert messages(server, room) == [kept]  # nothing changed

    writer_auth = {"Authorization": f"Bearer {writer}"}
    assert edit(server, room, 1, {"meta": None, "token": writer}, **owner.auth).status_code == 200
    assert edit(server, room, 1, {"meta": "note"}, **writer_auth).status_code == 200
    assert retract(server, room, 1, **owner.auth).status_code == 200
    assert_envelope(retract(server, room, 1), 404, "Unknown message: 1")  # once
    assert_envelope(edit(server, room, 1, text), 404, "Unknown message: 1")
    assert messages(server, room) == []


async def test_a_message_older_than_the_redis_stream_is_edited_in_sqlite(make_server, broker_url):
    server = make_server(BROKER_URL=broker_url)
    room = new_room(server, root(server))
    first = publish(server, room, 0).json()["event"]
    publish(server, room, 1).raise_for_status()
    redis.Redis.from_url(broker_url).flushdb()  # Redis lost them: SQLite has them
    assert edit(server, room, 1, {"data": {"i": "one"}}).status_code == 200
    assert retract(server, room, 2).status_code == 200
    (message,) = messages(server, room)
    assert message == {**first, "data": {"i": "one"}, "edited": message["edited"]}
    _, replayed = await replay(server, room, 0, 1)
    assert replayed[0]["data"] == {"i": "one"}


async def test_edit_and_retract_reach_every_process(make_server, tmp_path, broker_url):
    a, b = (make_server(data_dir=tmp_path / "hub", BROKER_URL=broker_url) for _ in range(2))
    room = new_room(a, root(a))
    wait_until(lambda: httpx.get(f"{b.url}/api/v1/rooms/{room}").status_code == 200, "b has it")
    async with (
        subscribe(f"{a.url}/api/v1/events/{room}") as on_a,
        subscribe(f"{b.url}/api/v1/events/{room}") as on_b,
    ):
        sent = [publish(a, room, i).json()["event"] for i in range(2)]
        # edited on the other process at once: each stream has the edit after the message
        edited = edit(b, room, 2, {"data": {"i": "two"}}).json()["event"]
        assert retract(b, room, 1).status_code == 200
        for stream in (on_a, on_b):
            assert await room_events(stream, 4) == [
                ("message", sent[0]),
                ("message", sent[1]),
                ("edit", edited),
                ("retract", {"id": 1, "room": room}),
            ]
    for server in (a, b):
        assert messages(server, room) == [edited]
        _, replayed = await replay(server, room, 0, 1)
        assert replayed == [edited]
