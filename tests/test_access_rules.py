"""Hardening round 2 (issue 14): who may follow or cancel the AI speaker, ids that are never
handed out twice (a failed commit with Redis, a room deleted and made again), the session
cookie among other cookies, ids with a final newline, the controller stream's rights and
the API tokens' lifetime."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from dataclasses import dataclass

import httpx
import pytest
import redis
from conftest import Server, collect, subscribe

names = itertools.count()


@dataclass
class User:
    access: str  # the access JWT
    id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


def root(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def new_user(server: Server) -> User:
    """A user made with the root token, logged in."""
    credentials = {"username": f"user{next(names)}", "password": "a password of theirs"}
    reply = httpx.post(f"{server.url}/api/v1/users", json=credentials, headers=root(server))
    assert reply.status_code == 201, reply.text
    reply = httpx.post(f"{server.url}/api/v1/auth/login", json=credentials)
    assert reply.status_code == 200, reply.text
    return User(reply.json()["access_token"], reply.json()["user"]["id"])


def new_room(server: Server, headers: dict[str, str], **fields) -> str:
    room = f"room{next(names)}"
    reply = httpx.post(f"{server.url}/api/v1/rooms", json={"id": room, **fields}, headers=headers)
    assert reply.status_code == 201, reply.text
    return room


def new_token(server: Server, owner: User, room: str, *rights: str) -> str:
    body = {"name": "t", "rooms": [room], "rights": list(rights)}
    reply = httpx.post(f"{server.url}/api/v1/tokens", json=body, headers=owner.auth)
    assert reply.status_code == 201, reply.text
    return reply.json()["token"]


def publish(server: Server, room: str, i: int) -> httpx.Response:
    body = {"room": room, "speaker": "s", "data": {"i": i}}
    return httpx.post(f"{server.url}/api/v1/send", json=body, headers=root(server))


async def open_stream(url: str, **kwargs) -> httpx.Response:
    """The reply to a GET of an event stream: its status, and its body unless it is one."""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, **kwargs) as reply,
    ):
        if reply.status_code != 200:
            await reply.aread()
        return reply


def database(server: Server) -> sqlite3.Connection:
    """Our own connection to the server's SQLite file (autocommit)."""
    return sqlite3.connect(server.data_dir / "streaming-message.db", isolation_level=None)


# ---------------------------------------------------------------------------------------
# 3. The AI speaker's chat
# ---------------------------------------------------------------------------------------


async def test_the_ai_speaker_is_followed_and_cancelled_only_with_publish_rights(make_server):
    """Its uid is in every delta its room's players get: knowing it is no right. Anonymous
    two-step chats stay as they were: their uid is their key."""
    server = make_server(DEMO_DELAY_S="0.2")  # the demo model answers for seconds
    owner, stranger = new_user(server), new_user(server)
    room = new_room(server, owner.auth)
    reader = new_token(server, owner, room, "subscribe")
    writer = new_token(server, owner, room, "publish")
    async with subscribe(f"{server.url}/api/v1/events/{room}") as player:
        reply = httpx.post(
            f"{server.url}/api/v1/rooms/{room}/ai", json={"prompt": "hi"}, headers=owner.auth
        )
        assert reply.status_code == 202, reply.text
        (delta,) = await collect(player, 1, "delta")
        uid = json.loads(delta.data)["stream"]
        assert uid == reply.json()["uid"]  # what every player knows

        chat = f"{server.url}/api/v1/chat/{uid}"
        refusals = [(None, 401), (reader, 403), (stranger.access, 403)]
        for token, status in refusals:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            for refused in [
                httpx.delete(chat, headers=headers),
                await open_stream(f"{chat}/events", headers=headers),
                await open_stream(f"{chat}/events", params={"token": token} if token else {}),
            ]:
                assert refused.status_code == status, (token, refused.request)
                assert refused.json()["success"] is False
        (more,) = await collect(player, 1, "delta")
        assert "content" in json.loads(more.data)  # the answer goes on: nothing cancelled it

        followed = await open_stream(f"{chat}/events", params={"token": writer})  # EventSource
        assert followed.status_code == 200
        cancelled = httpx.delete(chat, headers={"Authorization": f"Bearer {writer}"})
        assert cancelled.status_code == 200, cancelled.text
        async with asyncio.timeout(15):
            async for event in player:
                if event.event == "delta" and "error" in json.loads(event.data):
                    break
        assert json.loads(event.data)["error"] == "Chat cancelled"

    reply = httpx.post(f"{server.url}/api/v1/chat", json={"prompt": "hi"})  # anonymous
    uid = reply.json()["uid"]
    assert (await open_stream(f"{server.url}/api/v1/chat/{uid}/events")).status_code == 200
    assert httpx.delete(f"{server.url}/api/v1/chat/{uid}").status_code == 200


# ---------------------------------------------------------------------------------------
# 4. Ids are never handed out twice
# ---------------------------------------------------------------------------------------


async def test_a_room_made_again_goes_on_from_the_deleted_rooms_ids(make_server, broker_env):
    """A player resuming with an id of the deleted room must get every message of the new
    one: its ids go on after the old ones (they were 1, 2, ... again: the player missed
    those up to its id, and was told of no gap)."""
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    for i in range(5):
        assert publish(server, room, i).json()["id"] == i + 1
    assert httpx.delete(f"{server.url}/api/v1/rooms/{room}", headers=root(server)).is_success
    again = httpx.post(f"{server.url}/api/v1/rooms", json={"id": room}, headers=root(server))
    assert again.status_code == 201 and again.json()["room"]["last_id"] == 5

    url = f"{server.url}/api/v1/events/{room}"
    async with subscribe(url, **{"Last-Event-ID": "5"}) as resumed:
        assert resumed.hello["last_id"] == 5 and resumed.hello["gap"] is False
        assert publish(server, room, 5).json()["id"] == 6
        (event,) = await collect(resumed, 1)
    assert int(event.id) == 6 and json.loads(event.data)["data"] == {"i": 5}

    server.stop()  # the deleted room's last id is in SQLite, not in memory
    if "BROKER_URL" in broker_env:  # nor only in Redis
        redis.Redis.from_url(broker_env["BROKER_URL"]).flushdb()
    server.start()
    assert httpx.delete(f"{server.url}/api/v1/rooms/{room}", headers=root(server)).is_success
    again = httpx.post(f"{server.url}/api/v1/rooms", json={"id": room}, headers=root(server))
    assert again.json()["room"]["last_id"] == 6
    assert publish(server, room, 6).json()["id"] == 7


async def test_a_client_ahead_of_the_room_is_told_of_a_gap(make_server, broker_env):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    publish(server, room, 0).raise_for_status()
    url = f"{server.url}/api/v1/events/{room}"
    async with subscribe(url, **{"Last-Event-ID": "1"}) as level:
        assert level.hello["gap"] is False
    async with subscribe(url, **{"Last-Event-ID": "5"}) as ahead:
        assert ahead.hello["gap"] is True and ahead.hello["last_id"] == 1
        publish(server, room, 1).raise_for_status()
        (event,) = await collect(ahead, 1)  # the stream goes on with what comes
    assert int(event.id) == 2


REFUSE_MESSAGES = """CREATE TRIGGER refuse_messages BEFORE INSERT ON messages
BEGIN SELECT RAISE(ABORT, 'the disk is full (a test)'); END"""
REFUSE_LAST_IDS = """CREATE TRIGGER refuse_last_ids BEFORE UPDATE OF last_id ON rooms
BEGIN SELECT RAISE(ABORT, 'the disk is full (a test)'); END"""


@pytest.mark.parametrize("lost", ["redis", "redis and the process", "the floor in SQLite"])
async def test_an_id_delivered_by_a_failed_commit_is_never_given_again(
    make_server, broker_url, lost: str
):
    """With Redis, a message has its id and is delivered before SQLite stores it. When the
    commit then fails (500), the id was seen all the same: after Redis loses its counter
    (a restart without persistence), the next message must not get it again, or the
    subscribers that saw it skip that message and a resume with it misses nothing."""
    server = make_server(BROKER_URL=broker_url)
    room = new_room(server, root(server))
    publish(server, room, 0).raise_for_status()
    url = f"{server.url}/api/v1/events/{room}"
    async with subscribe(url) as events:
        db = database(server)
        db.execute(REFUSE_MESSAGES)
        if lost == "the floor in SQLite":  # SQLite refuses the id's record too
            db.execute(REFUSE_LAST_IDS)
        failed = publish(server, room, 1)
        assert failed.status_code == 500, failed.text
        assert failed.json()["msg"] == "Could not store the message"
        (seen,) = await collect(events, 1)
        assert int(seen.id) == 2  # delivered although not stored
        db.execute("DROP TRIGGER refuse_messages")
        db.execute("DROP TRIGGER IF EXISTS refuse_last_ids")
        db.close()
        if lost == "redis and the process":
            server.stop()
        redis.Redis.from_url(broker_url).flushdb()
        if lost == "redis and the process":
            server.start()
        reply = publish(server, room, 2)
        assert reply.status_code == 202, reply.text
        assert reply.json()["id"] == 3
        if lost != "redis and the process":
            (live,) = await collect(events, 1)
            assert int(live.id) == 3 and json.loads(live.data)["data"] == {"i": 2}
    async with subscribe(url, **{"Last-Event-ID": "2"}) as resumed:
        assert resumed.hello["gap"] is False
        (replayed,) = await collect(resumed, 1)
    assert int(replayed.id) == 3 and json.loads(replayed.data)["data"] == {"i": 2}


async def test_without_a_broker_a_failed_commit_delivers_nothing_and_keeps_its_id(make_server):
    """Nothing is seen before SQLite has it: the next message takes the id, with no hole."""
    server = make_server()
    room = new_room(server, root(server))
    async with subscribe(f"{server.url}/api/v1/events/{room}") as events:
        db = database(server)
        db.execute(REFUSE_MESSAGES)
        assert publish(server, room, 0).status_code == 500
        db.execute("DROP TRIGGER refuse_messages")
        db.close()
        assert publish(server, room, 1).json()["id"] == 1
        (event,) = await collect(events, 1)
    assert int(event.id) == 1 and json.loads(event.data)["data"] == {"i": 1}


# ---------------------------------------------------------------------------------------
# 5. The session cookie among other cookies
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "others",
    [
        b"foo=bar baz",  # a space: SimpleCookie gave up on the whole header
        b'prefs={"theme":"dark","size":2}',  # JSON
        b"legacy=caf\xe9",  # a byte that is not UTF-8
        b'broken="unterminated',
    ],
)
async def test_the_session_cookie_is_read_whatever_other_cookies_hold(make_server, others: bytes):
    server = make_server()
    owner = new_user(server)
    room = new_room(server, owner.auth, private=True)
    url = f"{server.url}/api/v1/events/{room}"
    for cookie in [others + b"; sm_session=" + owner.access.encode(), b"sm_session=x; " + others]:
        status = (await open_stream(url, headers={"Cookie": cookie})).status_code
        assert status == (200 if owner.access.encode() in cookie else 401), cookie


# ---------------------------------------------------------------------------------------
# 7. Ids with a final newline
# ---------------------------------------------------------------------------------------


def test_ids_with_a_final_newline_are_refused(server: Server):
    """`$` also matches before a final newline: "abc\\n" was a room no one could delete."""
    cases = [
        ("/api/v1/rooms", {"id": "newline\n"}, "id must be 1-64 letters or digits (any case)"),
        (
            "/api/v1/chat",
            {"uid": "newline\n", "prompt": "x"},
            "uid must be 1-64 letters, digits, '-' or '_'",
        ),
        (
            "/api/v1/users",
            {"username": "newline\n", "password": "a password of theirs"},
            "username must be 1-32 letters, digits, '.', '_' or '-'",
        ),
    ]
    for path, body, msg in cases:
        reply = httpx.post(f"{server.url}{path}", json=body, headers=root(server))
        assert reply.status_code == 400, (path, reply.text)
        assert reply.json()["msg"] == msg
    rooms = httpx.get(f"{server.url}/api/v1/rooms").json()["rooms"]
    assert not [room for room in rooms if "\n" in room["id"]]
    for speaker, status in [(" two words\n", 202), ("\n", 400), ("   ", 400)]:
        body = {"speaker": speaker, "data": {"message": "hi"}}
        reply = httpx.post(f"{server.url}/api/v1/send", json=body, headers=root(server))
        assert reply.status_code == status, (speaker, reply.text)


# ---------------------------------------------------------------------------------------
# 8. A controller stream reads the room: it needs the subscribe right too
# ---------------------------------------------------------------------------------------


async def test_a_controller_stream_needs_the_subscribe_right_too(make_server):
    server = make_server()
    owner = new_user(server)
    private = new_room(server, owner.auth, private=True)
    public = new_room(server, owner.auth)
    writer = new_token(server, owner, private, "publish")
    both = new_token(server, owner, private, "publish", "subscribe")
    httpx.post(
        f"{server.url}/api/v1/send",
        json={"room": private, "speaker": "s", "data": {"message": "secret"}},
        headers={"Authorization": f"Bearer {writer}"},
    ).raise_for_status()

    history = {"role": "controller", "lastEventId": "0"}
    url = f"{server.url}/api/v1/events/{private}"
    refused = await open_stream(url, params={**history, "token": writer})
    assert refused.status_code == 403 and "secret" not in refused.text
    assert refused.json()["msg"] == f"No subscribe right on room {private}"
    async with subscribe(f"{url}?role=controller&lastEventId=0&token={both}") as controller:
        (event,) = await collect(controller, 1)
    assert json.loads(event.data)["data"] == {"message": "secret"}

    public_writer = new_token(server, owner, public, "publish")  # a public room: anyone reads
    async with subscribe(
        f"{server.url}/api/v1/events/{public}?role=controller&token={public_writer}"
    ) as controller:
        assert controller.hello["presence"]["controllers"] == 1


# ---------------------------------------------------------------------------------------
# 9. An API token's lifetime is bounded
# ---------------------------------------------------------------------------------------


def test_an_api_tokens_lifetime_is_at_most_ten_years(server: Server):
    owner = new_user(server)
    room = new_room(server, owner.auth)
    url = f"{server.url}/api/v1/tokens"
    ten_years = 10 * 365 * 86400
    for expires_in in [1e20, ten_years + 1]:
        body = {"name": "t", "rooms": [room], "rights": ["publish"], "expires_in": expires_in}
        reply = httpx.post(url, json=body, headers=owner.auth)
        assert reply.status_code == 400, reply.text
        assert reply.json()["msg"].startswith("expires_in: ")
    body = {"name": "t", "rooms": [room], "rights": ["publish"], "expires_in": ten_years}
    assert httpx.post(url, json=body, headers=owner.auth).status_code == 201
    assert len(httpx.get(url, headers=owner.auth).json()["tokens"]) == 1
