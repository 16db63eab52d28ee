"""The Python peer: the SSE hub a user would write in an afternoon instead of adopting ours.

Starlette + sse-starlette on uvicorn, rooms in memory, one queue per subscriber, no
persistence. Same subscribe/publish shape as the app:
  GET  /api/v1/events/<room>   text/event-stream, each message as `id: n` + `data: <json>`
  POST /api/v1/send            JSON message or array of messages, Bearer token, answers 202
Run: uvicorn peer_hub:app (SSE_TOKEN sets the token).
"""

import asyncio
import itertools
import json
import os
import time
from collections import defaultdict

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN = os.environ.get("SSE_TOKEN", "bench")
rooms: defaultdict[str, set[asyncio.Queue]] = defaultdict(set)
sequences: defaultdict[str, itertools.count] = defaultdict(lambda: itertools.count(1))


async def events(request: Request) -> EventSourceResponse:
    room = request.path_params["room"].lower()
    # Subscribed before the response head goes out, so a client that has the head gets
    # every message published after it.
    queue: asyncio.Queue = asyncio.Queue()
    rooms[room].add(queue)

    async def stream():
        try:
            while True:
                yield await queue.get()
        finally:
            rooms[room].discard(queue)

    return EventSourceResponse(stream())


def stamp(message: dict) -> tuple[str, int, str]:
    """A published message's room, its next id there and its payload (JSON)."""
    room = message.get("room", "lobby").lower()
    message_id = next(sequences[room])
    payload = {
        "id": message_id,
        "room": room,
        "speaker": message["speaker"],
        "data": message["data"],
        "time": int(time.time() * 1000),
        "meta": message.get("meta"),
    }
    return room, message_id, json.dumps(payload, separators=(",", ":"))


async def send(request: Request) -> JSONResponse:
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        return JSONResponse({"success": False, "code": 401, "msg": "Unauthorized"}, 401)
    body = await request.json()
    ids = []
    for message in body if isinstance(body, list) else [body]:
        room, message_id, payload = stamp(message)
        event = {"id": str(message_id), "data": payload}
        for queue in rooms[room]:
            queue.put_nowait(event)
        ids.append(message_id)
    return JSONResponse(
        {"success": True, "code": 202, "msg": "Message Event Sent", "ids": ids}, 202
    )


app = Starlette(
    routes=[
        Route("/api/v1/events/{room}", events),
        Route("/api/v1/send", send, methods=["POST"]),
        Route("/healthz", lambda request: JSONResponse({"ok": True})),
    ]
)
