"""A stand-in for an OpenAI-compatible API: a real HTTP server on 127.0.0.1 (in a thread of
the test process) answering `POST /v1/chat/completions` with `stream: true` the way OpenAI
does: chunked `text/event-stream`, one `chat.completion.chunk` per word, a finish chunk, a
usage chunk, `data: [DONE]`. `mode` makes it fail on demand; every request is recorded as
a `Call`, which tells whether the client hung up before the end."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-test-0123456789abcdefSECRET"
# Upstream internals that must never reach a client: the stand-in puts them in its errors.
INTERNALS = "/srv/llm/shard-7/secret-internal-path"
# Modes that send, as the third chunk, one the relay cannot use (broken or odd upstreams).
ODD_CHUNKS = {
    "garbage": b"data: {not json\n\n",
    "wrong shape": b'data: {"choices": 7}\n\n',
    "number content": b'data: {"choices": [{"index": 0, "delta": {"content": 42}}]}\n\n',
    "NaN usage": b'data: {"choices": [], "usage": {"total_tokens": NaN}}\n\n',
    "lone surrogate": b'data: {"choices": [{"index": 0, "delta": {"content": "\\ud800"}}]}\n\n',
}
WORDS = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog:", "狐狸跳了", "✓"]


@dataclass
class Call:
    body: dict
    authorization: str | None
    disconnected: threading.Event = field(default_factory=threading.Event)
    completed: threading.Event = field(default_factory=threading.Event)


class FakeLLM:
    """`with FakeLLM() as llm:` serves at `llm.base_url`. Set `mode`, `words`, `delay`,
    `usage` before a request; `calls` holds what arrived."""

    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.mode = "ok"
        self.words = list(WORDS)
        self.delay = 0.02  # seconds between chunks
        self.usage: dict | None = None  # the usage chunk's `usage`; None: the counts
        self.calls: list[Call] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self) -> str:
        """The whole answer as a client should assemble it from the deltas."""
        return "".join(self.pieces())

    def pieces(self) -> list[str]:
        return [word if i == 0 else " " + word for i, word in enumerate(self.words)]

    def __enter__(self) -> FakeLLM:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        fake: FakeLLM = self.server.fake  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        call = Call(body, self.headers.get("Authorization"))
        fake.calls.append(call)
        mode = fake.mode
        if self.path != "/v1/chat/completions":
            return self.error(404, f"Unknown path {self.path} on {INTERNALS}")
        if mode == "401" or call.authorization != f"Bearer {fake.key}":
            # Real services echo (part of) the key they got; the relay must not pass it on.
            return self.error(401, f"Incorrect API key provided: {call.authorization}")
        if mode == "429":
            return self.error(429, f"Rate limit reached for {INTERNALS}", {"Retry-After": "1"})
        if mode == "500":
            return self.error(500, f"Internal error at {INTERNALS}")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.stream(fake, call, mode)
        except (BrokenPipeError, ConnectionResetError):
            call.disconnected.set()

    def stream(self, fake: FakeLLM, call: Call, mode: str) -> None:
        model = call.body.get("model")
        pieces = fake.pieces()
        self.event({"role": "assistant", "content": ""}, None, model)
        for index, piece in enumerate(pieces):
            if mode == "cut" and index == len(pieces) // 2:
                self.close_connection = True  # hang up without the last chunk
                return
            if mode == "stall" and index == 2:
                if self.client_gone(60):
                    call.disconnected.set()
                return
            if mode in ODD_CHUNKS and index == 2:
                self.chunk(ODD_CHUNKS[mode])
            self.event({"content": piece}, None, model)
            if self.client_gone(fake.delay):
                call.disconnected.set()
                return
        self.event({}, "stop", model)
        counts = {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9}
        usage = counts if fake.usage is None else fake.usage
        self.data(
            {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}
        )
        self.chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        call.completed.set()

    def event(self, delta: dict, finish_reason: str | None, model: str | None) -> None:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        self.data(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
            }
        )

    def data(self, chunk: dict) -> None:
        self.chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def client_gone(self, seconds: float) -> bool:
        """Wait up to `seconds`; True as soon as the client closes the connection."""
        readable, _, _ = select.select([self.connection], [], [], seconds)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": status}}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def relay_env(llm: FakeLLM, **env: str) -> dict[str, str]:
    """The app's environment for a relay to this stand-in."""
    return {
        "LLM_BASE_URL": llm.base_url,
        "LLM_API_KEY": KEY,
        "LLM_MODEL": "fake-model",
        "LLM_SYSTEM_PROMPT": "You are terse.",
        "LLM_MAX_TOKENS": "77",
        "LLM_READ_TIMEOUT_S": "1",
        "CHAT_IDLE_S": "600",  # only the idle test lets the reaper cancel chats
        "CHAT_RATE_LIMIT": "1000",
        "CHAT_MAX_PER_CLIENT": "100",
        "CLOCK_INTERVAL_S": "0.1",
        **env,
    }
