"""Limits that must hold against an attacker without shutting out the people they protect
(issue 14, items 10-13): login failures per username at an address, the room AI's own
capacity, rooms per user and paged room lists, the request line within MAX_HEADER_BYTES,
and only the known usage fields from the AI service."""

from __future__ import annotations

import json

import httpx
from conftest import Server, assert_envelope, raw_request
from fake_llm import INTERNALS, FakeLLM, relay_env
from httpx_sse import aconnect_sse

ADMIN = {"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin password 1"}


def from_address(address: str) -> dict[str, str]:
    """The client address a proxy reports (the server trusts one proxy: TRUST_PROXY=1)."""
    return {"X-Forwarded-For": address}


# Logins (10)


def test_failed_logins_at_one_address_do_not_lock_the_user_out_at_another(make_server):
    server: Server = make_server(
        TRUST_PROXY="1", LOGIN_DELAY_S="30", LOGIN_MAX_FAILURES="3", **ADMIN
    )
    url = f"{server.url}/api/v1/auth/login"
    guess = {"username": "admin", "password": "a guess"}
    right = {"username": "admin", "password": ADMIN["ADMIN_PASSWORD"]}
    attacker, admin = from_address("203.0.113.66"), from_address("198.51.100.7")
    guesses = [httpx.post(url, json=guess, headers=attacker) for _ in range(6)]
    assert guesses[-1].status_code == 429
    assert httpx.post(url, json=right, headers=admin).status_code == 200
    assert httpx.post(url, json=guess, headers=admin).status_code == 401  # counted apart
    # at the attacker's address, each failure makes the next attempt wait: 429, and the
    # right password waits too
    assert [reply.status_code for reply in guesses] == [401] + [429] * 5
    for refused in [*guesses[1:], httpx.post(url, json=right, headers=attacker)]:
        assert_envelope(refused, 429, "Too many failed logins")
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert refused.json()["retry_after"] == int(refused.headers["retry-after"])


# The AI relay (11)


async def test_the_room_ai_starts_while_anonymous_chats_fill_chat_max_total(make_server):
    server: Server = make_server(
        TRUST_PROXY="1",
        DEMO_DELAY_S="0.2",  # demo chats stay running for seconds
        CHAT_MAX_TOTAL="2",
        ROOM_AI_MAX_TOTAL="1",
    )
    chat_url, ai_url = f"{server.url}/api/v1/chat", f"{server.url}/api/v1/rooms/lobby/ai"
    async with httpx.AsyncClient(timeout=10) as client:
        for n in (1, 2):
            reply = await client.post(
                chat_url, json={"prompt": "hi"}, headers=from_address(f"203.0.113.{n}")
            )
            assert reply.status_code == 202, reply.text
        busy = await client.post(chat_url, json={"prompt": "hi"}, headers=from_address("::1"))
        assert_envelope(busy, 429, "The server is busy with other chats")
        root = {"Authorization": f"Bearer {server.token}"}
        started = await client.post(ai_url, json={"prompt": "hi"}, headers=root)
        assert started.status_code == 202, started.text
        full = await client.post(ai_url, json={"prompt": "hi"}, headers=root)
        assert_envelope(full, 429, "The server is busy with other AI answers in rooms")
        assert int(full.headers["retry-after"]) > 0


async def test_ipv6_clients_of_one_64_share_their_limits(make_server):
    server: Server = make_server(TRUST_PROXY="1", DEMO_DELAY_S="0.2", CHAT_MAX_PER_CLIENT="1")
    url = f"{server.url}/api/v1/chat"
    async with httpx.AsyncClient(timeout=10) as client:

        async def start(address: str) -> httpx.Response:
            return await client.post(url, json={"prompt": "hi"}, headers=from_address(address))

        assert (await start("2001:db8:1:2::1")).status_code == 202
        same_64 = await start("2001:db8:1:2:ffff:ffff:ffff:fffe")
        assert_envelope(same_64, 429, "Too many chats at once (max 1)")
        assert (await start("2001:db8:1:3::1")).status_code == 202  # the next /64
        assert (await start("203.0.113.9")).status_code == 202


# Rooms (12)


def session(server: Server, username: str, role: str) -> dict[str, str]:
    """Authorization for a new user's login session."""
    password = f"{username} password"
    body = {"username": username, "password": password}
    user = body | {"role": role}
    made = httpx.post(f"{server.url}/api/v1/users", json=user, headers=bearer(server.token))
    assert made.status_code == 201, made.text
    reply = httpx.post(f"{server.url}/api/v1/auth/login", json=body)
    assert reply.status_code == 200, reply.text
    return bearer(reply.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_user_owns_at_most_max_rooms_per_user_and_admins_any_number(make_server):
    server: Server = make_server(MAX_ROOMS_PER_USER="2")
    url = f"{server.url}/api/v1/rooms"
    user, admin = session(server, "alice", "user"), session(server, "boss", "admin")
    for room in ("a1", "a2"):
        assert httpx.post(url, json={"id": room}, headers=user).status_code == 201
    refused = httpx.post(url, json={"id": "a3"}, headers=user)
    assert_envelope(refused, 403, "Room limit reached: a user may own 2 rooms; delete one first")
    assert refused.json()["limit"] == 2
    assert httpx.get(f"{url}/a3").status_code == 404, "nothing was made"
    assert httpx.delete(f"{url}/a1", headers=user).status_code == 200
    assert httpx.post(url, json={"id": "a3"}, headers=user).status_code == 201
    for room in ("b1", "b2", "b3"):
        assert httpx.post(url, json={"id": room}, headers=admin).status_code == 201
        assert httpx.post(url, json={"id": f"r{room}"}, headers=bearer(server.token)).is_success


def test_the_room_list_comes_in_pages_by_id(make_server):
    server: Server = make_server()
    url = f"{server.url}/api/v1/rooms"
    made = [f"room{n:02d}" for n in range(12)]
    for room in reversed(made):
        reply = httpx.post(
            url, json={"id": room, "private": room == "room05"}, headers=bearer(server.token)
        )
        assert reply.status_code == 201
    everything = httpx.get(url).json()
    assert everything["next"] is None  # fits in the default page: as before paging
    public = sorted({*made, "lobby"} - {"room05"})
    assert [room["id"] for room in everything["rooms"]] == public
    pages, after = [], None
    while True:
        page = httpx.get(url, params={"limit": 5} | ({"after": after} if after else {})).json()
        assert page["success"] is True and len(page["rooms"]) <= 5
        pages.append([room["id"] for room in page["rooms"]])
        if (after := page["next"]) is None:
            break
        assert after == pages[-1][-1]
    assert pages == [public[:5], public[5:10], public[10:]]
    with_private = httpx.get(
        url, params={"limit": 5, "after": "room04"}, headers=bearer(server.token)
    )
    assert [room["id"] for room in with_private.json()["rooms"]] == made[5:10]
    assert httpx.get(url, params={"after": "ROOM10"}).json()["rooms"][0]["id"] == "room11"
    for bad, fragment in [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after": "no!"}, "after"),
    ]:
        assert_envelope(httpx.get(url, params=bad), 400, fragment)


# The request line (13a)


def reply_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_max_header_bytes_covers_the_request_line(server: Server):
    """A 60 KB request line arriving at once (Hypercorn only bounds a head still arriving)."""
    limit = 16384  # MAX_HEADER_BYTES's default
    for target in [b"/healthz?pad=" + b"x" * 60_000, b"/api/v1/rooms/" + b"a" * 60_000]:
        raw = raw_request(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply_of(raw) == (
            414,
            {"success": False, "code": 414, "msg": f"Request target too long (max {limit} bytes)"},
        )
    pad = b"x" * 9000
    head = b"GET /healthz?pad=" + pad + b" HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad + b"\r\n\r\n"
    status, body = reply_of(raw_request(server, head))
    assert status == 431 and body["msg"] == (f"Request headers too large (max {limit} bytes)")
    fits = b"GET /healthz?pad=" + pad + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert reply_of(raw_request(server, fits))[0] == 200


# The AI service's usage (13b)


async def test_only_the_known_integer_usage_counts_reach_the_client(make_server, llm: FakeLLM):
    server: Server = make_server(**relay_env(llm))

    async def usage_sent(upstream_usage: dict) -> dict | None:
        """The `usage` of a chat's `done` event, the stand-in sending `upstream_usage`."""
        llm.usage = upstream_usage
        async with (
            httpx.AsyncClient(timeout=10) as client,
            aconnect_sse(
                client, "POST", f"{server.url}/api/v1/chat/stream", json={"prompt": "hi"}
            ) as source,
        ):
            done = [event async for event in source.aiter_sse() if event.event == "done"]
        return json.loads(done[0].data)["usage"]

    sent = await usage_sent(
        {
            "prompt_tokens": 9,
            "completion_tokens": True,  # not a count
            "total_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
            "cost": 0.0021,
            "reasoning_tokens": 4,
            "route": {"shard": INTERNALS},
        }
    )
    assert sent == {"prompt_tokens": 9, "total_tokens": 20}
    assert await usage_sent({"prompt_tokens": "9", "total_tokens": -1, "extra": [1]}) is None
