"""Test harness: the real app under Hypercorn (`python app.py`) on a loopback port, with a
temporary DATA_DIR, and real SSE clients (httpx-sse, curl)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis
from fake_llm import WORDS, FakeLLM
from httpx_sse import ServerSentEvent, aconnect_sse

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "your_super_secret_token_here"  # the Bun project's README uses this literal


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One app process (`python app.py`), or Hypercorn with `workers` processes. start() and
    stop() can be called again: same DATA_DIR, new run. Servers may share a DATA_DIR."""

    def __init__(self, data_dir: Path, workers: int = 0, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = env.get("SSE_TOKEN", TOKEN)
        self.log_path = data_dir / f"server-{self.port}.log"
        self.argv = [sys.executable, "app.py"]
        if workers:
            bind = f"127.0.0.1:{self.port}"
            self.argv = [
                sys.executable,
                "-m",
                "hypercorn",
                "-k",
                "uvloop",
                "-w",
                str(workers),
                "-b",
                bind,
                "app:app",
            ]
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATA_DIR": str(data_dir),
            "SSE_TOKEN": self.token,
            "LOG_LEVEL": "INFO",
            # no test reaches the internet: the quote API is down unless a test stands one in
            "HITOKOTO_URL": f"http://127.0.0.1:{free_port()}/",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)  # with its workers, if any
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def serving(self, workers: int, timeout: float = 20) -> None:
        """Wait until `workers` Hypercorn workers, over this server's runs, serve (start()
        waits for the first to answer)."""
        deadline = time.monotonic() + timeout
        while self.log().count("Running on") < workers:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def worker_health(self, workers: int = 2) -> dict[int, dict]:
        """Each worker's /healthz (its own counts), by pid: new connections reach any."""
        health = {}
        for _ in range(200):
            reply = httpx.get(f"{self.url}/healthz", headers={"Connection": "close"}).json()
            health[reply["pid"]] = reply
            if len(health) == workers:
                return health
        raise AssertionError(f"fewer than {workers} workers answered")

    def log_with(self, fragment: str, timeout: float = 5) -> str:
        """The log once it has `fragment` (a request's line follows its response)."""
        deadline = time.monotonic() + timeout
        while fragment not in (log := self.log()):
            assert time.monotonic() < deadline, f"{fragment!r} not logged"
            time.sleep(0.05)
        return log

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz").json()

    def create_room(self, room: str) -> None:
        reply = httpx.post(
            f"{self.url}/api/v1/rooms",
            json={"id": room},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert reply.status_code == 201, reply.text

    def publish(self, speaker: str = "alice", data: dict | None = None, **fields) -> dict:
        body = {"speaker": speaker, "data": data or {"message": "hi"}, **fields}
        reply = httpx.post(
            f"{self.url}/api/v1/send",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert reply.status_code == 202, reply.text
        return reply.json()


def assert_envelope(reply: httpx.Response, status: int, fragment: str) -> None:
    """An error reply in the envelope: `status`, and `fragment` in its msg."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["success"] is False and body["code"] == status
    assert fragment in body["msg"], body


def raw_request(server: Server, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are (a slow client); the whole reply (it has a Content-Length)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < int(
            re.search(rb"content-length: (\d+)", reply).group(1)
        ):
            reply += sock.recv(65536)
        return reply


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """make(**env) starts a server with its own DATA_DIR; make(data_dir=..., **env) with a
    given one (several processes of one hub share it); workers=N runs Hypercorn -w N."""
    servers: list[Server] = []

    def make(data_dir: Path | None = None, workers: int = 0, **env: str) -> Server:
        server = Server(data_dir or tmp_path / f"data{len(servers)}", workers, **env)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        if server.process is not None:
            server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number this test process holds alone (a lock file per number), on the
    Redis at 127.0.0.1:6379: pytest-xdist workers, and test runs of other checkouts on this
    machine, never empty each other's. Tests that need it skip with the reason when it is not
    there, and fail when REQUIRE_REDIS=1."""
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
    except redis.RedisError as error:
        reason = f"needs Redis on 127.0.0.1:6379 ({error})"
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    for db in range(1, 16):
        with open(Path(tempfile.gettempdir()) / f"streaming-message-redis-{db}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            yield db
            return
    pytest.fail("all of Redis's databases 1-15 are held by other test processes")


@pytest.fixture
def broker_url(redis_db: int) -> str:
    """BROKER_URL of an emptied Redis database."""
    url = f"redis://127.0.0.1:6379/{redis_db}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(params=["local", "redis"])
def broker_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The server's environment: one process on SQLite, or with Redis as the broker."""
    if request.param == "local":
        return {}
    return {"BROKER_URL": request.getfixturevalue("broker_url")}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server for tests that only need a running hub."""
    shared = Server(tmp_path_factory.mktemp("shared")).start()
    yield shared
    shared.stop()


class Subscription:
    """An open SSE stream: `hello` is the meta event's data; iterate for the rest."""

    def __init__(self, events: AsyncIterator[ServerSentEvent], hello: dict) -> None:
        self.events, self.hello = events, hello

    def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        return self.events

    def __anext__(self) -> Awaitable[ServerSentEvent]:
        return anext(self.events)


def sse_client() -> httpx.AsyncClient:
    """An HTTP client for SSE streams; share one among many subscriptions (making a client
    costs tens of milliseconds)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10, read=30), limits=httpx.Limits(max_connections=None)
    )


async def dispatched(events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    """The events a browser would dispatch. Once an id has been seen, httpx-sse also yields
    a data-less "message" for every comment block (the `:` keepalive), with that id; the
    WHATWG parser dispatches nothing without data (and the hub never sends empty data)."""
    async for event in events:
        if event.data:
            yield event


@asynccontextmanager
async def subscribe(
    url: str, client: httpx.AsyncClient | None = None, **headers: str
) -> AsyncIterator[Subscription]:
    """An SSE subscription (httpx-sse) on `client` or its own; the hello has arrived on entry."""
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(sse_client())
        source = await stack.enter_async_context(aconnect_sse(client, "GET", url, headers=headers))
        assert source.response.status_code == 200, await source.response.aread()
        events = dispatched(source.aiter_sse())
        hello = await anext(events)
        assert hello.event == "meta"
        yield Subscription(events, json.loads(hello.data))


async def collect(events: Subscription, count: int, kind: str = "message") -> list[ServerSentEvent]:
    """The next `count` events of type `kind` (skipping other types), within 15 s."""
    received = []
    async with asyncio.timeout(15):
        async for event in events:
            if event.event == kind:
                received.append(event)
                if len(received) == count:
                    break
    return received


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    """The stand-in OpenAI-compatible API (a real HTTP server on loopback)."""
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def llm(fake_llm: FakeLLM) -> FakeLLM:
    """The stand-in, reset to answer normally."""
    fake_llm.mode, fake_llm.words, fake_llm.delay = "ok", list(WORDS), 0.02
    fake_llm.usage = None
    return fake_llm
