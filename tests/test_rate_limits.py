"""Publish rate limits per token and per user (issue 17): token buckets, refused with 429
and Retry-After, counted across processes with BROKER_URL."""

from __future__ import annotations

import time

import httpx
from conftest import Server, assert_envelope


def send(server: Server, token: str, count: int = 1, room: str = "lobby") -> httpx.Response:
    """Publish `count` messages to `room`: one message, or a batch."""
    messages = [{"room": room, "speaker": "s", "data": {"message": f"m{i}"}} for i in range(count)]
    return httpx.post(
        f"{server.url}/api/v1/send",
        json=messages[0] if count == 1 else messages,
        headers={"Authorization": f"Bearer {token}"},
    )


def stored(server: Server, room: str = "lobby") -> int:
    """How many messages the room holds."""
    reply = httpx.get(f"{server.url}/api/v1/rooms/{room}/messages?limit=1000")
    assert reply.status_code == 200, reply.text
    return len(reply.json()["messages"])


def assert_limited(reply: httpx.Response, fragment: str) -> int:
    """A 429 naming the limit, with Retry-After in the envelope and as the header."""
    assert_envelope(reply, 429, fragment)
    retry = reply.json()["retry_after"]
    assert isinstance(retry, int) and retry >= 1
    assert reply.headers["retry-after"] == str(retry)
    return retry


def new_user(server: Server, name: str) -> tuple[str, list[str]]:
    """A new user with a room named after them: their access JWT and two API tokens."""
    account = {"username": name, "password": f"{name} password"}
    root = {"Authorization": f"Bearer {server.token}"}
    reply = httpx.post(f"{server.url}/api/v1/users", json=account, headers=root)
    assert reply.status_code == 201, reply.text
    login = httpx.post(f"{server.url}/api/v1/auth/login", json=account)
    assert login.status_code == 200, login.text
    access = login.json()["access_token"]
    user = {"Authorization": f"Bearer {access}"}
    reply = httpx.post(f"{server.url}/api/v1/rooms", json={"id": name}, headers=user)
    assert reply.status_code == 201, reply.text
    tokens = []
    for token_name in ("one", "two"):
        token = {"name": token_name, "rooms": "*", "rights": ["publish"]}
        reply = httpx.post(f"{server.url}/api/v1/tokens", json=token, headers=user)
        assert reply.status_code == 201, reply.text
        tokens.append(reply.json()["token"])
    return access, tokens


def test_each_token_has_a_bucket_a_batch_counts_its_messages(make_server, broker_env):
    server = make_server(PUBLISH_RATE_LIMIT="3", **broker_env)
    assert send(server, server.token).status_code == 202
    assert send(server, server.token, 2).status_code == 202  # the bucket is empty now
    refused = send(server, server.token)
    assert_limited(refused, "Publish rate limit: this token may publish 3 messages per 60 s")
    get = httpx.get(f"{server.url}/api/v1/send/bob", params={"msg": "hi", "token": server.token})
    assert_limited(get, "this token may publish 3 messages")
    assert stored(server) == 3  # refused publishes store nothing
    access, (token, _) = new_user(server, "carol")  # other credentials: buckets of their own
    assert send(server, access, 3, "carol").status_code == 202
    assert send(server, token, 3, "carol").status_code == 202
    # more at once than a bucket holds could never pass: 413, not a 429 to wait out
    assert_envelope(send(server, token, 4, "carol"), 413, "this token may publish 3 per 60 s")
    assert stored(server, "carol") == 6


def test_a_users_credentials_share_the_user_bucket(make_server, broker_env):
    server = make_server(PUBLISH_RATE_LIMIT="3", PUBLISH_RATE_LIMIT_PER_USER="4", **broker_env)
    access, (one, two) = new_user(server, "dave")
    assert send(server, one, 3, "dave").status_code == 202
    assert_limited(send(server, one, 1, "dave"), "this token may publish 3 messages per 60 s")
    assert send(server, two, 1, "dave").status_code == 202  # the user's 4th
    assert_limited(send(server, two, 1, "dave"), "this user may publish 4 messages per 60 s")
    assert_limited(send(server, access, 1, "dave"), "this user may publish 4 messages")
    assert send(server, server.token, 3, "dave").status_code == 202  # root is no user
    assert stored(server, "dave") == 7


def test_a_bucket_refills_over_the_window(make_server):
    server = make_server(PUBLISH_RATE_LIMIT="2", PUBLISH_RATE_WINDOW_S="2")
    assert send(server, server.token, 2).status_code == 202
    retry = assert_limited(send(server, server.token), "2 messages per 2 s")
    assert retry == 1  # a message comes back every second
    time.sleep(retry)
    assert send(server, server.token).status_code == 202
    assert_limited(send(server, server.token), "2 messages per 2 s")


def test_processes_of_one_hub_share_the_buckets(make_server, tmp_path, broker_url):
    a, b = (
        make_server(data_dir=tmp_path / "shared", BROKER_URL=broker_url, PUBLISH_RATE_LIMIT="3")
        for _ in range(2)
    )
    assert send(a, a.token, 2).status_code == 202
    assert send(b, b.token).status_code == 202
    assert_limited(send(b, b.token), "this token may publish 3 messages")
    assert_limited(send(a, a.token), "this token may publish 3 messages")
    assert stored(a) == 3


def test_a_limit_too_high_to_reach_takes_every_publish(make_server, broker_env):
    # a message's share of the window, in ms, is below what a timestamp in ms can hold
    server = make_server(PUBLISH_RATE_LIMIT="1000000000", **broker_env)
    assert send(server, server.token).status_code == 202
    assert send(server, server.token, 50).status_code == 202
