"""The quote feed of invalid and unknown rooms (issue 4), against a stand-in Hitokoto API:
a real HTTP server on loopback that counts its requests and can be down, slow or broken."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import ROOT, Server, collect, free_port, sse_client, subscribe
from httpx_sse import ServerSentEvent

POLL_S = 0.2
BUNDLED = {quote["hitokoto"] for quote in json.loads((ROOT / "quotes.json").read_text())}


class Hitokoto:
    """A stand-in for https://v1.hitokoto.cn/?encode=json. `mode`: "ok", or how it fails;
    stop() takes it off the network (connections are refused), start() brings it back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/?encode=json"
        self.mode = "ok"
        self.requests = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with stand_in._lock:
                    stand_in.requests += 1
                    n = next(stand_in._ids)
                mode = stand_in.mode
                if mode == "slow":  # answers long after FALLBACK_TIMEOUT_S
                    time.sleep(2)
                quote = {
                    "id": n,
                    "uuid": f"00000000-0000-0000-0000-{n:012d}",
                    "hitokoto": f"stand-in quote {n}",
                    "type": "a",
                    "from": "stand-in",
                    "from_who": "tester",
                    "creator": "test",
                    "length": 16,
                }
                body = {
                    "invalid json": b"<html>Bad Gateway</html>",
                    "not a quote": json.dumps({"hitokoto": 42, "from": []}).encode(),
                    "server error": b'{"status": 500}',
                    # parses in Python, but no UTF-8 frame can carry it
                    "lone surrogate": b'{"hitokoto": "\\ud800", "from": "x", "from_who": null}',
                }.get(mode, json.dumps(quote, ensure_ascii=False).encode())
                self.send_response(500 if mode == "server error" else 200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "trickle":  # a valid quote, but each byte comes late
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.05)
                else:
                    self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # the app hung up on a slow reply, as it should

        self._server = Quiet(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture(scope="module")
def hitokoto() -> Iterator[Hitokoto]:
    stand_in = Hitokoto()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def quote_server(tmp_path_factory: pytest.TempPathFactory, hitokoto: Hitokoto) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("fallback"),
        HITOKOTO_URL=hitokoto.url,
        FALLBACK_POLL_S=str(POLL_S),
        FALLBACK_TIMEOUT_S="0.5",
    ).start()
    yield server
    server.stop()


def quotes(events: list[ServerSentEvent]) -> list[dict]:
    return [json.loads(event.data) for event in events]


async def until_listeners_are_gone(server: Server) -> None:
    async with asyncio.timeout(15):
        while server.health()["fallback_subscribers"]:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("room", "reason"),
    [
        ("nosuchroom", "unknown room"),
        ("bad-room!", "invalid room id"),
        ("x" * 65, "invalid room id"),
    ],
)
async def test_invalid_and_unknown_rooms_stream_quotes(quote_server: Server, room, reason):
    async with subscribe(f"{quote_server.url}/api/v1/events/{room}") as events:
        assert events.hello["fallback"] is True
        assert events.hello["reason"] == reason and events.hello["requested"] == room
        (event,) = await collect(events, 1)
    assert event.id == ""  # no `id:` line: a client's Last-Event-ID is left alone
    quote = json.loads(event.data)
    assert set(quote) == {"id", "room", "speaker", "data", "time", "meta", "status"}
    assert quote["meta"] == "fallback" and quote["room"] == "fallback"
    assert quote["speaker"] == "tester"
    assert quote["data"]["message"].startswith("stand-in quote ")
    assert (quote["data"]["from"], quote["data"]["from_who"]) == ("stand-in", "tester")


def test_publishing_to_a_fallback_room_is_still_refused(quote_server: Server):
    params = {"token": quote_server.token, "msg": "hi"}
    url = f"{quote_server.url}/api/v1/send/otto"
    unknown = httpx.get(url, params={**params, "room": "nosuchroom"})
    assert unknown.status_code == 404 and "Unknown room" in unknown.json()["msg"]
    invalid = httpx.get(url, params={**params, "room": "bad-room!"})
    assert invalid.status_code == 400 and "Invalid room id" in invalid.json()["msg"]


async def test_one_poller_serves_fifty_subscribers(quote_server: Server, hitokoto: Hitokoto):
    await until_listeners_are_gone(quote_server)
    url = f"{quote_server.url}/api/v1/events/nosuchroom"
    count, listeners = 5, 50
    before, started = hitokoto.requests, time.monotonic()

    async def listener(n: int) -> list[ServerSentEvent]:
        async with subscribe(f"{url}{n}", client) as events:
            return await collect(events, count)

    async with sse_client() as client:
        received = await asyncio.gather(*(listener(n) for n in range(listeners)))
    elapsed = time.monotonic() - started
    requests = hitokoto.requests - before
    # one request per interval at most, however many listen (50 pollers: ~50 per interval)
    assert requests <= elapsed / POLL_S + 2, (requests, elapsed)
    frames: dict[int, set[str]] = {}
    for events in received:
        ids = [quote["id"] for quote in quotes(events)]
        assert ids == list(range(ids[0], ids[0] + count))  # every quote, in order
        for quote_id, event in zip(ids, events, strict=True):
            frames.setdefault(quote_id, set()).add(event.data)
    assert all(len(variants) == 1 for variants in frames.values())  # the same frame for all
    assert len(frames) <= requests

    await until_listeners_are_gone(quote_server)
    await asyncio.sleep(POLL_S)  # a request in flight when the last one left
    stopped = hitokoto.requests
    await asyncio.sleep(5 * POLL_S)
    assert hitokoto.requests == stopped  # nobody listens: no polling

    async with subscribe(url) as events:  # and it starts again for the next listener
        (event,) = await collect(events, 1)
    assert json.loads(event.data)["data"]["message"].startswith("stand-in quote ")


@pytest.mark.parametrize(
    "failure",
    ["down", "slow", "trickle", "invalid json", "not a quote", "server error", "lone surrogate"],
)
async def test_quotes_keep_flowing_when_the_api_fails(
    quote_server: Server, hitokoto: Hitokoto, failure: str
):
    warnings = quote_server.log().count("quote API failed")
    if failure == "down":
        hitokoto.stop()
    else:
        hitokoto.mode = failure
    try:
        async with subscribe(f"{quote_server.url}/api/v1/events/nosuchroom") as events:
            seen = []
            async with asyncio.timeout(15):
                async for event in events:
                    seen.append(event)
                    if len(seen) == 4:
                        break
            assert [event.event for event in seen] == ["message"] * 4  # no error events
            assert all(quote["data"]["message"] in BUNDLED for quote in quotes(seen))
            assert all(quote["meta"] == "fallback" for quote in quotes(seen))
            # one warning for the whole failure streak, not one per poll
            assert quote_server.log().count("quote API failed") == warnings + 1
    finally:
        hitokoto.mode = "ok"
        if failure == "down":
            hitokoto.start()
    async with subscribe(f"{quote_server.url}/api/v1/events/nosuchroom") as events:
        async with asyncio.timeout(15):
            async for event in events:  # the API answers again: its quotes are back
                if json.loads(event.data)["data"]["message"].startswith("stand-in quote "):
                    break
    assert "Traceback" not in quote_server.log()


def test_bundled_quotes_are_plenty_and_attributed():
    bundled = json.loads((ROOT / "quotes.json").read_text())
    assert len(bundled) >= 50 and len(BUNDLED) == len(bundled)  # no repeats
    for quote in bundled:
        assert isinstance(quote["hitokoto"], str) and quote["hitokoto"].strip()
        assert isinstance(quote["from"], str) and quote["from"].strip(), quote
        assert quote["from_who"] is None or quote["from_who"].strip(), quote
