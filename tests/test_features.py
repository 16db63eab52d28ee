"""Hub features of issue 17: readiness that tells the truth, the JSON history API,
idempotent publishes and the command-line client. Each against the real server, with and
without BROKER_URL where the feature touches the broker."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import ROOT, Server, collect, free_port, subscribe
from test_access_rules import new_room, new_token, new_user, publish, root

# ---------------------------------------------------------------------------------------
# Health: /healthz (alive) and /readyz (can serve)
# ---------------------------------------------------------------------------------------


def readiness(server: Server) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def test_ready_when_sqlite_takes_writes_and_redis_answers(make_server, broker_env):
    server = make_server(**broker_env)
    reply = readiness(server)
    assert reply.status_code == 200, reply.text
    expected = {"sqlite": "ok"} | ({"redis": "ok"} if broker_env else {})
    assert reply.json() == {"success": True, "code": 200, "msg": "Ready", "checks": expected}
    health = httpx.get(f"{server.url}/healthz").json()  # liveness: as it was
    assert health["success"] is True and health["broker"] == ("redis" if broker_env else "local")


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: a disk that really fills up. Needs root (CAP_SYS_ADMIN)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield volume
    subprocess.run(["umount", "-l", str(volume)], check=True)


def fill(volume: Path) -> Path:
    """Write to the volume until it is full; returns the filler."""
    filler = volume / "filler"
    with filler.open("wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    return filler


def test_not_ready_while_the_disk_is_full(small_volume: Path, tmp_path: Path):
    """SQLite on a full disk takes no write: /readyz says so (503, naming SQLite) while
    /healthz still answers; freed, it is ready again."""
    server = Server(small_volume)
    server.log_path = tmp_path / "server.log"  # not on the disk that fills up
    server.start()
    try:
        assert readiness(server).status_code == 200
        filler = fill(small_volume)
        reply = readiness(server)
        assert reply.status_code == 503, reply.text
        body = reply.json()
        assert body["success"] is False and body["code"] == 503
        assert body["checks"]["sqlite"].startswith("not writable")
        assert "full" in body["checks"]["sqlite"]
        assert body["msg"].startswith("Not ready: sqlite not writable")
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive all the same
        filler.unlink()
        assert readiness(server).status_code == 200
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server of this test's own on a free port: (its URL, its process)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url, process
    process.kill()
    process.wait()


def test_not_ready_while_redis_is_unreachable(make_server, own_redis):
    url, redis_server = own_redis
    server = make_server(BROKER_URL=url)
    assert readiness(server).json()["checks"] == {"sqlite": "ok", "redis": "ok"}
    redis_server.kill()
    redis_server.wait()
    reply = readiness(server)
    assert reply.status_code == 503, reply.text
    checks = reply.json()["checks"]
    assert checks["sqlite"] == "ok" and checks["redis"] != "ok"
    assert reply.json()["msg"].startswith("Not ready: redis ")
    assert httpx.get(f"{server.url}/healthz").status_code == 200


# ---------------------------------------------------------------------------------------
# The JSON history API
# ---------------------------------------------------------------------------------------


def history(server: Server, room: str, **params) -> httpx.Response:
    return httpx.get(f"{server.url}/api/v1/rooms/{room}/messages", params=params)


def page_ids(reply: httpx.Response) -> list[int]:
    assert reply.status_code == 200, reply.text
    return [message["id"] for message in reply.json()["messages"]]


async def test_history_pages_by_id_both_ways(make_server, broker_env):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    for i in range(7):
        publish(server, room, i).raise_for_status()

    newest = history(server, room, limit=3)
    assert page_ids(newest) == [7, 6, 5]
    seen = []
    reply = newest
    while reply.json()["next"]:  # follow the cursor to the oldest
        seen += page_ids(reply)
        reply = httpx.get(server.url + reply.json()["next"])
    seen += page_ids(reply)
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert newest.json()["next"] == f"/api/v1/rooms/{room}/messages?limit=3&before=5"

    oldest = history(server, room, order="asc", limit=4)
    assert page_ids(oldest) == [1, 2, 3, 4]
    rest = httpx.get(server.url + oldest.json()["next"])
    assert page_ids(rest) == [5, 6, 7] and rest.json()["next"] is None
    assert page_ids(history(server, room, after=2, before=6, order="asc")) == [3, 4, 5]
    assert page_ids(history(server, room, after=2, before=6)) == [5, 4, 3]
    assert page_ids(history(server, room, after=7)) == []

    # each message as the stream sends it
    async with subscribe(f"{server.url}/api/v1/events/{room}", **{"Last-Event-ID": "6"}) as sub:
        (event,) = await collect(sub, 1)
    (message,) = history(server, room, after=6).json()["messages"]
    assert message == json.loads(event.data)
    assert message["data"] == {"i": 6} and message["room"] == room


async def test_history_reads_sqlite_where_redis_lost_the_stream(make_server, broker_url):
    """Redis restarted without its data: the history comes from SQLite, both ways, and
    messages published after come from the new stream, one sequence with the old."""
    server = make_server(BROKER_URL=broker_url)
    room = new_room(server, root(server))
    for i in range(4):
        publish(server, room, i).raise_for_status()
    redis.Redis.from_url(broker_url).flushdb()
    publish(server, room, 4).raise_for_status()  # id 5, the new stream's first
    assert page_ids(history(server, room, limit=3)) == [5, 4, 3]
    assert page_ids(history(server, room, before=5, limit=10)) == [4, 3, 2, 1]
    assert page_ids(history(server, room, order="asc", limit=3)) == [1, 2, 3]
    assert page_ids(history(server, room, order="asc", after=3)) == [4, 5]


def test_history_follows_the_streams_access_rules(make_server):
    server = make_server()
    owner, stranger = new_user(server), new_user(server)
    room = new_room(server, owner.auth, private=True)
    publish(server, room, 0).raise_for_status()
    reader = new_token(server, owner, room, "subscribe")
    writer = new_token(server, owner, room, "publish")
    assert history(server, room).status_code == 401
    assert history(server, room, token=stranger.access).status_code == 403
    assert history(server, room, token=writer).status_code == 403  # publishing is no reading
    assert page_ids(history(server, room, token=reader)) == [1]
    url = f"{server.url}/api/v1/rooms/{room}/messages"
    assert page_ids(httpx.get(url, headers=owner.auth)) == [1]

    public = new_room(server, owner.auth)
    assert history(server, public).json()["messages"] == []  # anyone, as its stream
    assert history(server, "nosuchroom").status_code == 404
    assert history(server, "bad-room!").status_code == 400
    for bad in [{"limit": 0}, {"limit": 1001}, {"order": "sideways"}, {"after": "x"}]:
        reply = history(server, public, **bad)
        assert reply.status_code == 400, bad
        assert reply.json()["success"] is False and next(iter(bad)) in reply.json()["msg"]


# ---------------------------------------------------------------------------------------
# Idempotent publishes
# ---------------------------------------------------------------------------------------


def keyed_publish(
    server: Server, room: str, key: str, i: int = 0, headers: dict | None = None
) -> httpx.Response:
    body = {"room": room, "speaker": "s", "data": {"i": i}}
    headers = {**(headers or root(server)), "Idempotency-Key": key}
    return httpx.post(f"{server.url}/api/v1/send", json=body, headers=headers)


def test_a_retried_publish_is_stored_once_also_after_a_restart(make_server, broker_env):
    server = make_server(**broker_env)
    room = new_room(server, root(server))
    first = keyed_publish(server, room, "order-1")
    assert first.status_code == 202, first.text
    again = keyed_publish(server, room, "order-1")
    assert again.status_code == 202 and again.json() == first.json()  # same id, same time
    in_body = {"room": room, "speaker": "s", "data": {"i": 0}, "idempotency_key": "order-1"}
    reply = httpx.post(f"{server.url}/api/v1/send", json=in_body, headers=root(server))
    assert reply.json() == first.json()
    assert page_ids(history(server, room)) == [1]

    # the same key with other messages: refused (422), nothing stored
    other = keyed_publish(server, room, "order-1", i=1)
    assert other.status_code == 422, other.text
    assert other.json()["success"] is False and "Idempotency-Key" in other.json()["msg"]
    assert keyed_publish(server, room, "order-2", i=1).json()["id"] == 2
    batch = [{"room": room, "speaker": "s", "data": {"i": i}} for i in (2, 3)]
    headers = {**root(server), "Idempotency-Key": "batch-1"}
    sent = httpx.post(f"{server.url}/api/v1/send", json=batch, headers=headers)
    assert sent.json()["ids"] == [3, 4]
    assert (
        httpx.post(f"{server.url}/api/v1/send", json=batch, headers=headers).json() == sent.json()
    )

    server.stop()  # the keys are in SQLite: a retry after a restart is still a retry
    if broker_env:
        redis.Redis.from_url(broker_env["BROKER_URL"]).flushdb()
    server.start()
    assert keyed_publish(server, room, "order-1").json() == first.json()
    assert (
        httpx.post(f"{server.url}/api/v1/send", json=batch, headers=headers).json() == sent.json()
    )
    assert page_ids(history(server, room)) == [4, 3, 2, 1]
    # the GET form takes the header too
    url = f"{server.url}/api/v1/send/s"
    params = {"token": server.token, "msg": "hi", "room": room}
    by_get = httpx.get(url, params=params, headers={"Idempotency-Key": "get-1"})
    assert httpx.get(url, params=params, headers={"Idempotency-Key": "get-1"}).json() == (
        by_get.json()
    )
    assert page_ids(history(server, room)) == [5, 4, 3, 2, 1]


async def test_concurrent_retries_store_once(make_server, broker_env, tmp_path):
    """Retries at once, on one process or (with Redis) on two sharing the database: one
    stores, every one answers with its message."""
    server = make_server(data_dir=tmp_path / "hub", **broker_env)
    servers = (
        [server, make_server(data_dir=tmp_path / "hub", **broker_env)] if broker_env else [server]
    )
    room = new_room(server, root(server))
    body = {"room": room, "speaker": "s", "data": {"i": 0}}
    headers = {**root(server), "Idempotency-Key": "at-once"}
    async with httpx.AsyncClient(timeout=30) as client:
        replies = await asyncio.gather(
            *(
                client.post(
                    f"{servers[i % len(servers)].url}/api/v1/send", json=body, headers=headers
                )
                for i in range(40)
            )
        )
    assert {reply.status_code for reply in replies} == {202}
    assert {reply.json()["id"] for reply in replies} == {1}
    assert page_ids(history(server, room)) == [1]


def test_idempotency_keys_are_each_publishers_and_last_the_window(make_server):
    server = make_server(IDEMPOTENCY_WINDOW_S="1")
    owner = new_user(server)
    room = new_room(server, owner.auth)
    assert keyed_publish(server, room, "k").json()["id"] == 1
    assert keyed_publish(server, room, "k", headers=owner.auth).json()["id"] == 2  # not root's
    time.sleep(1.2)  # past the window: the key is free again
    assert keyed_publish(server, room, "k").json()["id"] == 3
    for bad in [b"", "é".encode(), b"x" * 256]:
        reply = httpx.post(
            f"{server.url}/api/v1/send",
            json={"room": room, "speaker": "s", "data": {}},
            headers={**root(server), "Idempotency-Key": bad},
        )
        assert reply.status_code == 400 and "Idempotency-Key" in reply.json()["msg"], bad
    batch = [{"room": room, "speaker": "s", "data": {}, "idempotency_key": "b"}]
    reply = httpx.post(f"{server.url}/api/v1/send", json=batch, headers=root(server))
    assert reply.status_code == 400 and "header" in reply.json()["msg"]
    assert page_ids(history(server, room)) == [3, 2, 1]


# ---------------------------------------------------------------------------------------
# The command-line client: python app.py send / tail
# ---------------------------------------------------------------------------------------


def client_env(server: Server, token: str | None) -> dict[str, str]:
    env = {**os.environ, "SM_URL": server.url}
    env.pop("SM_TOKEN", None)
    return env | ({"SM_TOKEN": token} if token else {})


def send(server: Server, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "app.py", "send", *args],
        cwd=ROOT,
        env=client_env(server, token),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_send_publishes_and_says_why_not(make_server):
    server = make_server()
    room = new_room(server, root(server))
    sent = send(server, room, "hello from a script", "--speaker", "bot", token=server.token)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == "1\n"
    (message,) = history(server, room).json()["messages"]
    assert message["speaker"] == "bot" and message["data"] == {"message": "hello from a script"}
    assert send(server, room, "x", token=server.token).returncode == 0  # speaker: cli
    assert history(server, room).json()["messages"][0]["speaker"] == "cli"

    refused = send(server, room, "no token")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("send: 401 ")
    unknown = send(server, "nosuchroom", "x", token=server.token)
    assert unknown.returncode == 1 and unknown.stderr == "send: 404 Unknown room: nosuchroom\n"


async def test_tail_prints_each_message_once_across_a_restart(make_server, broker_env):
    server = make_server(RETRY_MS="200", **broker_env)
    room = new_room(server, root(server))
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "app.py",
        "tail",
        room,
        cwd=ROOT,
        env=client_env(server, None),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            assert "following" in (await tail.stderr.readline()).decode()
            publish(server, room, 0).raise_for_status()
            first = json.loads(await tail.stdout.readline())
            server.stop()
            server.start()  # same port: tail reconnects, resuming after the id it printed
            publish(server, room, 1).raise_for_status()
            second = json.loads(await tail.stdout.readline())
    finally:
        tail.kill()
        await tail.wait()
    assert (first["id"], first["data"], first["room"]) == (1, {"i": 0}, room)
    assert (second["id"], second["data"]) == (2, {"i": 1})
