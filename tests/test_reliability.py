"""Faults (issue 9): kill -9 during a burst of publishes, a stalled subscriber, SIGTERM
with every kind of live stream, a restart storm of 2000 reconnecting subscribers, and
failing upstreams (AI relay, quote API) next to a normal room. Timings are measured and
reported (`record_property`, printed), never asserted, except SHUTDOWN_TIMEOUT, which is
the product's contract."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import Server, collect, subscribe
from fake_llm import FakeLLM, relay_env
from test_fallback import BUNDLED, Hitokoto

# ---------------------------------------------------------------------------------------
# A lean SSE client: one bare asyncio connection per stream, so one test process can
# hold thousands of them (an httpx client per stream could not).
# ---------------------------------------------------------------------------------------


@dataclass
class Event:
    event: str
    id: str | None
    data: str

    def json(self) -> dict:
        return json.loads(self.data)


class RawStream:
    """GET over HTTP/1.1 on its own socket; de-chunks the body and parses SSE frames (the
    server ends lines with LF only). `complete` tells, at the end, whether the server
    finished the body (true) or dropped the connection (false)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.ended = self.complete = False
        self.comments = 0  # comment blocks (keepalives) skipped
        self.hello: dict = {}

    @classmethod
    async def open(
        cls, port: int, path: str, rcvbuf: int | None = None, hello: bool = True, **headers: str
    ) -> RawStream:
        sock = socket.socket()
        if rcvbuf is not None:  # a small receive buffer: a stalled reader stalls soon
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        stream = cls(reader, writer)
        if hello:
            first = await stream.next()
            assert first is not None and first.event == "meta", first
            stream.hello = first.json()
        return stream

    async def next(self) -> Event | None:
        """The next event (comments skipped), or None at the end of the stream."""
        while True:
            while b"\n\n" not in self.buffer:
                if self.ended:
                    return None
                await self._read_chunk()
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields: dict[bytes, bytes] = {}
            data = []
            for line in block.split(b"\n"):
                name, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if name == b"data":
                    data.append(value)
                elif name:
                    fields[name] = value
            if not (fields or data):
                self.comments += 1
                continue
            event_id = fields.get(b"id")
            return Event(
                fields.get(b"event", b"message").decode(),
                None if event_id is None else event_id.decode(),
                b"\n".join(data).decode(),
            )

    async def _read_chunk(self) -> None:
        try:
            size = int(await self.reader.readuntil(b"\r\n"), 16)
            chunk = await self.reader.readexactly(size + 2)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended = True
            return
        if size == 0:
            self.ended = self.complete = True
        self.buffer += chunk[:-2]

    async def messages_until(self, last_id: int) -> list[Event]:
        """Every message event up to the one with id `last_id` (other events skipped)."""
        received: list[Event] = []
        while not received or int(received[-1].id) < last_id:
            event = await self.next()
            assert event is not None, f"stream ended before id {last_id}: {received[-1:]}"
            if event.event == "message":
                received.append(event)
        return received

    async def rest(self) -> list[Event]:
        """Every event until the server ends the stream."""
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
        return events

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def ids_of(events: list[Event]) -> list[int]:
    return [int(event.id) for event in events if event.event == "message"]


def report(record_property, name: str, values: list[float]) -> None:
    """Record a latency distribution (ms) in the test report and print it."""
    values = sorted(values)
    summary = {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p99": round(values[int(0.99 * (len(values) - 1))], 1),
        "max": round(values[-1], 1),
    }
    record_property(name, json.dumps(summary))
    print(f"{name}: {summary}")


async def replay_all(server: Server, room: str) -> dict[int, dict]:
    """Every stored message of a room, by replay from Last-Event-ID 0: {id: payload}."""
    stream = await RawStream.open(server.port, f"/api/v1/events/{room}", **{"Last-Event-ID": "0"})
    last_id = stream.hello["last_id"]
    replayed = await stream.messages_until(last_id) if last_id else []
    await stream.close()
    assert ids_of(replayed) == list(range(1, last_id + 1))  # no gap, no duplicate
    return {int(event.id): event.json() for event in replayed}


def clean_log(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


# ---------------------------------------------------------------------------------------
# Crash safety
# ---------------------------------------------------------------------------------------

WRITERS = 20
KILL_AFTER_ACKS = 250


async def burst_until_killed(server: Server, rooms: list[str], round_: int) -> tuple[list, list]:
    """WRITERS concurrent clients publish (every third request a batch over two rooms)
    until the server is killed with SIGKILL, after KILL_AFTER_ACKS acknowledgements.
    Returns (acknowledged events, every body sent)."""
    acked: list[dict] = []
    sent: list[list[dict]] = []
    enough = asyncio.Event()

    async def writer(n: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=auth(server)) as client:
            for seq in itertools.count():
                size = 2 if seq % 3 == 2 else 1
                body = [
                    {
                        "room": rooms[(n + seq + part) % len(rooms)],
                        "speaker": f"writer{n}",
                        "data": {"key": [round_, n, seq, part], "text": "溜溜 " * 20},
                    }
                    for part in range(size)
                ]
                sent.append(body)
                try:
                    reply = await client.post("/api/v1/send", json=body if size > 1 else body[0])
                except httpx.TransportError:
                    return  # killed
                assert reply.status_code == 202, reply.text
                acked.extend(reply.json()["events"] if size > 1 else [reply.json()["event"]])
                if len(acked) >= KILL_AFTER_ACKS:
                    enough.set()

    writers = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
    async with asyncio.timeout(60):
        await enough.wait()
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    await asyncio.gather(*writers)
    return acked, sent


def integrity_check(data_dir: Path, copy_to: Path) -> None:
    """PRAGMA integrity_check on a copy of the database files as the crash left them (the
    server itself recovers from the originals)."""
    copy_to.mkdir()
    for path in data_dir.glob("streaming-message.db*"):
        shutil.copy(path, copy_to / path.name)
    with contextlib.closing(sqlite3.connect(copy_to / "streaming-message.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_kill_9_mid_burst_keeps_every_acknowledged_message(make_server, tmp_path):
    server: Server = make_server()
    rooms = [f"crash{n}" for n in range(4)]
    for room in rooms:
        server.create_room(room)
    acked, sent = [], []
    for round_ in range(2):  # the second burst and kill start from a recovered database
        round_acked, round_sent = await burst_until_killed(server, rooms, round_)
        acked += round_acked
        sent += round_sent
        integrity_check(server.data_dir, tmp_path / f"copy{round_}")
        server.start()

    stored = {room: await replay_all(server, room) for room in rooms}
    assert len({(event["room"], event["id"]) for event in acked}) == len(acked)  # ids unique
    for event in acked:  # every 202 is stored, exactly as acknowledged
        assert stored[event["room"]].get(event["id"]) == event
    keys = [tuple(p["data"]["key"]) for messages in stored.values() for p in messages.values()]
    stored_keys = set(keys)
    assert len(keys) == len(stored_keys)  # nothing stored twice
    for body in sent:  # a batch is all stored or not at all, even when the kill hit it
        assert len({tuple(message["data"]["key"]) in stored_keys for message in body}) == 1
    for room in rooms:  # new ids follow every id handed out before
        assert server.publish(room=room)["id"] == max(stored[room]) + 1
    clean_log(server)
    print(f"acknowledged {len(acked)}; stored {len(keys)} (the others: replies cut off)")


# ---------------------------------------------------------------------------------------
# Slow consumers
# ---------------------------------------------------------------------------------------


MIB = 2**20


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MIB
    raise AssertionError(f"no VmRSS for {pid}")


async def until_health(server: Server, **expected: int) -> dict:
    async with asyncio.timeout(15):
        while True:
            health = server.health()
            if all(health[key] == value for key, value in expected.items()):
                return health
            await asyncio.sleep(0.05)


async def test_stalled_subscriber_is_bounded_dropped_and_resumes(make_server, record_property):
    """A subscriber that stops reading while large messages flow: the server's memory stays
    within its queue bound, the other subscribers get every message (their latency is
    reported), the stalled one is disconnected and resumes by Last-Event-ID."""
    queue, pad, warmup, count = 16, 30_000, 64, 600
    server: Server = make_server(SUBSCRIBER_QUEUE=str(queue), HISTORY_SIZE="2000")
    pid = server.process.pid
    publisher = httpx.AsyncClient(base_url=server.url, headers=auth(server), timeout=30)
    readers = [await RawStream.open(server.port, "/api/v1/events") for _ in range(3)]
    latencies: list[float] = []

    async def read_all(stream: RawStream, last_id: int) -> list[int]:
        ids = []
        while not ids or ids[-1] < last_id:
            event = await stream.next()
            assert event is not None, "a reader was dropped"
            if event.event == "message":
                if ids and ids[-1] >= warmup:  # during the stall
                    latencies.append(time.time() * 1000 - event.json()["time"])
                ids.append(int(event.id))
        return ids

    async def publish(first: int, n: int) -> None:
        for start in range(first, first + n, 8):
            body = [
                {"speaker": "s", "data": {"i": i, "pad": "x" * pad}}
                for i in range(start, start + 8)
            ]
            reply = await publisher.post("/api/v1/send", json=body)
            assert reply.status_code == 202, reply.text

    async def sample_rss() -> None:
        while True:
            samples.append(rss_mib(pid))
            await asyncio.sleep(0.01)

    reading = [asyncio.create_task(read_all(stream, warmup + count)) for stream in readers]
    await publish(0, warmup)  # the allocator settles at this message size
    await asyncio.sleep(0.5)
    samples = [rss_mib(pid)]
    sampling = asyncio.create_task(sample_rss())
    stalled = await RawStream.open(server.port, "/api/v1/events", rcvbuf=4096)  # never read
    await until_health(server, subscribers=4)
    await publish(warmup, count)
    await until_health(server, subscribers=3, slow_consumer_disconnects=1)
    for ids in await asyncio.gather(*reading):
        assert ids == list(range(1, warmup + count + 1))  # every message, in order, once
    sampling.cancel()
    await publisher.aclose()
    baseline, peak = samples[0], max(samples)

    growth = peak - baseline
    bound = 6 * queue * pad / MIB + 8  # ring + its joined copy + one stalled write, + slack
    published = count * pad / MIB
    record_property("rss_growth_mib", round(growth, 1))
    print(f"RSS {baseline:.0f} -> peak {peak:.0f} MiB; bound +{bound:.0f}, sent {published:.0f}")
    report(record_property, "reader_latency_ms_during_stall", latencies)
    assert growth < bound < published

    # The stalled subscriber reads again: what was on its way, then the end (dropped, so
    # no proper end of the body); resuming by Last-Event-ID brings all the rest.
    async with asyncio.timeout(15):
        before_drop = await stalled.rest()
    assert not stalled.complete
    seen = ids_of(before_drop)
    assert seen == list(range(warmup + 1, seen[-1] + 1)) and seen[-1] < warmup + count
    resumed = await RawStream.open(
        server.port, "/api/v1/events", **{"Last-Event-ID": str(seen[-1])}
    )
    rest = await resumed.messages_until(warmup + count)
    assert ids_of(rest) == list(range(seen[-1] + 1, warmup + count + 1))
    for stream in [*readers, resumed]:
        await stream.close()
    clean_log(server)


async def test_stalled_stream_ended_by_the_server_gets_no_frames_it_lost(make_server):
    """A stalled subscriber's room turns private (its stream ends with `event: private`,
    after the frames still due to it) while publishing goes on past the ring: when it reads
    again it gets a gapless run of messages, then the final event, never frames from
    elsewhere in the ring."""
    server: Server = make_server(SUBSCRIBER_QUEUE="256")
    server.create_room("turning")
    publisher = httpx.AsyncClient(base_url=server.url, headers=auth(server), timeout=30)

    async def publish(count: int, pad: int) -> None:
        for _ in range(0, count, 16):
            body = [{"room": "turning", "speaker": "s", "data": {"pad": "x" * pad}}] * 16
            assert (await publisher.post("/api/v1/send", json=body)).status_code == 202

    stalled = await RawStream.open(server.port, "/api/v1/events/turning", rcvbuf=4096)
    await publish(320, 30_000)  # ~10 MB: far more than the sockets hold, less than 2 rings
    assert server.health()["slow_consumer_disconnects"] == 0
    reply = await publisher.patch("/api/v1/rooms/turning", json={"private": True})
    assert reply.status_code == 200, reply.text
    await publish(1024, 10)  # the ring moves on past what the stalled one still lacks
    await publisher.aclose()
    async with asyncio.timeout(15):
        events = await stalled.rest()
    assert events[-1].event == "private" and stalled.complete
    ids = ids_of(events)
    assert ids == list(range(1, len(ids) + 1))
    clean_log(server)


async def test_keepalive_comments_on_an_idle_stream_are_no_events(make_server):
    """An idle stream carries `:` comments (proxies keep it open); a client dispatches no
    event for them. (httpx-sse did, once an id had been seen: conftest filters that.)"""
    server: Server = make_server(KEEPALIVE_S="0.05")
    raw = await RawStream.open(server.port, "/api/v1/events")
    async with subscribe(f"{server.url}/api/v1/events") as events:
        server.publish(data={"n": 1})
        await asyncio.sleep(0.5)  # ten keepalive intervals
        server.publish(data={"n": 2})
        received = await collect(events, 2)
    assert [json.loads(event.data)["data"] for event in received] == [{"n": 1}, {"n": 2}]
    await raw.messages_until(2)
    assert raw.comments >= 3  # they were sent
    await raw.close()


# ---------------------------------------------------------------------------------------
# Graceful shutdown
# ---------------------------------------------------------------------------------------

SHUTDOWN_TIMEOUT = 3


async def start_chat(client: httpx.AsyncClient, path: str = "/api/v1/chat", **body) -> str:
    reply = await client.post(path, json={"prompt": "go", **body})
    assert reply.status_code == 202, reply.text
    return reply.json()["uid"]


async def test_sigterm_ends_every_stream_and_keeps_every_acknowledged_message(
    make_server, llm: FakeLLM
):
    llm.words, llm.delay = [f"word{i}" for i in range(500)], 0.05  # still talking at SIGTERM
    server: Server = make_server(
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        SQLITE_SYNCHRONOUS="FULL",  # slower commits: SIGTERM finds one in progress
        FALLBACK_POLL_S="0.2",
        **relay_env(llm),
    )
    rooms = ["calm0", "calm1", "calm2", "stage"]
    for room in rooms:
        server.create_room(room)
    client = httpx.AsyncClient(base_url=server.url, headers=auth(server))
    controller = f"?role=controller&token={server.token}"
    streams = {
        f"{room}/{n}": await RawStream.open(
            server.port, f"/api/v1/events/{room}" + (controller if n == 0 else "")
        )
        for room in rooms
        for n in range(10)
    }
    for path in ["nosuchroom", "bad-room!"]:  # the quote feed
        streams[f"fallback/{path}"] = await RawStream.open(server.port, f"/api/v1/events/{path}")
    uid = await start_chat(client)
    streams["chat"] = await RawStream.open(server.port, f"/api/v1/chat/{uid}/events", hello=False)
    await start_chat(client, "/api/v1/rooms/stage/ai")  # the AI speaks in the room "stage"
    acked: list[dict] = []
    refused: list[int] = []

    async def publisher(n: int) -> None:  # ten of them: a commit is in progress at SIGTERM
        for i in itertools.count():
            body = {"room": rooms[(n + i) % 3], "speaker": "s", "data": {"i": i}}
            try:
                reply = await client.post("/api/v1/send", json=body)
            except httpx.TransportError:
                return
            if reply.status_code != 202:
                refused.append(reply.status_code)
                return
            acked.append(reply.json()["event"])

    publishing = asyncio.gather(*(publisher(n) for n in range(10)))
    reading = {name: asyncio.create_task(stream.rest()) for name, stream in streams.items()}
    async with asyncio.timeout(15):
        while len(acked) < 50 or len(llm.calls) < 2:
            await asyncio.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = await asyncio.to_thread(server.process.wait, SHUTDOWN_TIMEOUT + 10)
    took = time.monotonic() - signalled
    server.process = None
    await publishing
    await client.aclose()
    async with asyncio.timeout(5):
        received = {name: await task for name, task in reading.items()}
    print(f"exit {code} {took:.2f} s after SIGTERM; {len(acked)} acknowledged, then {refused}")

    assert code == 0 and took < SHUTDOWN_TIMEOUT + 2
    assert set(refused) <= {503}
    clean_log(server)
    for name, events in received.items():
        assert streams[name].complete, name  # the server ended each body properly
        if name == "chat":  # a chat lives in memory: it ends, it is not resumed
            assert events[-1].event == "error" and events[-1].json()["code"] == 503
            continue
        assert events[-1].event == "shutdown", (name, events[-3:])
        assert events[-1].json()["reconnect"] is True
        room = name.split("/")[0]
        if room == "stage":  # the AI's answer in progress was withdrawn before the end
            errors = [e.json().get("error") for e in events if e.event == "delta"]
            assert [error for error in errors if error] == ["Server is shutting down"], name
        elif room != "fallback":  # each stream got every message acknowledged to its room
            sent = {event["id"] for event in acked if event["room"] == room}
            got = ids_of(events)  # (and perhaps more: stored, but the reply was cut off)
            assert sent <= set(got) and got == list(range(1, len(got) + 1)), name

    server.start()
    for room in rooms[:3]:
        stored = await replay_all(server, room)
        for event in acked:
            if event["room"] == room:
                assert stored[event["id"]] == event


# ---------------------------------------------------------------------------------------
# Restart storm
# ---------------------------------------------------------------------------------------

STORM = 2000
STORM_FILES = STORM + 500  # in each process: a socket per stream, and some to spare


def open_file_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open file limit")


@pytest.fixture
def many_files() -> Iterator[None]:
    """Raise this process's open-file limit for the storm (the server, a child process,
    inherits it); skip when the hard limit does not allow enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < STORM_FILES:
        pytest.skip(f"a storm of {STORM} needs {STORM_FILES} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, STORM_FILES), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_restart_storm_of_2000_reconnecting_subscribers(
    many_files, make_server, record_property
):
    server: Server = make_server()
    rooms = [f"storm{n}" for n in range(4)]
    before, missed, live = 20, 5, 3  # messages per room: seen, missed in the restart, live

    def publish_round(n: int) -> None:
        for _ in range(n):
            body = [{"room": room, "speaker": "s", "data": {}} for room in rooms]
            reply = httpx.post(f"{server.url}/api/v1/send", json=body, headers=auth(server))
            assert reply.status_code == 202, reply.text

    for room in rooms:
        server.create_room(room)
    publish_round(before)
    assert server.stop() == 0
    server.start()
    assert open_file_limit(server.process.pid) >= STORM_FILES
    publish_round(missed)

    replayed = 0
    all_replayed = asyncio.Event()
    hello_ms: list[float] = []
    started = time.monotonic()

    async def subscriber(n: int) -> None:
        nonlocal replayed
        last_seen = random.randint(0, before)  # where it was when the server went away
        opened = time.monotonic()
        stream = await RawStream.open(
            server.port, f"/api/v1/events/{rooms[n % 4]}", **{"Last-Event-ID": str(last_seen)}
        )
        hello_ms.append((time.monotonic() - opened) * 1000)
        received = await stream.messages_until(before + missed)
        replayed += 1
        if replayed == STORM:
            all_replayed.set()
        received += await stream.messages_until(before + missed + live)
        await stream.close()
        assert ids_of(received) == list(range(last_seen + 1, before + missed + live + 1))

    storm = [asyncio.create_task(subscriber(n)) for n in range(STORM)]
    async with asyncio.timeout(60):
        await all_replayed.wait()
        replay_s = time.monotonic() - started
        assert server.health()["subscribers"] == STORM
        publish_round(live)
        await asyncio.gather(*storm)
    record_property("storm_all_replayed_s", round(replay_s, 2))
    report(record_property, "storm_time_to_hello_ms", hello_ms)
    print(f"{STORM} subscribers replayed in {replay_s:.1f} s")
    clean_log(server)


# ---------------------------------------------------------------------------------------
# Upstream faults
# ---------------------------------------------------------------------------------------

LLM_FAULTS = ["stall", "500", "429", "401", "cut", "garbage", "wrong shape", "NaN usage"]
QUOTE_FAULTS = ["slow", "trickle", "invalid json", "not a quote", "server error", "down"]


async def test_failing_upstreams_never_disturb_another_rooms_stream(
    make_server, llm: FakeLLM, record_property
):
    hitokoto = Hitokoto()
    hitokoto.start()
    server: Server = make_server(
        HITOKOTO_URL=hitokoto.url,
        FALLBACK_POLL_S="0.1",
        FALLBACK_TIMEOUT_S="0.3",
        **relay_env(llm),
    )
    server.create_room("calm")
    server.create_room("stage")
    client = httpx.AsyncClient(base_url=server.url, headers=auth(server), timeout=10)
    calm = [await RawStream.open(server.port, "/api/v1/events/calm") for _ in range(3)]
    stage = await RawStream.open(server.port, "/api/v1/events/stage")
    quotes = [await RawStream.open(server.port, f"/api/v1/events/nosuch{n}") for n in range(2)]
    count = 80
    quote_events: list[Event] = []

    async def read_quotes(stream: RawStream) -> None:
        while (event := await stream.next()) is not None:
            quote_events.append(event)

    async def faults() -> list[list[Event]]:
        """Every failure mode of both upstreams in turn, with chats and the AI speaker."""
        chats = []
        for llm_mode, quote_mode in zip(LLM_FAULTS, itertools.cycle(QUOTE_FAULTS)):
            llm.mode = llm_mode
            if quote_mode == "down":
                hitokoto.stop()
            else:
                hitokoto.mode = quote_mode
            for _ in range(2):
                uid = await start_chat(client)
                path = f"/api/v1/chat/{uid}/events"
                stream = await RawStream.open(server.port, path, hello=False)
                chats.append(asyncio.create_task(stream.rest()))
            await start_chat(client, "/api/v1/rooms/stage/ai")
            await asyncio.sleep(0.3)
            if quote_mode == "down":
                hitokoto.start()
        return await asyncio.gather(*chats)

    async def publisher() -> None:
        for i in range(count):
            reply = await client.post(
                "/api/v1/send", json={"room": "calm", "speaker": "s", "data": {"i": i}}
            )
            assert reply.status_code == 202, reply.text
            await asyncio.sleep(0.03)

    async def read_calm(stream: RawStream) -> tuple[list[Event], list[float]]:
        events, latencies = [], []
        while len(ids_of(events)) < count:
            event = await stream.next()
            assert event is not None
            events.append(event)
            if event.event == "message":
                latencies.append(time.time() * 1000 - event.json()["time"])
        return events, latencies

    reading_quotes = [asyncio.create_task(read_quotes(stream)) for stream in quotes]
    try:
        async with asyncio.timeout(60):
            chat_events, _, *calm_results = await asyncio.gather(
                faults(), publisher(), *(read_calm(stream) for stream in calm)
            )
    finally:
        hitokoto.stop()
        await client.aclose()
        for task in reading_quotes:
            task.cancel()

    latencies = []
    for events, stream_latencies in calm_results:
        assert ids_of(events) == list(range(1, count + 1))  # every message, in order
        assert {event.event for event in events} <= {"message", "presence"}  # nothing else
        latencies += stream_latencies
    report(record_property, "calm_room_latency_ms_with_failing_upstreams", latencies)
    for events in chat_events:  # every failed chat ended with an error event, none hangs
        assert events[-1].event == "error", events[-3:]
        assert events[-1].json()["code"] in (502, 504)
    stage_events = []
    async with asyncio.timeout(15):
        while len([e for e in stage_events if "error" in e.data]) < len(LLM_FAULTS):
            stage_events.append(await stage.next())
    assert {e.event for e in stage_events} <= {"delta", "presence"}  # nothing stored
    # the quote feed kept flowing through every failure of its API, with bundled quotes
    assert {event.event for event in quote_events} == {"message"}
    assert {event.json()["meta"] for event in quote_events} == {"fallback"}
    assert sum(event.json()["data"]["message"] in BUNDLED for event in quote_events) > 10
    clean_log(server)


@pytest.fixture(scope="module")
def one_chat_server(tmp_path_factory, fake_llm: FakeLLM) -> Iterator[Server]:
    """A relay that lets a client run one chat at a time."""
    server = Server(tmp_path_factory.mktemp("odd"), **relay_env(fake_llm, CHAT_MAX_PER_CLIENT="1"))
    yield server.start()
    server.stop()


@pytest.mark.parametrize("mode", ["wrong shape", "number content", "NaN usage", "lone surrogate"])
async def test_odd_upstream_chunks_end_the_chat_with_an_error(
    one_chat_server: Server, llm: FakeLLM, mode: str
):
    """A chunk of the wrong shape ends the chat with a 502 error event; before, some kinds
    left the chat running forever, holding its client's concurrency slot."""
    server = one_chat_server
    llm.mode = mode
    async with httpx.AsyncClient(base_url=server.url) as client:
        for _ in range(2):  # the second chat is admitted: the first freed its slot
            uid = await start_chat(client)
            stream = await RawStream.open(server.port, f"/api/v1/chat/{uid}/events", hello=False)
            async with asyncio.timeout(15):
                events = await stream.rest()
            deltas = [event.json()["content"] for event in events if event.event == "delta"]
            assert all(isinstance(content, str) for content in deltas)
            assert events[-1].event == "error"
            assert events[-1].json()["msg"] == "The AI service sent an invalid response"
    clean_log(server)
