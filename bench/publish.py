"""The publisher side of the load generator: closed-loop HTTP/1.1 clients on keep-alive sockets."""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole response, in turn."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> int:
        """Send one request and return the response's status code (its body is discarded)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head[9:12])
        if b"transfer-encoding: chunked" in head:
            while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")
        elif (start := head.find(b"content-length:")) >= 0:
            await self.reader.readexactly(int(head[start + 15 : head.index(b"\r\n", start)]))
        if b"connection: close" in head:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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


async def publish(hub, host: str, port: int, jobs: list[tuple[str, int]], publishers: int):
    """Send every job, a (room, messages per request) pair, from `publishers` concurrent clients.

    Each client sends its next request as soon as the previous one is answered (closed loop).
    Every message carries a sequence number and the send time in µs as `bench_t`.
    """
    result = PublishResult()
    queue = iter(enumerate(jobs))

    async def client() -> None:
        connection = HttpConnection(host, port)
        try:
            for sequence, (room, count) in queue:
                path, body = hub.publish_request(room, sequence, count, time.monotonic_ns() // 1000)
                status = await connection.request("POST", path, body, hub.publish_headers)
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.accepted_per_room[room] += count
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            result.errors.append(repr(error))
        finally:
            connection.close()

    result.first_send_us = time.monotonic_ns() // 1000
    await asyncio.gather(*(client() for _ in range(publishers)))
    result.last_answer_us = time.monotonic_ns() // 1000
    return result
