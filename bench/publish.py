"""The publisher side of the load generator: closed-loop HTTP/1.1 clients on keep-alive sockets."""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request, then its whole response, in turn.

    A bare protocol rather than asyncio streams: half the load generator's CPU per request.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answer: asyncio.Future | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> int:
        """Send one request and return the response's status code (its body is discarded)."""
        loop = asyncio.get_running_loop()
        if self.transport is None:
            await loop.create_connection(lambda: self, self.host, self.port)
        self.answer = loop.create_future()
        self.transport.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return await self.answer

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[: end + 2].lower()  # each header line with its \r\n
        length = head.find(b"content-length:")
        if length < 0:
            self.fail(ValueError("a response without Content-Length"))
            return
        body_end = end + 4 + int(head[length + 15 : head.index(b"\r\n", length)])
        if len(self.buffer) < body_end:
            return
        self.buffer = self.buffer[body_end:]
        if b"connection: close" in head:
            self.close()
        self.answer.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(exc or ConnectionResetError("the server closed the connection"))

    def fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


@dataclass
class PublishResult:
    accepted_per_room: Counter = field(default_factory=Counter)  # messages answered with 2xx
    statuses: Counter = field(default_factory=Counter)  # requests per status code
    errors: list[str] = field(default_factory=list)
    first_send_us: int = 0
    last_answer_us: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def accepted(self) -> int:
        return sum(self.accepted_per_room.values())

    @property
    def rejected_requests(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


async def publish(
    hub,
    host: str,
    port: int,
    jobs: list[tuple[str, int]],
    publishers: int,
    within_s: float,
    interval_s: float = 0,
) -> PublishResult:
    """Send the jobs, (room, messages per request) pairs, from `publishers` concurrent clients.

    Each client sends its next request as soon as the previous one is answered (closed loop),
    or, with `interval_s`, job n not before n × interval_s from the start (paced: low load).
    Every message carries a sequence number and the send time in µs as `bench_t`. No request
    starts after `within_s` seconds: a slow hub is measured on the jobs it got through.
    """
    result = PublishResult()
    queue = iter(enumerate(jobs))
    started = time.monotonic()
    deadline = started + within_s

    async def client() -> None:
        connection = HttpConnection(host, port)
        try:
            for sequence, (room, count) in queue:
                if interval_s:
                    await asyncio.sleep(started + sequence * interval_s - time.monotonic())
                if time.monotonic() > deadline:
                    break
                path, body = hub.publish_request(room, sequence, count, time.monotonic_ns() // 1000)
                status = await connection.request("POST", path, body, hub.publish_headers)
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.accepted_per_room[room] += count
        except (OSError, ValueError) as error:
            result.errors.append(repr(error))
        finally:
            connection.close()

    result.first_send_us = time.monotonic_ns() // 1000
    await asyncio.gather(*(client() for _ in range(publishers)))
    result.last_answer_us = time.monotonic_ns() // 1000
    return result
