"""Hub core: streams, publish, durability, resume, fan-out, bad input (issue 2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sqlite3
import subprocess
import time

import httpx
import pytest
from conftest import TOKEN, Server, collect, sse_client, subscribe

# The Bun project's README, as written there (TMP_SSE_API / TMP_SSE_TOKEN from the env).
BUN_README_COMMANDS = [
    'curl "${TMP_SSE_API}/api/v1/send/otto?token=${TMP_SSE_TOKEN}&msg=冲！冲刺！"',
    """curl "$TMP_SSE_API/api/v1/send" \\
  -H "Authorization: Bearer ${TMP_SSE_TOKEN}" \\
  -H "Content-Type: application/json" \\
  -d '{"speaker":"♿饲猫棍哥♿","data":{"message":"那我缺的营养这一块谁给我补啊？","verified_by":"Request Header"},"meta":"custom"}'""",  # noqa: E501
    """curl "$TMP_SSE_API/api/v1/send" \\
  -H "Content-Type: application/json" \\
  -d '{"token":"your_super_secret_token_here","speaker":"长期素食","data":{"message":"还追！还追！移速七百多还追！！！","verified_by":"Request Body"},"meta":"custom"}'""",  # noqa: E501
]


def sse_frames(text: str) -> list[dict[str, str]]:
    """Minimal parse of curl's output: the frames that carry an id."""
    frames = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "id" in fields:
            frames.append(fields)
    return frames


def test_bun_readme_curl_commands_arrive_on_a_curl_stream(make_server):
    server: Server = make_server()
    stream = subprocess.Popen(
        ["curl", "-sN", "-H", "Accept:text/event-stream", f"{server.url}/api/v1/events"],
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)
        env = {"TMP_SSE_API": server.url, "TMP_SSE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
        for command in BUN_README_COMMANDS:
            reply = subprocess.run(
                ["bash", "-c", command], env=env, capture_output=True, timeout=10
            )
            body = json.loads(reply.stdout)
            assert body["success"] is True and body["code"] == 202, body
            assert body["msg"] == "Message Event Sent" and body["target"] == {"room": "lobby"}
            assert body["id"] == body["event"]["id"]
        time.sleep(0.5)
    finally:
        stream.terminate()
    output = stream.communicate(timeout=5)[0].decode()
    assert output.startswith("retry: ")
    frames = sse_frames(output)
    payloads = [json.loads(frame["data"]) for frame in frames]
    assert [p["speaker"] for p in payloads] == ["otto", "♿饲猫棍哥♿", "长期素食"]
    assert payloads[0]["data"]["message"] == "冲！冲刺！"
    assert payloads[1]["data"]["verified_by"] == "Request Header"
    assert payloads[2]["data"]["message"] == "还追！还追！移速七百多还追！！！"
    assert [int(frame["id"]) for frame in frames] == [p["id"] for p in payloads] == [1, 2, 3]
    for payload in payloads:
        assert set(payload) == {"id", "room", "speaker", "data", "time", "meta", "status"}
        assert payload["room"] == "lobby"


async def test_stream_headers_and_hello(server: Server):
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "GET", f"{server.url}/api/v1/events", headers={"Origin": "https://obs.example"}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["access-control-allow-origin"] == "*"
        first = await anext(response.aiter_bytes())
    assert first.startswith(b"retry: 3000\nevent: meta\ndata: ")
    hello = json.loads(first.split(b"data: ", 1)[1].split(b"\n", 1)[0])
    assert hello["api"]["version"] == "1" and hello["room"] == "lobby"
    assert hello["gap"] is False


async def test_speaker_is_percent_decoded_and_case_kept(server: Server):
    async with subscribe(f"{server.url}/api/v1/events") as events:
        reply = httpx.get(
            f"{server.url}/api/v1/send/Mr%20Otto%2F2",
            params={"token": server.token, "msg": "hello"},
        )
        assert reply.status_code == 202, reply.text
        (event,) = await collect(events, 1)
    assert json.loads(event.data)["speaker"] == "Mr Otto/2"


def test_raw_utf8_speaker_in_the_path(server: Server):
    """curl and raw clients may send unencoded UTF-8 in the path too."""
    target = f"/api/v1/send/小明?token={server.token}&msg=你好".encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 202"), response
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["event"]["speaker"] == "小明" and body["event"]["data"]["message"] == "你好"


async def test_rooms_are_case_insensitive(server: Server):
    server.create_room("CaseRoom")
    async with subscribe(f"{server.url}/api/v1/events/CASEROOM") as events:
        assert events.hello["room"] == "caseroom"
        server.publish(room="caseRoom", data={"message": "one room"})
        (event,) = await collect(events, 1)
    assert json.loads(event.data)["room"] == "caseroom"


async def publish_from_four(server: Server, room: str, count: int) -> None:
    """`count` messages to the room from four concurrent publishers, each answered 202."""
    async with httpx.AsyncClient() as client:

        async def publisher(n: int) -> None:
            for i in range(n, count, 4):
                reply = await client.post(
                    f"{server.url}/api/v1/send",
                    json={"room": room, "speaker": "bot", "data": {"i": i}},
                    headers={"Authorization": f"Bearer {server.token}"},
                )
                assert reply.status_code == 202

        await asyncio.gather(*(publisher(n) for n in range(4)))


async def test_hundred_subscribers_get_every_message_once_in_order(server: Server):
    server.create_room("fanout")
    url = f"{server.url}/api/v1/events/fanout"
    count = 50

    async def subscriber(ready: asyncio.Event, started: list) -> list[int]:
        async with subscribe(url, client) as events:
            started.append(1)
            if len(started) == 100:
                ready.set()
            received = await collect(events, count)
            return [int(event.id) for event in received]

    ready, started = asyncio.Event(), []
    async with sse_client() as client:  # one for all: a client each took seconds under load
        tasks = [asyncio.create_task(subscriber(ready, started)) for _ in range(100)]
        await asyncio.wait_for(ready.wait(), 60)
        await publish_from_four(server, "fanout", count)
        results = await asyncio.gather(*tasks)
    for ids in results:
        assert ids == list(range(1, count + 1))


async def read_more(reader: asyncio.StreamReader) -> bytes:
    """What comes next; an error at the end of the stream (a read there returns at once, and
    a loop of them would never let a timeout fire)."""
    chunk = await reader.read(65536)
    assert chunk, "the server closed the stream"
    return chunk


async def test_a_wake_passes_over_subscribers_that_leave_during_it(server: Server):
    """A room's wake-up writes to its subscribers a slice (8) per turn of the event loop, so
    subscribers leave while one is under way (600 subscribers, half leaving after 1 to 10
    messages: 3 to 30 times a run): every other subscriber still gets every message once, in
    order, and those that left got theirs in order until they left."""
    server.create_room("leavers")
    request = b"GET /api/v1/events/leavers HTTP/1.1\r\nHost: x\r\n\r\n"
    count, connected, all_connected = 40, [], asyncio.Event()

    async def stream(leave_after: int) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        received = b""
        try:
            async with asyncio.timeout(20):
                while b"event: meta" not in received:
                    received += await read_more(reader)
                connected.append(1)
                if len(connected) == len(plan):
                    all_connected.set()
                # Chunk framing comes only between writes of whole frames: it never cuts
                # an id line.
                while len(ids := re.findall(rb"\nid: (\d+)\n", received)) < leave_after:
                    received += await read_more(reader)
        finally:
            writer.close()
        return [int(i) for i in ids]

    # Half stay for every message; the others leave after 1 to 10, across several wakes.
    plan = [count if i % 2 else i % 20 // 2 + 1 for i in range(600)]
    streams = [asyncio.create_task(stream(leave_after)) for leave_after in plan]
    await asyncio.wait_for(all_connected.wait(), 20)
    await publish_from_four(server, "leavers", count)
    for leave_after, ids in zip(plan, await asyncio.gather(*streams), strict=True):
        assert ids[:leave_after] == list(range(1, leave_after + 1))
        assert ids == sorted(set(ids))


async def test_concurrent_publishes_share_commits(server: Server):
    server.create_room("group")
    before = server.health()["commits"]
    async with httpx.AsyncClient() as client:
        replies = await asyncio.gather(
            *(
                client.post(
                    f"{server.url}/api/v1/send",
                    json={"room": "group", "speaker": "s", "data": {"i": i}},
                    headers={"Authorization": f"Bearer {server.token}"},
                )
                for i in range(200)
            )
        )
    assert all(reply.status_code == 202 for reply in replies)
    assert sorted(reply.json()["id"] for reply in replies) == list(range(1, 201))
    assert server.health()["commits"] - before < 200


async def test_coalescing_holds_only_the_frames_of_a_busy_room(make_server):
    """A long window makes the rule visible: the first frame after a quiet window goes out
    at once; one that follows a write within the window waits for the window's end."""
    window_s = 1.5
    server: Server = make_server(COALESCE_MS=str(window_s * 1000))
    async with subscribe(f"{server.url}/api/v1/events/lobby") as events:
        await collect(events, 1, "presence")  # the join's presence event: a write
        await asyncio.sleep(window_s + 0.2)  # then quiet for a whole window
        sent = time.monotonic()
        server.publish(data={"n": 1})
        await collect(events, 1)
        first = time.monotonic()
        server.publish(data={"n": 2})
        await collect(events, 1)
        second = time.monotonic()
    assert first - sent < window_s / 2  # not held
    assert second - first > window_s / 2  # held: it followed a write within the window


def test_acknowledged_message_is_in_sqlite(make_server):
    server: Server = make_server()
    reply = server.publish(data={"message": "durable"})
    with sqlite3.connect(server.data_dir / "streaming-message.db") as db:
        (payload,) = db.execute(
            "SELECT payload FROM messages WHERE room = 'lobby' AND id = ?", (reply["id"],)
        ).fetchone()
    assert json.loads(payload) == reply["event"]


async def test_resume_after_restart_gets_exactly_the_missed_messages(make_server):
    server: Server = make_server()
    async with subscribe(f"{server.url}/api/v1/events") as events:
        for i in range(3):
            server.publish(data={"i": i})
        seen = await collect(events, 3)
    last_seen = seen[-1].id
    server.publish(data={"i": 3})  # missed while disconnected
    assert server.stop() == 0
    server.start()
    server.publish(data={"i": 4})  # missed while the server restarted
    async with subscribe(f"{server.url}/api/v1/events", **{"Last-Event-ID": last_seen}) as events:
        assert events.hello["gap"] is False
        replayed = await collect(events, 2)
        server.publish(data={"i": 5})
        (live,) = await collect(events, 1)
    assert [json.loads(e.data)["data"]["i"] for e in [*replayed, live]] == [3, 4, 5]
    assert [int(e.id) for e in [*replayed, live]] == [4, 5, 6]


async def test_resume_by_query_parameter_and_gap_flag(make_server):
    server: Server = make_server(HISTORY_SIZE="5")
    for i in range(10):
        server.publish(data={"i": i})
    async with subscribe(f"{server.url}/api/v1/events?lastEventId=7") as events:
        assert events.hello["gap"] is False
        replayed = await collect(events, 3)
    assert [int(e.id) for e in replayed] == [8, 9, 10]
    async with subscribe(f"{server.url}/api/v1/events", **{"Last-Event-ID": "2"}) as events:
        assert events.hello["gap"] is True
        replayed = await collect(events, 5)
    assert [int(e.id) for e in replayed] == [6, 7, 8, 9, 10]


async def test_replay_and_live_messages_do_not_overlap(make_server):
    """Messages published while a replay is read arrive once, in order."""
    server: Server = make_server()
    for i in range(20):
        server.publish(data={"i": i})

    async def publish_more() -> None:
        async with httpx.AsyncClient() as client:
            for i in range(20, 40):
                await client.post(
                    f"{server.url}/api/v1/send",
                    json={"speaker": "s", "data": {"i": i}},
                    headers={"Authorization": f"Bearer {server.token}"},
                )

    more = asyncio.create_task(publish_more())
    async with subscribe(f"{server.url}/api/v1/events", **{"Last-Event-ID": "0"}) as events:
        received = await collect(events, 40)
    await more
    assert [int(e.id) for e in received] == list(range(1, 41))


@pytest.mark.parametrize(
    "text",
    [
        "line one\nline two",
        "carriage\rreturn\r\nand crlf",
        "separator\u2028paragraph\u2029end",
        "emoji 🎉 and 𝕏 non-BMP",
        "data: fake\n\nid: 99\n\nevent: meta",
    ],
)
async def test_framing_holds_for_awkward_payloads(server: Server, text: str):
    async with subscribe(f"{server.url}/api/v1/events") as events:
        reply = server.publish(speaker="frame\ntest", data={"message": text, "nested": [text]})
        (event,) = await collect(events, 1)
    payload = json.loads(event.data)
    assert payload == reply["event"]
    assert payload["data"] == {"message": text, "nested": [text]}
    assert payload["speaker"] == "frame\ntest"
    assert event.id == str(reply["id"])


async def test_disconnected_subscriber_is_removed_at_once(server: Server):
    server.create_room("leave")
    async with subscribe(f"{server.url}/api/v1/events/leave?role=controller&token={server.token}"):
        room = httpx.get(f"{server.url}/api/v1/rooms/leave").json()["room"]
        assert room["subscribers"] == {"players": 0, "controllers": 1}
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        room = httpx.get(f"{server.url}/api/v1/rooms/leave").json()["room"]
        if room["subscribers"]["controllers"] == 0:
            break
        await asyncio.sleep(0.02)
    assert room["subscribers"] == {"players": 0, "controllers": 0}


def test_slow_consumer_is_disconnected_and_others_keep_receiving(make_server, tmp_path):
    server: Server = make_server(SUBSCRIBER_QUEUE="16")
    output = (tmp_path / "curl.out").open("wb")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
    reader = subprocess.Popen(["curl", "-sN", f"{server.url}/api/v1/events"], stdout=output)
    time.sleep(0.3)
    big = "x" * 30000  # 400 of these outgrow the kernel's socket buffers
    with httpx.Client() as client:
        for i in range(400):
            reply = client.post(
                f"{server.url}/api/v1/send",
                json={"speaker": "s", "data": {"i": i, "pad": big}},
                headers={"Authorization": f"Bearer {server.token}"},
            )
            assert reply.status_code == 202
    deadline = time.monotonic() + 5
    while server.health()["subscribers"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["subscribers"] == 1  # the stalled one is gone, curl stays
    assert server.health()["slow_consumer_disconnects"] >= 1
    reader.terminate()
    reader.wait(timeout=5)
    frames = sse_frames((tmp_path / "curl.out").read_text())
    assert [int(frame["id"]) for frame in frames] == list(range(1, 401))
    stalled.close()


@pytest.mark.parametrize("workers", [0, 1], ids=["python app.py", "hypercorn app:app"])
async def test_sigterm_ends_streams_with_a_final_event_and_keeps_messages(make_server, workers):
    server: Server = make_server(workers=workers)
    async with subscribe(f"{server.url}/api/v1/events") as events:
        server.publish(data={"message": "before shutdown"})
        await collect(events, 1)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        final = await asyncio.wait_for(anext(events), 5)
        assert final.event == "shutdown"
        assert json.loads(final.data)["reconnect"] is True
    assert server.stop() == 0
    assert time.monotonic() - started < 5
    server.start()
    async with subscribe(f"{server.url}/api/v1/events", **{"Last-Event-ID": "0"}) as events:
        (replayed,) = await collect(events, 1)
    assert json.loads(replayed.data)["data"]["message"] == "before shutdown"
    assert "Traceback" not in server.log()


async def test_sigterm_ends_the_streams_of_every_worker(make_server, broker_url):
    """Hypercorn SIGTERMs the workers still running once its first has exited: each must
    still end its streams with their final event."""
    server: Server = make_server(workers=2, BROKER_URL=broker_url)
    server.serving(2)
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        while not all(h["subscribers"] for h in server.worker_health().values()):
            assert len(opened) < 40, "the connections all went to one worker"
            opened.append(await stack.enter_async_context(subscribe(f"{server.url}/api/v1/events")))
        server.process.send_signal(signal.SIGTERM)
        for events in opened:  # (past the presence events of the others joining)
            assert await collect(events, 1, "shutdown")
    # one SIGTERM: a second, to a master already exiting, could find its handler gone
    assert server.process.wait(20) == 0
    assert "Traceback" not in server.log()


def test_preflight_is_answered(server: Server):
    reply = httpx.options(
        f"{server.url}/api/v1/send",
        headers={
            "Origin": "https://controller.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert reply.status_code == 204
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert "authorization" in reply.headers["access-control-allow-headers"]


def test_cors_origin_list_echoes_allowed_origin_only(make_server):
    server: Server = make_server(CORS_ORIGINS="https://a.example,https://b.example")
    allowed = httpx.get(f"{server.url}/healthz", headers={"Origin": "https://b.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://b.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    denied = httpx.get(f"{server.url}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers


def test_bearer_scheme_is_case_insensitive(server: Server):
    reply = httpx.post(
        f"{server.url}/api/v1/send",
        json={"speaker": "s", "data": {}},
        headers={"Authorization": f"bEaReR {server.token}"},
    )
    assert reply.status_code == 202


def test_batch_publish_is_stored_and_delivered_in_order(server: Server):
    server.create_room("batch")
    batch = [{"room": "batch", "speaker": "s", "data": {"i": i}} for i in range(5)]
    reply = httpx.post(
        f"{server.url}/api/v1/send",
        json=batch,
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert reply.status_code == 202
    assert reply.json()["ids"] == [1, 2, 3, 4, 5]
    assert [e["data"]["i"] for e in reply.json()["events"]] == list(range(5))


BAD_PUBLISHES = [
    # (description, request kwargs, status, message fragment)
    ("invalid JSON", {"content": b"{not json"}, 400, "Invalid JSON"),
    ("non-object data", {"json": {"speaker": "s", "data": "text"}}, 400, "data must be"),
    ("missing speaker", {"json": {"data": {}}}, 400, "speaker"),
    ("speaker too long", {"json": {"speaker": "s" * 65, "data": {}}}, 400, "speaker"),
    ("invalid room", {"json": {"room": "no-such!", "speaker": "s", "data": {}}}, 400, "room"),
    ("unknown room", {"json": {"room": "nosuchroom", "speaker": "s", "data": {}}}, 404, "Unknown"),
    ("array item not object", {"json": [{"speaker": "s", "data": {}}, 3]}, 400, "object"),
    ("empty batch", {"json": []}, 400, "Empty batch"),
    (
        "oversize message",
        {"json": {"speaker": "s", "data": {"pad": "x" * 70000}}},
        413,
        "too large",
    ),
    (
        "oversize body",
        {"json": [{"speaker": "s", "data": {"pad": "x" * 60000}}] * 20},
        413,
        "too large",
    ),
    (
        "batch with one bad item",
        {"json": [{"speaker": "s", "data": {"i": 1}}, {"speaker": "s", "data": 5}]},
        400,
        "data must be",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [case[1:] for case in BAD_PUBLISHES],
    ids=[case[0] for case in BAD_PUBLISHES],
)
async def test_bad_publish_is_rejected_and_changes_nothing(server, kwargs, status, fragment):
    await assert_rejected(
        server,
        "POST",
        "/api/v1/send",
        status,
        fragment,
        headers={"Authorization": f"Bearer {server.token}"},
        **kwargs,
    )


@pytest.mark.parametrize(
    ("method", "path", "headers", "kwargs", "status", "fragment"),
    [
        ("POST", "/api/v1/send", {}, {"json": {"speaker": "s", "data": {}}}, 401, "Missing"),
        (
            "POST",
            "/api/v1/send",
            {"Authorization": "Bearer wrong"},
            {"json": {"speaker": "s", "data": {}}},
            401,
            "Invalid token",
        ),
        (
            "POST",
            "/api/v1/send",
            {},
            {"json": {"token": "wrong", "speaker": "s", "data": {}}},
            401,
            "Invalid token",
        ),
        ("GET", "/api/v1/send/otto?token=wrong&msg=hi", {}, {}, 401, "Invalid token"),
        ("GET", "/api/v1/send/otto?msg=hi", {}, {}, 401, "Missing token"),
        ("GET", f"/api/v1/send/otto?token={TOKEN}", {}, {}, 400, "msg"),
        ("DELETE", "/api/v1/send", {}, {}, 405, "Method not allowed"),
        ("PUT", "/api/v1/send/otto", {}, {}, 405, "Method not allowed"),
        ("POST", "/api/v1/events", {}, {}, 405, "Method not allowed"),
    ],
)
async def test_bad_requests_get_the_envelope(
    server, method, path, headers, kwargs, status, fragment
):
    await assert_rejected(server, method, path, status, fragment, headers=headers, **kwargs)


async def assert_rejected(server, method, path, status, fragment, **kwargs) -> None:
    """The request gets `status` in the JSON envelope; nothing is stored or delivered."""
    before = server.health()["published"]
    async with subscribe(f"{server.url}/api/v1/events") as events:
        reply = httpx.request(method, f"{server.url}{path}", **kwargs)
        assert reply.status_code == status, reply.text
        body = reply.json()
        assert body["success"] is False and body["code"] == status
        assert fragment in body["msg"], body
        server.publish(data={"message": "sentinel"})  # the next thing delivered
        (event,) = await collect(events, 1)
    assert json.loads(event.data)["data"] == {"message": "sentinel"}
    assert server.health()["published"] == before + 1


async def test_invalid_room_stream_is_the_quote_feed_not_an_error(server: Server):
    """(tests/test_fallback.py tests the feed; here the quote API is down.)"""
    async with subscribe(f"{server.url}/api/v1/events/bad-room!") as events:
        assert events.hello["fallback"] is True
        (event,) = await collect(events, 1)
    assert json.loads(event.data)["meta"] == "fallback"
    async with subscribe(f"{server.url}/api/v1/events/") as events:  # trailing slash
        assert events.hello["room"] == "lobby" and events.hello["fallback"] is False


def test_rooms_api_requires_the_token_and_valid_ids(server: Server):
    url = f"{server.url}/api/v1/rooms"
    assert httpx.post(url, json={"id": "newroom"}).status_code == 401
    auth = {"Authorization": f"Bearer {server.token}"}
    assert httpx.post(url, json={"id": "bad id"}, headers=auth).status_code == 400
    assert httpx.post(url, json={"id": "NewRoom"}, headers=auth).status_code == 201
    conflict = httpx.post(url, json={"id": "newroom"}, headers=auth)
    assert conflict.status_code == 409 and conflict.json()["success"] is False
    rooms = {room["id"] for room in httpx.get(url).json()["rooms"]}
    assert {"lobby", "newroom"} <= rooms


def test_pages_and_client_library_are_served(server: Server):
    for path, marker in [("/", b"player"), ("/SomeRoom", b"player"), ("/admin", b"admin")]:
        reply = httpx.get(f"{server.url}{path}")
        assert reply.status_code == 200 and marker in reply.content
        assert reply.headers["content-type"].startswith("text/html")
    script = httpx.get(f"{server.url}/static/js/sse-client.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    # any id is a player page, as any id is a stream (the quote feed: issue 16); a file is not
    assert b"player" in httpx.get(f"{server.url}/not-a-room!").content
    assert httpx.get(f"{server.url}/favicon.ico").status_code == 404


async def test_a_commit_larger_than_the_queue_does_not_drop_a_keeping_up_subscriber(make_server):
    """One group commit may append more frames than SUBSCRIBER_QUEUE before a subscriber
    had any chance to read them: that subscriber is not slow and must get them all."""
    server: Server = make_server(SUBSCRIBER_QUEUE="8")
    batch = [{"speaker": "s", "data": {"i": i}} for i in range(50)]
    async with subscribe(f"{server.url}/api/v1/events") as events:
        for _ in range(3):
            reply = httpx.post(
                f"{server.url}/api/v1/send",
                json=batch,
                headers={"Authorization": f"Bearer {server.token}"},
            )
            assert reply.status_code == 202
        received = await collect(events, 150)
    assert [int(event.id) for event in received] == list(range(1, 151))
    assert server.health()["slow_consumer_disconnects"] == 0
