"""frontend/dist/sse-client.js: conformance with the browser's own EventSource, its extras, and
its build (fresh, ES5, size budget).

A loopback server plays scripted streams, chunk by chunk. The runner page (sse_cases/runner.html)
runs each case at once with the native EventSource, with SSEClient over fetch and with SSEClient
over XHR (in an iframe without fetch); what they saw and the requests they made must match.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from array import array
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from itertools import count, pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from browser_support import NewContext, chromium, new_context  # noqa: F401
from playwright.async_api import Browser, BrowserContext, Page

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
DIST_FILES = ("sse-client.js", "sse-client.min.js", "sse-client.d.ts")
RUNNER = Path(__file__).resolve().parent / "sse_cases" / "runner.html"
CLIENTS = ("native", "fetch", "xhr")
REASONS = {status.value: status.phrase for status in HTTPStatus}
RETRY = "retry: 20\n"  # streams reconnect at once, so that every case ends in milliseconds


# --- The scripted streams ---------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    time: float
    #: The client closed the connection while the reply still held it open.
    disconnected: bool = False

    @property
    def last_event_id(self) -> str | None:
        value = self.headers.get("last-event-id")
        # Header bytes are UTF-8, as EventSource sends them.
        return None if value is None else value.encode("latin-1").decode()


@dataclass
class Reply:
    status: int = 200
    content_type: str | None = "text/event-stream"
    chunks: Sequence[bytes] = ()
    #: Seconds between chunks, so that each arrives on its own.
    pause: float = 0.003
    #: Seconds the connection stays open after the last chunk.
    hold: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    #: Close the connection without any response: a network error.
    drop: bool = False


NO_CONTENT = Reply(status=204, content_type=None)
DROP = Reply(drop=True)


def stream(
    *pieces: str | bytes,
    split: Callable[[bytes], list[bytes]] | None = None,
    retry: bool = True,
    **reply: Any,
) -> Reply:
    """An event stream sent as `pieces`, or as `split` cuts them; starts with RETRY."""
    chunks = [piece.encode() if isinstance(piece, str) else piece for piece in pieces]
    if retry:
        chunks[0] = RETRY.encode() + chunks[0]
    if split:
        chunks = split(b"".join(chunks))
    return Reply(chunks=chunks, **reply)


def every(size: int) -> Callable[[bytes], list[bytes]]:
    return lambda body: [body[i : i + size] for i in range(0, len(body), size)]


def at_random(seed: int) -> Callable[[bytes], list[bytes]]:
    def split(body: bytes) -> list[bytes]:
        rng, chunks, i = random.Random(seed), [], 0
        while i < len(body):
            size = rng.randint(1, 12)
            chunks.append(body[i : i + size])
            i += size
        return chunks

    return split


@dataclass
class Case:
    name: str
    #: The n-th request of a run gets replies[n] (after them, 204 closes the client), or a
    #: function of the request.
    replies: Sequence[Reply] | Callable[[Request], Reply]
    #: The message events (type, data, lastEventId) the native EventSource must see.
    expect: list[tuple[str, str, str]] | None = None
    #: Event types listened to besides message, open and error.
    types: tuple[str, ...] = ()
    stop_after: int | None = None
    timeout: float = 5.0
    #: Count and checksum message events instead of logging them.
    summary: bool = False
    #: Bounds in seconds of each delay between two requests of a run.
    gaps: Sequence[tuple[float, float]] | None = None
    #: The XHR fallback restarts this long stream (resuming by Last-Event-ID) to bound memory.
    xhr_resumes: bool = False

    def reply(self, request: Request, index: int) -> Reply:
        if callable(self.replies):
            return self.replies(request)
        return self.replies[index] if index < len(self.replies) else NO_CONTENT


class StreamServer:
    """Loopback HTTP/1.1 server in its own thread: the runner page at /, the client builds at
    /dist/, and /stream/<run>/<case>[...] plays the case's replies; it logs each stream request
    by run."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}
        self.requests: dict[str, list[Request]] = defaultdict(list)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(asyncio.start_server(self.handle, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.runs = count()

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    def new_run(self, case: Case, client: str) -> str:
        """A URL of its own for one client's run of a case."""
        self.cases[case.name] = case
        return f"{self.url}/stream/{client}-{next(self.runs)}/{case.name}"

    def requests_of(self, url: str) -> list[Request]:
        return self.requests[urlsplit(url).path.split("/")[2]]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:-2]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            request = Request(method, target, headers, body, time.monotonic())
            await self.respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()

    async def respond(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        path = urlsplit(request.target).path
        if path == "/":
            reply = Reply(content_type="text/html", chunks=[RUNNER.read_bytes()])
        elif path.startswith("/dist/") and path[6:] in DIST_FILES:
            reply = Reply(
                content_type="text/javascript", chunks=[(FRONTEND / "dist" / path[6:]).read_bytes()]
            )
        elif path.startswith("/stream/"):
            _, _, run, case = path.split("/")[:4]
            log = self.requests[run]
            log.append(request)
            reply = self.cases[case].reply(request, len(log) - 1)
        else:
            reply = Reply(status=404, content_type="text/plain")
        if reply.drop:
            return
        reason = REASONS.get(reply.status, "Unknown")
        head = [f"HTTP/1.1 {reply.status} {reason}", "Connection: close", "Cache-Control: no-store"]
        if reply.content_type:
            head.append(f"Content-Type: {reply.content_type}")
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        for i, chunk in enumerate(reply.chunks):
            if i and reply.pause:
                await asyncio.sleep(reply.pause)
            writer.write(chunk)
            await writer.drain()
        if reply.hold:
            with contextlib.suppress(TimeoutError):  # an empty read: the client closed
                request.disconnected = not await asyncio.wait_for(reader.read(1), reply.hold)


# --- The conformance cases ------------------------------------------------------------------

KITCHEN_SINK = (
    "\ufeffretry: 20\r\n"
    ": a comment\r\n"
    "data: crlf\r\n\r\n"
    "data:cr\r\rdata: lf\n\n"
    "event: custom\ndata: é€𝄞日本\ndata\ndata:  two\n\n"
    "id: 7\nfoo: bar\ndata: a\0b\n\n"
    "id: 8\0\nevent: only\n\n"
    "data: after\n\n"
    "id\ndata: reset\n\n"
).encode() + b"data: bad \xff\xc3(\r\n\r\ndata: no blank line at the end"
KITCHEN_SINK_EVENTS = [
    ("message", "crlf", ""),
    ("message", "cr", ""),
    ("message", "lf", ""),
    ("custom", "é€𝄞日本\n\n two", ""),
    ("message", "a\0b", "7"),
    ("message", "after", "7"),
    ("message", "reset", ""),
    ("message", "bad \ufffd\ufffd(", ""),
]

BIG_COUNT = 50_000  # events of about 100 bytes: a 5 MB stream


def numbered_data(i: int) -> str:
    return f"{i:05d} " + "x" * 80


def numbered_event(i: int) -> str:
    return f"id: {i}\ndata: {numbered_data(i)}\n\n"


def numbered(total: int) -> Callable[[Request], Reply]:
    """Events 1..total, from the one after the request's Last-Event-ID; then 204."""

    def reply(request: Request) -> Reply:
        start = int(request.last_event_id or 0)
        if start >= total:
            return NO_CONTENT
        events = "".join(numbered_event(i) for i in range(start + 1, total + 1))
        return stream(events, split=every(64 * 1024), pause=0)

    return reply


def numbered_summary(total: int) -> dict[str, Any]:
    """The runner's summary of numbered(total): count, FNV-1a of the data, last id."""
    checksum = 2166136261
    for i in range(1, total + 1):
        for unit in array("H", numbered_data(i).encode("utf-16-le")):
            checksum = ((checksum ^ unit) * 16777619) & 0xFFFFFFFF
    return {"count": total, "hash": checksum, "lastEventId": str(total)}


def message(data: str, last_event_id: str = "", type: str = "message") -> tuple[str, str, str]:
    return (type, data, last_event_id)


CASES = [
    # Line endings (WHATWG: CRLF, LF or CR), also cut between chunks.
    Case("lf", [stream("data: a\ndata: b\n\ndata: c\n\n")], [message("a\nb"), message("c")]),
    Case("cr", [stream("data: a\rdata: b\r\rdata: c\r\r")], [message("a\nb"), message("c")]),
    Case(
        "crlf",
        [stream("data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n")],
        [message("a\nb"), message("c")],
    ),
    Case("newline-fest", [stream("data:test\r\ndata\ndata:test\r\n\r")], [message("test\n\ntest")]),
    Case("crlf-cut-between-chunks", [stream("data: a\r", "\ndata: b\n\n")], [message("a\nb")]),
    Case(
        "cr-then-cr-in-next-chunk",
        [stream("data: a\r", "\rdata: b\r", "\r")],
        [message("a"), message("b")],
    ),
    Case("cr-then-field-in-next-chunk", [stream("data: a\r", "data: b\r\r")], [message("a\nb")]),
    Case(
        "lone-lf-chunks",
        [stream("data: a", "\n", "\n", "data: b\n", "\n")],
        [message("a"), message("b")],
    ),
    # BOM: stripped once at the start of the stream only.
    Case(
        "bom",
        [stream("\ufeffretry: 20\ndata: 1\n\n\ufeffdata: 2\n\ndata: 3\n\n", retry=False)],
        [message("1"), message("3")],
    ),
    Case(
        "bom-cut-between-chunks",
        [stream(b"\xef", b"\xbb", b"\xbfretry: 20\ndata: 1\n\n", retry=False)],
        [message("1")],
    ),
    Case(
        "bom-twice",
        [stream("\ufeff\ufeffdata: 1\n\nretry: 20\ndata: 2\n\n", retry=False)],
        [message("2")],
    ),
    # Fields.
    Case(
        "field-parsing",
        [
            stream(
                "data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\n"
                "da-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n\n"
            )
        ],
        [message("\0\n 2\n1\n3\n\n4")],
    ),
    Case(
        "leading-space", [stream("data:\ttest\rdata: \ndata:test\n\n")], [message("\ttest\n\ntest")]
    ),
    Case(
        "comments",
        [
            stream(
                "data:1\r:\0\n:\r\ndata:2\n:"
                + "x" * 2048
                + "\rdata:3\n:data:fail\r:"
                + "x" * 2048
                + "\ndata:4\n\n"
            )
        ],
        [message("1\n2\n3\n4")],
    ),
    Case(
        "unknown-fields",
        [stream("foo: bar\ndata: x\nDATA: y\nData: z\nretry2: 1\n\n")],
        [message("x")],
    ),
    Case("null-in-data", [stream("data: a\0b\n\n")], [message("a\0b")]),
    Case(
        "long-line",
        [stream("data: " + "y" * 100_000 + "\n\n", split=every(7000))],
        [message("y" * 100_000)],
    ),
    # Data: joined with LF, the last LF dropped; an empty buffer dispatches nothing.
    Case("data-joining", [stream("data: a\ndata:\ndata: b\ndata:\n\n")], [message("a\n\nb\n")]),
    Case(
        "empty-data",
        [stream("data:\n\ndata\n\ndata: \n\n\n\n")],
        [message(""), message(""), message("")],
    ),
    # Event types: reset after each dispatch; a type without data is not dispatched.
    Case(
        "event-type",
        [
            stream(
                "event: custom\ndata: 1\n\ndata: 2\n\nevent: only\n\ndata: 3\n\n"
                "event: custom\nevent\ndata: 4\n\nevent:\ndata: 5\n\n"
            )
        ],
        [message("1", type="custom"), message("2"), message("3"), message("4"), message("5")],
        types=("custom", "only"),
    ),
    # Ids: persist across events, set without data, reset by an empty value, NUL ignored.
    Case(
        "id-persistence",
        [
            stream(
                "id: 1\ndata: a\n\ndata: b\n\nid: 2\n\ndata: c\n\nid:\n"
                "data: d\n\nid: 3\ndata: e\n\nid\ndata: f\n\nid: 9\n\n"
            )
        ],
        [
            message("a", "1"),
            message("b", "1"),
            message("c", "2"),
            message("d"),
            message("e", "3"),
            message("f"),
        ],
    ),
    Case(
        "id-with-nul",
        [
            stream(
                "id: 1\ndata: a\n\nid: \0\0\ndata: b\n\nid: x\0\ndata: c\n\n"
                "id: \0x\ndata: d\n\nid: x\0x\ndata: e\n\nid:  \0\ndata: f\n\n"
            )
        ],
        [message(data, "1") for data in "abcdef"],
    ),
    Case("id-unicode", [stream("id: é€𝄞\ndata: a\n\n")], [message("a", "é€𝄞")]),
    Case("id-leading-space", [stream("id:  7\ndata: a\n\n")], [message("a", " 7")]),
    # Retry: digits only; the delay applies to the next reconnection.
    Case(
        "retry-bogus",
        [
            stream(
                "retry: 5000x\nretry: -5000\nretry: 5000.5\nretry:  5000\n"
                "retry: 5e3\nretry: +5000\nretry: ５０００\ndata: a\n\n"
            )
        ],
        [message("a")],
        gaps=[(0.0, 1.0)],
    ),
    # Before the stream's own retry: Chromium resets the delay on an empty value (see
    # test_empty_retry_field_is_ignored).
    Case(
        "retry-empty",
        [stream("retry\nretry:\n" + RETRY + "data:test\n\n", retry=False)],
        [message("test")],
    ),
    Case("retry-applies", [stream("retry: 400\ndata: a\n\n")], [message("a")], gaps=[(0.39, 2.0)]),
    # End of stream: a last event without its blank line is dropped, nor do its fields leak.
    Case("eof-without-blank-line", [stream("data: a\n\ndata: b")], [message("a")]),
    Case("eof-after-one-newline", [stream("data: a\n\ndata: b\n")], [message("a")]),
    Case(
        "eof-drops-pending-fields",
        [stream("id: 5\ndata: a\n\nid: 6\nevent: custom\ndata: b\n"), stream("data: c\n\n")],
        [message("a", "5"), message("c", "5")],
        types=("custom",),
    ),
    # UTF-8, decoded across chunk boundaries; invalid bytes become U+FFFD.
    Case("utf8", [stream("data: héllo € 𝄞 日本語\n\n")], [message("héllo € 𝄞 日本語")]),
    Case(
        "utf8-byte-chunks",
        [stream("data: héllo € 𝄞 日本語\n\n", split=every(1))],
        [message("héllo € 𝄞 日本語")],
    ),
    Case(
        "utf8-cut-inside-chars",
        [stream(b"data: \xe2", b"\x82\xac \xf0\x9d", b"\x84\x9e\n\n")],
        [message("€ 𝄞")],
    ),
    Case(
        "utf8-invalid",
        [stream(b"data: a\xffb\xc3(c\xe2\x82d\xed\xa0\x80e\xf0\x9f\n\n")],
        [message(b"a\xffb\xc3(c\xe2\x82d\xed\xa0\x80e\xf0\x9f".decode(errors="replace"))],
    ),
    Case("utf8-truncated-at-eof", [stream(b"data: a\n\ndata: \xe2\x82")], [message("a")]),
    # Every rule at once, in chunks cut anywhere.
    *(
        Case(
            f"kitchen-sink-{name}",
            [stream(KITCHEN_SINK, split=split, retry=False)],
            KITCHEN_SINK_EVENTS,
            types=("custom", "only"),
        )
        for name, split in [
            ("whole", None),
            ("bytes", every(1)),
            ("pairs", every(2)),
            ("triples", every(3)),
            *((f"random{s}", at_random(s)) for s in (1, 2, 3)),
        ]
    ),
    # Reconnection: after the end of the stream, with Last-Event-ID; after a network error.
    Case(
        "reconnect",
        [stream("id: 1\ndata: a\n\n"), stream("id: 2\ndata: b\n\n"), stream("data: c\n\n")],
        [message("a", "1"), message("b", "2"), message("c", "2")],
        gaps=[(0.015, 1.0)] * 3,
    ),
    Case(
        "reconnect-after-network-error",
        [DROP, stream("data: a\n\n")],
        [message("a")],
        timeout=8.0,
        gaps=[(2.9, 5.0), (0.015, 1.0)],
    ),
    Case(
        "redirect",
        [Reply(status=307, headers={"Location": "?moved"}), stream("data: a\n\n")],
        [message("a")],
    ),
    # Any status but 200, or any type but text/event-stream: error, closed, no reconnection.
    *(
        Case(f"status-{status}", [Reply(status=status, content_type=None)], [])
        for status in (204, 205)
    ),
    *(
        Case(f"status-{status}", [stream("data: no\n\n", status=status)], [])
        for status in (201, 210, 299, 301, 404, 410, 500, 503)
    ),
    *(
        Case(f"content-type-{i}", [stream("data: a\n\n", content_type=content_type)], expect)
        for i, (content_type, expect) in enumerate(
            [
                ("text/plain", []),
                (None, []),
                ("text/event-streams", []),
                ("text/html; x=text/event-stream", []),
                ("text/event-stream; charset=utf-8", [message("a")]),
                ("TEXT/Event-Stream", [message("a")]),
                ("text/event-stream;", [message("a")]),
                ("text/event-stream;bogus", [message("a")]),
            ]
        )
    ),
    # close(): no event after it, no reconnection.
    # (The runner listens 300 ms after close(): b would arrive in that time.)
    Case(
        "close",
        [stream("data: a\n\n", "data: b\n\n", pause=0.1, hold=1.0)],
        [message("a")],
        stop_after=1,
    ),
    # 5 MB: count and checksum.
    Case("five-megabytes", numbered(BIG_COUNT), summary=True, timeout=30.0, xhr_resumes=True),
]


# --- Fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[StreamServer]:
    server = StreamServer()
    yield server
    server.close()


async def open_runner(context: BrowserContext, server: StreamServer, query: str = "") -> Page:
    page = await context.new_page()
    await page.goto(f"{server.url}/{query}")
    await page.wait_for_function("typeof SSEClient === 'function'")
    return page


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def page(chromium: Browser, server: StreamServer) -> AsyncIterator[Page]:  # noqa: F811
    page = await open_runner(await chromium.new_context(), server)
    yield page
    await page.context.close()


def page_spec(case: Case, url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "url": url,
        "options": options or {},
        "types": ["message", *case.types],
        "stopAfter": case.stop_after,
        "timeout": case.timeout * 1000,
        "settle": 300 if case.stop_after else 50,
        "summary": case.summary,
    }


async def run_case(
    page: Page,
    server: StreamServer,
    case: Case,
    clients: Sequence[str] = CLIENTS,
    options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, list[Request]]]:
    """Runs the case with each client at once: what each saw, and the requests each made."""
    urls = {client: server.new_run(case, client) for client in clients}
    specs = {client: page_spec(case, url, options) for client, url in urls.items()}
    results = await page.evaluate("specs => runAll(specs)", specs)
    return results, {client: server.requests_of(url) for client, url in urls.items()}


def messages(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["data"], e["lastEventId"]) for e in result["log"] if "data" in e]


def as_native(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log without timings and without the fields only SSEClient's events have."""
    native_fields = ("type", "readyState", "data", "lastEventId", "origin")
    event_fields = ("shape", "afterDispatch")  # what kind of object, what dispatching set
    return [{key: e[key] for key in native_fields + event_fields if key in e} for e in log]


def request_view(requests: list[Request]) -> list[tuple[str, str, str | None, str | None]]:
    """What EventSource decides in a request: method, URL after the case's, headers."""
    return [
        (r.method, r.target.split("/", 4)[-1], r.last_event_id, r.headers.get("accept"))
        for r in requests
    ]


def gaps(requests: list[Request]) -> list[float]:
    return [b.time - a.time for a, b in pairwise(requests)]


# --- Conformance -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_conformance(page: Page, server: StreamServer, case: Case) -> None:
    results, requests = await run_case(page, server, case)
    native = results["native"]
    for client in CLIENTS:
        assert not results[client]["timedOut"], client
        if case.gaps is not None:
            delays = gaps(requests[client])
            assert len(delays) == len(case.gaps), client
            for delay, (low, high) in zip(delays, case.gaps, strict=True):
                assert low <= delay <= high, (client, delays)
    if case.expect is not None:
        assert messages(native) == case.expect
    if case.summary:
        assert native["summary"] == numbered_summary(BIG_COUNT)
    for client in ("fetch", "xhr"):
        assert as_native(results[client]["log"]) == as_native(native["log"]), client
        assert results[client]["summary"] == native["summary"], client
        if case.xhr_resumes and client == "xhr":
            resumed_from = [int(r.last_event_id or 0) for r in requests[client]]
            assert len(resumed_from) > len(requests["native"])
            assert resumed_from == sorted(set(resumed_from))
        else:
            assert request_view(requests[client]) == request_view(requests["native"]), client


async def test_events_are_dom_events_as_eventsources(page: Page, server: StreamServer) -> None:
    """A stream's events are MessageEvents, open and error plain Events; none bubbles or can be
    cancelled; the source is their target. Also in the XHR runs, where the Event constructors
    are hidden (document.createEvent makes them, as in Internet Explorer)."""
    case = Case(
        "event-objects", [stream("data: a\n\nevent: custom\ndata: b\n\n")], types=("custom",)
    )
    results, _ = await run_case(page, server, case)
    native = results["native"]

    def shape(kind: str, message: bool) -> dict[str, Any]:
        return {
            "kind": f"[object {kind}]",
            "isEvent": True,
            "isMessageEvent": message,
            "bubbles": False,
            "cancelable": False,
            "defaultPrevented": False,
            "eventPhase": 2,  # AT_TARGET, while listeners run
            "target": True,
            "currentTarget": True,
            "srcElement": True,
        }

    assert [(e["type"], e["shape"], e["afterDispatch"]) for e in native["log"]] == [
        (type, shape(kind, kind == "MessageEvent"), {"currentTarget": True, "eventPhase": 0})
        for type, kind in [
            ("open", "Event"),
            ("message", "MessageEvent"),
            ("custom", "MessageEvent"),
            ("error", "Event"),  # the end of the stream
            ("error", "Event"),  # the 204 then
        ]
    ]
    assert {e["origin"] for e in native["log"] if "data" in e} == {server.url}
    for client in ("fetch", "xhr"):
        assert as_native(results[client]["log"]) == as_native(native["log"]), client


UNPARSEABLE_URLS = ["http://[", "https://300.1.1.1/", "http://x:99999/", "//["]

CONSTRUCT_PROBE = """async ([client, urls]) => {
  const win = await windowFor(client);
  const Client = await constructorFor(client);
  return urls.map((url) => {
    try {
      new Client(url).close();
      return null;
    } catch (error) {
      return {
        kind: Object.prototype.toString.call(error),
        isDOMException: error instanceof win.realm.DOMException,
        name: error.name,
        code: error.code,
        namesTheUrl: error.message.includes(url),
      };
    }
  });
}"""


async def test_unparseable_url_throws_a_syntax_error_as_eventsources(
    page: Page, server: StreamServer
) -> None:
    """`new EventSource('http://[')` throws a SyntaxError DOMException."""
    urls = [*UNPARSEABLE_URLS, server.new_run(Case("parseable", [NO_CONTENT]), "any")]
    thrown = {client: await page.evaluate(CONSTRUCT_PROBE, [client, urls]) for client in CLIENTS}
    syntax_error = {
        "kind": "[object DOMException]",
        "isDOMException": True,
        "name": "SyntaxError",
        "code": 12,  # SYNTAX_ERR
        "namesTheUrl": True,
    }
    assert thrown["native"] == [syntax_error] * len(UNPARSEABLE_URLS) + [None]
    assert thrown["fetch"] == thrown["native"]
    assert thrown["xhr"] == thrown["native"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def min_page(chromium: Browser, server: StreamServer) -> AsyncIterator[Page]:  # noqa: F811
    page = await open_runner(await chromium.new_context(), server, "?build=min")
    yield page
    await page.context.close()


@pytest.mark.parametrize(
    "case",
    [case for case in CASES if case.name in ("kitchen-sink-random1", "reconnect", "status-500")],
    ids=lambda case: case.name,
)
async def test_minified_build_conforms(min_page: Page, server: StreamServer, case: Case) -> None:
    results, requests = await run_case(min_page, server, case)
    assert messages(results["native"]) == case.expect
    for client in ("fetch", "xhr"):
        assert as_native(results[client]["log"]) == as_native(results["native"]["log"]), client
        assert request_view(requests[client]) == request_view(requests["native"]), client


API_PROBE = """async ([client, url, otherUrl]) => {
  const Client = await constructorFor(client);
  const source = new Client(url);
  const credentialed = new Client(otherUrl, { withCredentials: true });
  credentialed.close();
  const seen = [];
  const result = {
    constants: [Client.CONNECTING, Client.OPEN, Client.CLOSED,
                source.CONNECTING, source.OPEN, source.CLOSED],
    url: source.url,
    withCredentials: [source.withCredentials, credentialed.withCredentials],
    readyStates: [source.readyState, credentialed.readyState],
  };
  await new Promise((resolve) => {
    source.onopen = (e) => seen.push(`onopen ${e.type} ${source.readyState}`);
    source.onmessage = function (e) { seen.push(`onmessage ${e.data} ${this === source}`); };
    const removed = () => seen.push('removed listener called');
    source.addEventListener('message', removed);
    source.removeEventListener('message', removed);
    source.addEventListener('message', () => { throw new Error('a failing listener'); });
    source.addEventListener('message', { handleEvent(e) {
      seen.push(`handleEvent ${e.data} ${e.type}`);
      source.close();
      resolve();
    } });
  });
  source.addEventListener('custom', (e) => {
    seen.push(`custom ${e.type} ${e.target === source} ${e.eventPhase}`);
    e.stopImmediatePropagation();
  });
  source.addEventListener('custom', () => seen.push('stopped listener called'));
  result.dispatched = source.dispatchEvent(new Event('custom'));
  source.addEventListener('cancel', (e) => e.preventDefault());
  result.cancelled = source.dispatchEvent(new Event('cancel', { cancelable: true }));
  result.seen = seen;
  result.closedState = source.readyState;
  return result;
}"""


async def test_api_is_eventsources(new_context: NewContext, server: StreamServer) -> None:  # noqa: F811
    """Constants, url, withCredentials, readyState, on* handlers, listeners as functions or
    objects, removal, dispatchEvent (stopImmediatePropagation, preventDefault), a throwing
    listener: as the native EventSource."""
    page = await open_runner(await new_context(), server)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(error.message))
    case = Case("api", [stream("data: a\n\n", hold=2.0)])
    results = {}
    for client in CLIENTS:
        url = server.new_run(case, client)
        relative = url.removeprefix(server.url + "/")
        other = server.new_run(case, client).removeprefix(server.url + "/")
        results[client] = await page.evaluate(API_PROBE, [client, relative, other])
        assert results[client].pop("url") == url
    # The failing listener's error, reported as an uncaught one: the iframe's (xhr) not seen here.
    assert errors == ["a failing listener", "a failing listener"]
    assert results["native"]["seen"] == [
        "onopen open 1",
        "onmessage a true",
        "handleEvent a message",
        "custom custom true 2",
    ]
    assert results["native"]["cancelled"] is False
    assert results["fetch"] == results["native"]
    assert results["xhr"] == results["native"]


# --- What EventSource lacks ------------------------------------------------------------------

SSE_CLIENTS = ("fetch", "xhr")


def timeline(result: dict[str, Any], *fields: str) -> list[tuple[Any, ...]]:
    """The log as (type, readyState, *fields) tuples."""
    return [(e["type"], e["readyState"], *(e.get(f) for f in fields)) for e in result["log"]]


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_headers_method_and_body_reach_the_server(
    page: Page, server: StreamServer, client: str
) -> None:
    case = Case("post", [stream("id: 1\ndata: a\n\n")])
    options = {
        "method": "POST",
        "body": '{"room": "lobby"}',
        "headers": {"Authorization": "Bearer s3cret", "X-Client": "test"},
    }
    results, requests = await run_case(page, server, case, [client], options)
    assert messages(results[client]) == [message("a", "1")]
    assert [r.last_event_id for r in requests[client]] == [None, "1"]  # also on reconnection
    for request in requests[client]:
        assert request.method == "POST"
        assert request.body == b'{"room": "lobby"}'
        assert request.headers["authorization"] == "Bearer s3cret"
        assert request.headers["x-client"] == "test"
        assert request.headers["accept"] == "text/event-stream"


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_initial_last_event_id_is_sent(page: Page, server: StreamServer, client: str) -> None:
    case = Case("resume", [stream("id: 42\ndata: a\n\n")])
    results, requests = await run_case(page, server, case, [client], {"lastEventId": "41"})
    assert messages(results[client]) == [message("a", "42")]
    assert [r.last_event_id for r in requests[client]] == ["41", "42"]


def authorizations(requests: list[Request]) -> list[str | None]:
    return [r.headers.get("authorization") for r in requests]


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_headers_function_is_called_before_every_request(
    page: Page, server: StreamServer, client: str
) -> None:
    """So that a token can change between reconnections. One that throws fails that attempt as
    a lost connection does: error, then a retry."""
    case = Case("headers-function", [stream("id: 1\ndata: a\n\n"), DROP], types=("retry",))
    headers = """
      if (n === 3) throw new Error('no token yet');
      return { Authorization: 'Bearer token-' + n };
    """
    results, requests = await run_case(page, server, case, [client], {"headers": headers})
    assert timeline(results[client], "attempt", "data") == [
        ("open", 1, None, None),
        ("message", 1, None, "a"),
        ("error", 0, None, None),  # the end of the stream
        ("retry", 0, 1, None),
        ("error", 0, None, None),  # the dropped connection
        ("retry", 0, 2, None),
        ("error", 0, None, None),  # the headers function threw
        ("retry", 0, 3, None),
        ("error", 2, None, None),  # the 204
    ]
    assert authorizations(requests[client]) == [f"Bearer token-{n}" for n in (1, 2, 4)]
    assert [r.last_event_id for r in requests[client]] == [None, "1", "1"]


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_headers_function_may_return_a_promise(
    page: Page, server: StreamServer, client: str
) -> None:
    """E.g. of a token being refreshed: the request waits for it. A rejected one fails the
    attempt as a lost connection does; one that never settles counts as a stall."""
    case = Case("headers-promise", [stream("data: a\n\n")], types=("retry",))
    headers = """
      if (n === 2) return new Promise(function () {});
      return new Promise(function (resolve, reject) {
        setTimeout(function () {
          if (n === 3) reject(new Error('refresh failed'));
          else resolve({ Authorization: 'Bearer token-' + n });
        }, 50);
      });
    """
    options = {"headers": headers, "heartbeatTimeout": 300, "retryDelay": 20}
    results, requests = await run_case(page, server, case, [client], options)
    assert timeline(results[client], "attempt", "data") == [
        ("open", 1, None, None),
        ("message", 1, None, "a"),
        ("error", 0, None, None),  # the end of the stream
        ("retry", 0, 1, None),
        ("error", 0, None, None),  # no headers within the heartbeat timeout
        ("retry", 0, 2, None),
        ("error", 0, None, None),  # rejected
        ("retry", 0, 3, None),
        ("error", 2, None, None),  # the 204
    ]
    assert authorizations(requests[client]) == ["Bearer token-1", "Bearer token-4"]


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_close_while_waiting_for_headers_sends_nothing(
    page: Page, server: StreamServer, client: str
) -> None:
    case = Case("headers-pending", [stream("data: a\n\n")], timeout=0.3)
    headers = "return new Promise(function (resolve) { setTimeout(resolve, 400, {}); });"
    results, requests = await run_case(page, server, case, [client], {"headers": headers})
    await asyncio.sleep(0.3)  # past the promise, resolved after close()
    assert results[client]["log"] == []
    assert requests[client] == []


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_backoff_grows_and_is_capped(page: Page, server: StreamServer, client: str) -> None:
    case = Case("backoff", [DROP] * 6, types=("retry",))
    options = {"retryDelay": 50, "backoff": 2, "maxRetryDelay": 300}
    results, requests = await run_case(page, server, case, [client], options)
    assert timeline(results[client], "attempt", "delay") == [
        *(
            step
            for attempt, delay in enumerate([50, 100, 200, 300, 300, 300], 1)
            for step in [("error", 0, None, None), ("retry", 0, attempt, delay)]
        ),
        ("error", 2, None, None),  # the 204 after them
    ]
    # late by up to half a second on a loaded machine; uncapped, the sixth would wait 1.6 s
    for gap, delay in zip(gaps(requests[client]), [50, 100, 200, 300, 300, 300], strict=True):
        assert delay / 1000 - 0.005 <= gap <= delay / 1000 + 0.5


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_backoff_restarts_after_an_open(
    page: Page, server: StreamServer, client: str
) -> None:
    case = Case(
        "backoff-reset", [DROP, DROP, stream("data: a\n\n", retry=False), DROP], types=("retry",)
    )
    options = {"retryDelay": 50, "backoff": 2}
    results, _ = await run_case(page, server, case, [client], options)
    retries = [(e["attempt"], e["delay"]) for e in results[client]["log"] if e["type"] == "retry"]
    assert retries == [(1, 50), (2, 100), (1, 50), (2, 100)]


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_jitter_shortens_delays_at_random(
    page: Page, server: StreamServer, client: str
) -> None:
    case = Case("jitter", [DROP] * 6, types=("retry",))
    results, _ = await run_case(page, server, case, [client], {"retryDelay": 100, "jitter": 0.5})
    delays = [e["delay"] for e in results[client]["log"] if e["type"] == "retry"]
    assert len(delays) == 6
    assert all(50 <= delay <= 100 for delay in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_retry_on_server_error(page: Page, server: StreamServer, client: str) -> None:
    case = Case(
        "server-errors",
        [stream("", status=503), stream("", status=502), stream("data: a\n\n")],
        types=("retry",),
    )
    options = {"retryOnServerError": True, "retryDelay": 20}
    results, requests = await run_case(page, server, case, [client], options)
    assert timeline(results[client], "status", "data") == [
        ("error", 0, 503, None),
        ("retry", 0, None, None),
        ("error", 0, 502, None),
        ("retry", 0, None, None),
        ("open", 1, None, None),
        ("message", 1, None, "a"),
        ("error", 0, None, None),
        ("retry", 0, None, None),
        ("error", 2, 204, None),
    ]
    assert len(requests[client]) == 4


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_max_retries_gives_up(page: Page, server: StreamServer, client: str) -> None:
    case = Case("max-retries", [DROP] * 10, types=("retry",))
    options = {"retryDelay": 20, "maxRetries": 2}
    results, requests = await run_case(page, server, case, [client], options)
    assert timeline(results[client], "attempt") == [
        ("error", 0, None),
        ("retry", 0, 1),
        ("error", 0, None),
        ("retry", 0, 2),
        ("error", 2, None),
    ]
    assert len(requests[client]) == 3


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_heartbeat_timeout_reconnects_a_stalled_stream(
    page: Page, server: StreamServer, client: str
) -> None:
    case = Case(
        "stall",
        [stream("id: 1\ndata: a\n\n", hold=3.0), stream("id: 2\ndata: b\n\n", hold=3.0)],
        stop_after=2,
    )
    results, requests = await run_case(page, server, case, [client], {"heartbeatTimeout": 300})
    assert timeline(results[client], "data") == [
        ("open", 1, None),
        ("message", 1, "a"),
        ("error", 0, None),
        ("open", 1, None),
        ("message", 1, "b"),
    ]
    first, second = requests[client]
    assert first.disconnected  # the client aborted the stalled request
    assert second.last_event_id == "1"
    assert 0.3 <= second.time - first.time <= 1.0


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_heartbeat_timeout_spares_a_stream_with_comments(
    page: Page, server: StreamServer, client: str
) -> None:
    # 0.9 s between the two events, with a comment every 0.1 s.
    case = Case(
        "keepalive", [stream("data: a\n\n", *[":\n"] * 8, "data: b\n\n", pause=0.1)], stop_after=2
    )
    results, requests = await run_case(page, server, case, [client], {"heartbeatTimeout": 600})
    assert messages(results[client]) == [message("a"), message("b")]
    assert len(requests[client]) == 1


@pytest.mark.parametrize("client", SSE_CLIENTS)
async def test_empty_retry_field_is_ignored(page: Page, server: StreamServer, client: str) -> None:
    """WHATWG: a retry field of anything but digits is ignored. Chromium's own EventSource
    resets the delay to its default (3 s) on an empty one instead."""
    case = Case("retry-empty-ignored", [stream("retry:\ndata: a\n\n")])
    _, requests = await run_case(page, server, case, [client])
    assert gaps(requests[client]) < [1.0]


async def test_xhr_fallback_bounds_memory_by_resuming(page: Page, server: StreamServer) -> None:
    """Past xhrResponseLimit characters, the XHR fallback restarts its request at the next
    event boundary and resumes by Last-Event-ID: no event lost or repeated."""
    limit, total = 20_000, 2_000
    case = Case("xhr-memory", numbered(total), summary=True)
    results, requests = await run_case(page, server, case, ["xhr"], {"xhrResponseLimit": limit})
    assert results["xhr"]["summary"] == numbered_summary(total)
    assert [e["type"] for e in results["xhr"]["log"]] == ["open", "error", "error"]
    resumed_from = [int(r.last_event_id or 0) for r in requests["xhr"]]
    assert resumed_from[-1] == total  # the reconnection after the end, answered with 204
    # Each response was read up to the first event that ended past the limit, then cut.
    longest_event = len(numbered_event(total))
    read = [
        len(RETRY) + sum(len(numbered_event(i)) for i in range(start + 1, end + 1))
        for start, end in pairwise(resumed_from)
    ]
    assert all(limit < length <= limit + longest_event for length in read[:-1]), read
    assert read[-1] <= limit + longest_event, read


# --- The build -------------------------------------------------------------------------------


def require_node() -> None:
    if shutil.which("node") and shutil.which("npm"):
        return
    reason = "node and npm are needed to build frontend/"
    if os.environ.get("CI") or os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def run_in(directory: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """frontend/ without node_modules and dist, after `npm ci` and `npm run build` (the client
    library and the pages)."""
    require_node()
    work = tmp_path_factory.mktemp("frontend")
    shutil.copytree(
        FRONTEND, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules", "dist")
    )
    for command in [("npm", "ci", "--no-audit", "--no-fund"), ("npm", "run", "build")]:
        done = run_in(work, *command)
        assert done.returncode == 0, done.stdout + done.stderr
    return work


def test_dist_is_a_fresh_build(fresh_build: Path) -> None:
    def files(dist: Path) -> dict[str, bytes]:
        return {str(p.relative_to(dist)): p.read_bytes() for p in dist.rglob("*") if p.is_file()}

    committed, built = files(FRONTEND / "dist"), files(fresh_build / "dist")
    assert sorted(committed) == sorted(built), "frontend/dist holds other files than the build"
    for name, content in built.items():
        assert committed[name] == content, (
            f"frontend/dist/{name} is not what the sources build: run `npm run build` in frontend/"
        )


def test_dist_is_es5(fresh_build: Path, tmp_path: Path) -> None:
    """The UMD builds are ES5, and so is the ES module but for its export."""
    acorn = fresh_build / "node_modules" / ".bin" / "acorn"
    es2015 = tmp_path / "es2015.js"
    es2015.write_text("let double = (x) => x * 2;\n")
    assert run_in(fresh_build, str(acorn), "--ecma5", "--silent", str(es2015)).returncode != 0
    module = (FRONTEND / "dist" / "sse-client.mjs").read_text()
    assert module.count("export ") == 1
    module_body = tmp_path / "module-body.js"
    module_body.write_text(module.replace("export default SSEClient;", ""))
    for path in [FRONTEND / "dist" / "sse-client.js", FRONTEND / "dist" / "sse-client.min.js"]:
        done = run_in(fresh_build, str(acorn), "--ecma5", "--silent", str(path))
        assert done.returncode == 0, (path, done.stderr)
    done = run_in(fresh_build, str(acorn), "--ecma5", "--silent", str(module_body))
    assert done.returncode == 0, done.stderr


def test_minified_gzipped_size_is_within_budget() -> None:
    minified = (FRONTEND / "dist" / "sse-client.min.js").read_bytes()
    assert len(gzip.compress(minified, compresslevel=9)) <= 4096


UMD_PROBE = """
const assert = require('assert');
const vm = require('vm');
const file = process.argv[1];
const code = require('fs').readFileSync(file, 'utf8');
assert.strictEqual(require(file).CLOSED, 2, 'CommonJS');
let defined;
const amd = { define: Object.assign((deps, factory) => { defined = factory(); }, { amd: {} }) };
vm.runInNewContext(code, amd);
assert.strictEqual(defined.CLOSED, 2, 'AMD');
const browser = { self: {} };
vm.runInNewContext(code, browser);
assert.strictEqual(browser.self.SSEClient.CLOSED, 2, 'browser global');
"""


@pytest.mark.parametrize("name", ["sse-client.js", "sse-client.min.js"])
def test_umd_exports(name: str) -> None:
    require_node()
    done = run_in(FRONTEND, "node", "-e", UMD_PROBE, str(FRONTEND / "dist" / name))
    assert done.returncode == 0, done.stderr


# --- The npm package ---------------------------------------------------------------------------

PACKAGE = "@streaming-message/sse-client"
PACKED_FILES = {
    "package.json",
    "README.md",
    "LICENSE",
    *(
        f"dist/sse-client.{suffix}"
        for suffix in ("js", "js.map", "min.js", "min.js.map", "mjs", "mjs.map", "d.ts", "d.mts")
    ),
}

# Each runs in Node, whose fetch streams: a message from a loopback stream, a SyntaxError for
# a URL it can't parse.
USE_IN_NODE = """
const server = http.createServer((request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/event-stream' });
  response.end('id: 1\\ndata: hello\\n\\n');
});
server.listen(0, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${server.address().port}/`;
  assert.throws(() => new SSEClient('http://['), { name: 'SyntaxError' });
  const source = new SSEClient(url, { headers: () => Promise.resolve({ 'X-Token': 't' }) });
  source.onmessage = (event) => {
    assert.ok(event instanceof MessageEvent);
    assert.deepStrictEqual([event.data, event.lastEventId], ['hello', '1']);
    assert.strictEqual(event.origin, new URL(url).origin);
    source.close();
    server.close();
    console.log('ok');
  };
});
"""
SCRATCH_FILES = {
    "package.json": '{"name": "scratch", "private": true}\n',
    "use.cjs": f"""const assert = require('node:assert');
const http = require('node:http');
const SSEClient = require('{PACKAGE}');
assert.ok(require.resolve('{PACKAGE}').endsWith('/dist/sse-client.js'));
assert.strictEqual(require('{PACKAGE}/package.json').name, '{PACKAGE}');
{USE_IN_NODE}""",
    "use.mjs": f"""import assert from 'node:assert';
import http from 'node:http';
import SSEClient from '{PACKAGE}';
assert.ok(import.meta.resolve('{PACKAGE}').endsWith('/dist/sse-client.mjs'));
{USE_IN_NODE}""",
    # The typings, under require and under import: real types (a wrong option is an error).
    "types.cts": f"""import SSEClient = require('{PACKAGE}');
""",
    "types.mts": f"""import SSEClient from '{PACKAGE}';
""",
    "tsconfig.json": """{
  "compilerOptions": {
    "module": "nodenext",
    "strict": true,
    "noEmit": true,
    "lib": ["ES2020", "DOM"],
    "types": []
  },
  "files": ["types.cts", "types.mts"]
}
""",
}
TYPED_USE = """const options: SSEClient.Options = {
  headers: () => Promise.resolve({ Authorization: 'Bearer token' }),
  backoff: 2,
};
const source: SSEClient = new SSEClient('https://example.com/events', options);
source.onmessage = (event) => {
  const data: string = event.data;
  const target: SSEClient = event.target;
  const isEvent: Event = event;
  console.log(data, target, isEvent);
};
source.addEventListener('retry', (event) => console.log(event.attempt + event.delay));
// @ts-expect-error: headers are strings
new SSEClient('/events', { headers: { Authorization: 42 } });
"""


def test_npm_package_installs_and_imports_both_ways(fresh_build: Path, tmp_path: Path) -> None:
    """`npm pack` (its prepack builds and checks: ES5, publint, attw), the tarball holds the
    package's files and nothing else, and a scratch project that installs it uses it with
    require and with import, in Node and in TypeScript."""
    packed = run_in(fresh_build, "npm", "pack", "--json", "--pack-destination", str(tmp_path))
    assert packed.returncode == 0, packed.stdout + packed.stderr
    assert "No problems found" in packed.stdout  # attw
    (summary,) = json.loads(packed.stdout[packed.stdout.index("[\n") :])
    assert {f["path"] for f in summary["files"]} == PACKED_FILES
    tarball = tmp_path / summary["filename"]
    with tarfile.open(tarball) as archive:
        for name in PACKED_FILES - {"package.json", "README.md", "LICENSE"}:
            content = archive.extractfile(f"package/{name}").read()  # type: ignore[union-attr]
            assert content == (FRONTEND / name).read_bytes(), f"{name} differs from the commit"

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name, text in SCRATCH_FILES.items():
        (scratch / name).write_text(text + (TYPED_USE if name.startswith("types.") else ""))
    done = run_in(scratch, "npm", "install", "--offline", "--no-audit", "--no-fund", str(tarball))
    assert done.returncode == 0, done.stdout + done.stderr
    for script in ("use.cjs", "use.mjs"):
        done = run_in(scratch, "node", script)
        assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
    done = run_in(scratch, str(fresh_build / "node_modules" / ".bin" / "tsc"), "-p", ".")
    assert done.returncode == 0, done.stdout + done.stderr
