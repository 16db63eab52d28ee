"""The subscriber's counting, fed byte streams as the hubs send them, split every way.

Run: bench/.venv/bin/python -m pytest bench (not part of the project's test suite).
"""

import asyncio

import pytest
from subscribers import Fleet, Subscriber

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
HELLO = b'retry: 3000\nevent: meta\ndata: {"room":"r","gap":false}\n\n'


def message(n: int, stamp: int) -> bytes:
    payload = b'{"id":%d,"room":"r","speaker":"s","data":{"seq":%d,"bench_t":%d},"meta":null}'
    return b"id: %d\ndata: %s\n\n" % (n, payload % (n, n, stamp))


def chunked(*parts: bytes) -> bytes:
    """HTTP/1.1 chunked framing, one chunk per part, as Hypercorn and uvicorn send."""
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)


class Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def subscribe(
    loop, stream: bytes, pieces: list[int], subscribed_after: bytes | None = None
) -> tuple[Fleet, Subscriber]:
    """Feed `stream` to a new subscriber, cut at the offsets in `pieces`."""
    fleet = Fleet()
    subscriber = Subscriber(fleet, ["r"], b"GET", loop.create_future(), subscribed_after)
    subscriber.connection_made(Transport())
    for start, end in zip([0, *pieces], [*pieces, len(stream)], strict=True):
        subscriber.data_received(stream[start:end])
    return fleet, subscriber


@pytest.mark.parametrize("subscribed_after", [None, b"event: meta"])
@pytest.mark.parametrize("framing", ["chunked", "plain"])
def test_counts_messages_only_however_the_reads_split(loop, framing, subscribed_after):
    frames = [HELLO, message(1, 100), b":\n\n", message(2, 200), b"event: presence\ndata: {}\n\n"]
    body = chunked(*frames) if framing == "chunked" else b"".join(frames)
    stream = HEAD + body
    for cut in range(1, len(stream)):
        fleet, subscriber = subscribe(loop, stream, [cut], subscribed_after)
        assert subscriber.received == 2, cut
        assert sorted(int(stamp) for _, stamps in fleet.arrivals for stamp in stamps) == [100, 200]
        assert subscriber.ready.result() is None


def test_byte_by_byte(loop):
    stream = HEAD + chunked(HELLO, message(1, 7), message(2, 8), message(3, 9))
    _, subscriber = subscribe(loop, stream, list(range(1, len(stream))))
    assert subscriber.received == 3


def test_a_subscriber_is_connected_at_its_hubs_hello_not_at_the_head(loop):
    fleet, subscriber = subscribe(loop, HEAD + b":\n\n", [], subscribed_after=b"event: meta")
    assert not subscriber.ready.done() and fleet.subscribers == []
    subscriber.data_received(chunked(HELLO + message(1, 5)))
    assert subscriber.ready.result() is None and fleet.subscribers == [subscriber]
    assert subscriber.received == 1


def test_a_stream_of_two_rooms_is_connected_at_its_second_hello(loop):
    fleet = Fleet()
    subscriber = Subscriber(fleet, ["r", "s"], b"GET", loop.create_future(), b"event: meta")
    subscriber.connection_made(Transport())
    subscriber.data_received(HEAD + chunked(HELLO))
    assert not subscriber.ready.done()
    subscriber.data_received(chunked(HELLO))
    assert subscriber.ready.result() is None and fleet.subscribers == [subscriber]


def test_a_refused_subscription_reports_its_status_line(loop):
    fleet, subscriber = subscribe(loop, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", [])
    assert subscriber.ready.result() == "HTTP/1.1 404 Not Found"
    assert fleet.subscribers == []


def test_awaiting_counts_losses_and_duplicates(loop):
    fleet, subscriber = subscribe(loop, HEAD + message(1, 1) + message(2, 2), [])
    summary = loop.run_until_complete(fleet.await_messages({"r": 3}, timeout=0.01))
    assert (summary["received"], summary["lost"], summary["extra"]) == (2, 1, 0)
    summary = loop.run_until_complete(fleet.await_messages({"r": 1}, timeout=0.01))
    assert (summary["lost"], summary["extra"]) == (0, 1)
