"""The subscriber side of the load generator: thousands of raw-socket SSE readers in one process.

It runs in a process of its own (on the load generator's CPU) and obeys commands sent over a
pipe by the suite. A subscriber writes one GET, checks the status line and from then on only
counts: a message is a line carrying the bench marker `"bench_t":<µs>` that the publisher put
in the message's data. Counting whole lines makes the count immune to reads that split a
message, to chunked-encoding framing and to comment or `event:` frames (keepalives, hellos),
which never carry the marker. The marker's timestamp gives the delivery latency.
"""

import asyncio
import contextlib
import math
import os
import re
import time
from multiprocessing.connection import Connection

import uvloop

MARKER = re.compile(rb'"bench_t": ?(\d+)')


def now_us() -> int:
    # CLOCK_MONOTONIC is one clock for all processes of the machine, so the publisher's
    # timestamps and ours compare directly.
    return time.monotonic_ns() // 1000


class Subscriber(asyncio.Protocol):
    def __init__(
        self,
        fleet: "Fleet",
        rooms: list[str],
        request: bytes,
        ready: asyncio.Future,
        subscribed_after: bytes | None,
    ):
        self.fleet = fleet
        self.rooms = rooms  # one, or several in one stream
        self.request = request
        self.ready = ready
        self.head = b""  # response head while it is incomplete, then None
        self.subscribed_after = subscribed_after  # awaited (once a room) after the head
        self.preface = b""  # the stream before `subscribed_after`
        self.partial_line = b""
        self.received = 0
        self.expected = math.inf
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = self.head[: self.head.find(b"\r\n")]
            data, self.head = self.head[end + 4 :], None
            if status_line.split()[1:2] != [b"200"]:
                self.ready.set_result(status_line.decode(errors="replace"))
                self.close()
                return
        if self.subscribed_after is not None:
            self.preface += data
            if self.preface.count(self.subscribed_after) < len(self.rooms):  # one per room
                return
            data = self.preface  # may hold messages already: they count
            self.subscribed_after, self.preface = None, b""
        if not self.ready.done():
            self.fleet.subscribers.append(self)
            self.ready.set_result(None)
        lines = self.partial_line + data
        cut = lines.rfind(b"\n") + 1
        self.partial_line = lines[cut:]
        stamps = MARKER.findall(lines, 0, cut)
        if stamps:
            self.fleet.delivered(self, stamps)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(f"closed before it was subscribed: {exc!r}")
        elif not self.closing:
            self.fleet.dropped += 1

    def close(self) -> None:
        self.closing = True
        self.transport.close()


class Fleet:
    """All subscribers of one run, their counts and when what they received arrived."""

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []
        self.arrivals: list[tuple[int, list[bytes]]] = []  # (µs, publish stamps) per read
        self.last_delivery_us = 0
        self.dropped = 0
        self.waiting = 0  # subscribers that have not yet received what they expect
        self.all_arrived = asyncio.Event()

    def delivered(self, subscriber: Subscriber, stamps: list[bytes]) -> None:
        now = self.last_delivery_us = now_us()
        self.arrivals.append((now, stamps))  # latencies are worked out after the run
        before = subscriber.received
        subscriber.received += len(stamps)
        if before < subscriber.expected <= subscriber.received:
            self.waiting -= 1
            if self.waiting == 0:
                self.all_arrived.set()

    async def connect(
        self, host: str, port: int, subscriptions, concurrency: int, subscribed_after: bytes | None
    ) -> dict:
        """Open one subscription per (rooms, path), at most `concurrency` handshakes at a time;
        each is connected once its hub's `subscribed_after` came (None: at the head)."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)

        async def subscribe(rooms: list[str], path: str) -> str | None:
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            ).encode()
            async with gate:
                ready = loop.create_future()
                try:
                    await loop.create_connection(
                        lambda: Subscriber(self, rooms, request, ready, subscribed_after),
                        host,
                        port,
                    )
                except OSError as error:
                    return repr(error)
                return await ready

        start = time.monotonic()
        outcomes = await asyncio.gather(*(subscribe(rooms, path) for rooms, path in subscriptions))
        failures = [outcome for outcome in outcomes if outcome]
        return {
            "connected": len(self.subscribers),
            "failed": len(failures),
            "failure_sample": failures[:3],
            "connect_s": time.monotonic() - start,
        }

    def reset(self) -> None:
        for subscriber in self.subscribers:
            subscriber.received, subscriber.expected = 0, math.inf
        self.arrivals.clear()
        self.last_delivery_us = 0

    async def await_messages(self, expected_per_room: dict[str, int], timeout: float) -> dict:
        """Wait until every subscriber has its rooms' expected count, or the timeout."""
        self.waiting = 0
        self.all_arrived.clear()
        for subscriber in self.subscribers:
            subscriber.expected = sum(expected_per_room.get(room, 0) for room in subscriber.rooms)
            self.waiting += subscriber.received < subscriber.expected
        if self.waiting:
            with contextlib.suppress(TimeoutError):  # the summary tells what is missing
                await asyncio.wait_for(self.all_arrived.wait(), timeout)
        return self.summary()

    def summary(self) -> dict:
        received = sum(s.received for s in self.subscribers)
        expected = sum(s.expected for s in self.subscribers)
        latencies = sorted(now - int(stamp) for now, stamps in self.arrivals for stamp in stamps)

        def percentile(p: float) -> float | None:
            return (
                latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1000
                if latencies
                else None
            )

        return {
            "expected": expected,
            "received": received,
            "lost": sum(max(0, s.expected - s.received) for s in self.subscribers),
            "extra": sum(max(0, s.received - s.expected) for s in self.subscribers),
            "dropped": self.dropped,
            "last_delivery_us": self.last_delivery_us,
            "latency_ms": {"p50": percentile(0.5), "p99": percentile(0.99), "max": percentile(1.0)},
        }

    def close(self) -> None:
        for subscriber in self.subscribers:
            subscriber.close()


async def readable(pipe: Connection) -> None:
    """Wait, without blocking the event loop, until the pipe has something to read."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(pipe.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(pipe.fileno())
        # The loop made the socket non-blocking; Connection.recv()/send() need it blocking.
        os.set_blocking(pipe.fileno(), True)


async def obey(pipe: Connection) -> None:
    """Run the commands the suite sends until it says close; answer each one."""
    fleet = Fleet()
    while True:
        await readable(pipe)
        command, arguments = pipe.recv()
        if command == "connect":
            pipe.send(await fleet.connect(**arguments))
        elif command == "await":
            pipe.send(await fleet.await_messages(**arguments))
        elif command == "reset":
            fleet.reset()
            pipe.send(None)
        elif command == "close":
            fleet.close()
            await asyncio.sleep(0.1)  # let the transports close
            pipe.send(None)
            return


def main(pipe: Connection) -> None:
    """Entry point of the subscriber process."""
    uvloop.run(obey(pipe))
