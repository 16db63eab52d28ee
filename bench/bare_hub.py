"""The floor under this project: the peer hub as a bare ASGI app on Hypercorn + uvloop.

No framework, no storage, no validation beyond a token: rooms in memory, one queue per
subscriber. What this project would measure if its own code (auth, validation, the SQLite
commit, the ring, metrics) cost nothing on the server it has to run on, so the suite tells
how much of the gap to the peer is Hypercorn's. Same shape as peer_hub.py, whose `stamp`
it uses.
Run: python bare_hub.py (HOST, PORT, SSE_TOKEN).
"""

import asyncio
import json
import os
from collections import defaultdict

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from peer_hub import stamp

AUTHORIZATION = f"Bearer {os.environ.get('SSE_TOKEN', 'bench')}".encode()
rooms: defaultdict[str, set[asyncio.Queue]] = defaultdict(set)


async def reply(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def events(room: str, send) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    rooms[room].add(queue)
    try:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while True:
            await send({"type": "http.response.body", "body": await queue.get(), "more_body": True})
    finally:
        rooms[room].discard(queue)


async def publish(scope, receive, send) -> None:
    if dict(scope["headers"]).get(b"authorization") != AUTHORIZATION:
        return await reply(send, 401, {"success": False, "code": 401, "msg": "Unauthorized"})
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    parsed = json.loads(body)
    ids = []
    for message in parsed if isinstance(parsed, list) else [parsed]:
        room, message_id, payload = stamp(message)
        frame = f"id: {message_id}\ndata: {payload}\n\n".encode()
        for queue in rooms[room]:
            queue.put_nowait(frame)
        ids.append(message_id)
    await reply(send, 202, {"success": True, "code": 202, "msg": "Message Event Sent", "ids": ids})


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/api/v1/events/"):
        await events(path.removeprefix("/api/v1/events/").lower(), send)
    elif path == "/api/v1/send":
        await publish(scope, receive, send)
    else:
        await reply(send, 200, {"ok": True})


if __name__ == "__main__":
    config = Config()
    config.bind = [f"{os.environ['HOST']}:{os.environ['PORT']}"]
    config.accesslog = None
    uvloop.run(serve(app, config))
