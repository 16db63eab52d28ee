"""What one publish's HTTP/1.1 costs in the parser each server uses, in-process, no socket:
h11 (Hypercorn's: parse the request, serialize the 202) against httptools (uvicorn's: parse
the request; the head joined by hand, as uvicorn does). Also one SSE chunk through h11.

Usage: bench/.venv/bin/python bench/http_parse_cost.py
"""

import time

import h11
import httptools

REQUEST = (
    b"POST /api/v1/send HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer bench-token\r\nContent-Length: 90\r\n\r\n" + b"x" * 90
)
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"180"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"date", b"Tue, 01 Dec 2026 23:50:48 GMT"),
]
REPLY = b"y" * 180
ROUNDS = 20_000


def h11_publish(connection: h11.Connection) -> bytes:
    connection.receive_data(REQUEST)
    while type(connection.next_event()) is not h11.EndOfMessage:
        pass
    reply = connection.send(h11.Response(status_code=202, headers=HEADERS))
    reply += connection.send(h11.Data(data=REPLY)) + connection.send(h11.EndOfMessage())
    connection.start_next_cycle()
    return reply


class Request:
    """httptools' callbacks: what uvicorn's protocol keeps of a request."""

    def on_url(self, url: bytes) -> None:
        self.url, self.headers, self.body = url, [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


def httptools_publish(parser: httptools.HttpRequestParser) -> bytes:
    parser.feed_data(REQUEST)
    head = b"".join([b"HTTP/1.1 202 Accepted\r\n", *(b"%s: %s\r\n" % h for h in HEADERS)])
    return head + b"\r\n" + REPLY


def per_call_us(call, *args) -> float:
    started = time.process_time()
    for _ in range(ROUNDS):
        call(*args)
    return (time.process_time() - started) / ROUNDS * 1e6


def main() -> None:
    stream = h11.Connection(h11.SERVER)
    stream.receive_data(b"GET /api/v1/events/lobby HTTP/1.1\r\nHost: a\r\n\r\n")
    stream.next_event()
    stream.send(h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")]))
    figures = {
        "h11: a publish's request and 202": per_call_us(h11_publish, h11.Connection(h11.SERVER)),
        "httptools: the same": per_call_us(
            httptools_publish, httptools.HttpRequestParser(Request())
        ),
        "h11: one SSE chunk": per_call_us(stream.send, h11.Data(data=REPLY)),
    }
    for name, us in figures.items():
        print(f"{name:<36} {us:7.1f} µs CPU")


if __name__ == "__main__":
    main()
