"""A room's ring of encoded frames and its fan-out, with in-process subscribers (an ASGI
`send` that keeps what it is given)."""

from __future__ import annotations

import asyncio

from app import Metrics, Room, RoomRecord, Settings, Subscriber, message_frame


class Connection:
    """An ASGI send: keeps the bodies; while `blocked` is set, a send waits (a full socket)."""

    def __init__(self) -> None:
        self.received = b""
        self.blocked: asyncio.Event | None = None

    async def __call__(self, message: dict) -> None:
        if self.blocked is not None:
            await self.blocked.wait()
        self.received += message.get("body", b"")


def live_subscriber(room: Room, connection: Connection) -> Subscriber:
    subscriber = Subscriber(connection, "player", room.head)
    # the stream's handler, which the room cancels to finish the stream
    subscriber.task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    room.join(subscriber)
    room.catch_up(subscriber)
    return subscriber


async def settle(room: Room) -> None:
    """Let the room's wake write what it has (it runs on the event loop)."""
    for _ in range(100):
        await asyncio.sleep(0.005)
        if not room._wake_armed and all(s.flushing is None for s in room.subscribers):
            return


def a_room(settings: Settings) -> Room:
    return Room(RoomRecord("r", None, "", False, None, {}, 0, 0), settings, Metrics())


async def test_every_subscriber_gets_every_frame_once_in_order(settings: Settings):
    room = a_room(settings)
    connections = [Connection() for _ in range(20)]
    for connection in connections:
        live_subscriber(room, connection)
    frames = [message_frame(i, f'{{"id":{i}}}') for i in range(1, 51)]
    for message_id, frame in enumerate(frames, 1):
        room.append(frame, message_id)
        if message_id % 7 == 0:
            await asyncio.sleep(0)  # some wakes come between appends
    await settle(room)
    for connection in connections:
        messages = [part for part in connection.received.split(b"\n\n") if b"data:" in part]
        assert b"\n\n".join(messages) + b"\n\n" == b"".join(frames)


async def test_a_subscriber_a_whole_ring_behind_is_dropped(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path, subscriber_queue=8)
    room = a_room(settings)
    fast, stuck = Connection(), Connection()
    live_subscriber(room, fast)
    stuck.blocked = asyncio.Event()
    slow = live_subscriber(room, stuck)
    for message_id in range(1, 40):
        room.append(message_frame(message_id, "{}"), message_id)
        await asyncio.sleep(0.003)
    await asyncio.sleep(0.05)
    # finished at once, without a final event: the client resumes by id
    assert slow.ending == b"" and slow.task.cancelled()
    assert room.metrics.value("slow_consumer_disconnects_total") == 1
    assert fast.received.count(b"data:") == 39
    assert len(room.frames) < 2 * settings.subscriber_queue  # the ring did not grow with it
    stuck.blocked.set()


async def test_a_big_batch_is_fanned_out_over_several_turns(settings: Settings):
    """A turn of a wake writes WAKE_SLICE subscribers, or fewer when their frames are big:
    a 1 MB batch to 8 subscribers held the event loop for all 8 writes."""
    room = a_room(settings)
    connections = [Connection() for _ in range(8)]
    for connection in connections:
        live_subscriber(room, connection)
    frames = [message_frame(i, '{"pad":"%s"}' % ("x" * 60_000)) for i in range(1, 17)]
    for message_id, frame in enumerate(frames, 1):
        room.append(frame, message_id)
    room._write_slice(list(room.subscribers), 0, room.head)  # one turn
    assert 0 < sum(bool(connection.received) for connection in connections) < 8
    await settle(room)
    assert all(connection.received == b"".join(frames) for connection in connections)
