"""The hubs under test: how to start each one (pinned to the server CPU) and how to talk to it."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from publish import HttpConnection

BENCH_DIR = Path(__file__).resolve().parent
VENV_BIN = BENCH_DIR / ".venv" / "bin"
HOST = "127.0.0.1"
TOKEN = "bench-token"
MESSAGE = b'{"room":"%s","speaker":"bench","data":{"seq":%d,"bench_t":%d},"meta":null}'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Hub:
    """A hub with the app's shapes: GET /api/v1/events/<room>, POST JSON to /api/v1/send."""

    name: str
    supports_batches = True
    streams_several_rooms = False  # one stream of several rooms (W6)
    publish_headers = f"Content-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\n"
    # what in a stream says its subscription is in place; None: the response head does
    subscribed_after: bytes | None = None

    def __init__(self, server_cpu: int) -> None:
        self.server_cpu = server_cpu
        self.process: subprocess.Popen | None = None
        self.port = 0

    def command(self, workdir: Path) -> tuple[list[str], dict[str, str], Path]:
        """The server's command line, extra environment and working directory."""
        raise NotImplementedError

    def skips(self, workload) -> str | None:
        """Why this hub does not run the workload, if it does not."""
        if workload.batch > 1 and not self.supports_batches:
            return "publishes one message per request"
        if workload.rooms_per_subscriber > 1 and not self.streams_several_rooms:
            return "one room per stream"
        return None

    def subscribe_path(self, rooms: list[str]) -> str:
        if len(rooms) > 1:
            return f"/api/v1/events?rooms={','.join(rooms)}"
        return f"/api/v1/events/{rooms[0]}"

    def publish_request(self, room: str, sequence: int, count: int, now_us: int):
        """Path and body of a request that publishes `count` messages to `room`."""
        messages = [MESSAGE % (room.encode(), sequence * count + i, now_us) for i in range(count)]
        body = b"[" + b",".join(messages) + b"]" if count > 1 else messages[0]
        return "/api/v1/send", body

    async def create_rooms(self, rooms: list[str]) -> None:
        """Make the rooms exist before anyone subscribes (a no-op where any room exists)."""

    def start(self, workdir: Path) -> None:
        self.port = free_port()
        argv, env, cwd = self.command(workdir)
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["taskset", "-c", str(self.server_cpu), *argv],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() ends it and its workers
        )

    async def wait_ready(self, timeout: float = 20) -> None:
        """Wait until the server answers HTTP at all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            connection = HttpConnection(HOST, self.port)
            try:
                await connection.request("GET", "/healthz")
                return
            except OSError:
                await asyncio.sleep(0.1)
            finally:
                connection.close()
        raise RuntimeError(f"{self.name} did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        self.process = None


class ThisApp(Hub):
    """This project as it is run (`make run`, the Dockerfile): `python app.py`, which serves
    it with Hypercorn on uvloop, one process, SQLite in a fresh DATA_DIR."""

    name = "this"
    streams_several_rooms = True
    # its hello: the head goes out before the room is followed (with Redis: before this
    # process reads the room's stream), the hello after, and its last_id covers the gap
    subscribed_after = b"event: meta"

    def __init__(self, server_cpu: int, app_dir: Path) -> None:
        super().__init__(server_cpu)
        self.app_dir = app_dir

    def command(self, workdir):
        env = {"HOST": HOST, "PORT": str(self.port), "DATA_DIR": str(workdir), "SSE_TOKEN": TOKEN}
        env["ACCESS_LOG"] = "false"  # as the peer runs with --no-access-log
        return [str(VENV_BIN / "python"), "app.py"], env, self.app_dir

    async def create_rooms(self, rooms):
        connection = HttpConnection(HOST, self.port)
        try:
            for room in rooms:
                body = json.dumps({"id": room}).encode()
                status = await connection.request(
                    "POST", "/api/v1/rooms", body, self.publish_headers
                )
                if status not in (200, 201, 409):
                    raise RuntimeError(f"creating room {room} answered {status}")
        finally:
            connection.close()


class PythonPeer(Hub):
    """The ~60-line Starlette + sse-starlette hub on uvicorn (uvloop + httptools), peer_hub.py."""

    name = "peer"

    def command(self, workdir):
        argv = [str(VENV_BIN / "uvicorn"), "peer_hub:app", "--host", HOST, "--port", str(self.port)]
        argv += ["--log-level", "warning", "--no-access-log"]
        return argv, {"SSE_TOKEN": TOKEN}, BENCH_DIR


class BareHypercorn(Hub):
    """The floor: the peer's hub as a bare ASGI app on Hypercorn + uvloop (bare_hub.py)."""

    name = "hypercorn"

    def command(self, workdir):
        env = {"HOST": HOST, "PORT": str(self.port), "SSE_TOKEN": TOKEN}
        return [str(VENV_BIN / "python"), "bare_hub.py"], env, BENCH_DIR


class Nchan(Hub):
    """nginx + nchan, one worker, from nchan.conf; publishes one message per POST /pub/<room>."""

    name = "nchan"
    supports_batches = False
    publish_headers = "Content-Type: application/json\r\n"

    def command(self, workdir):
        config = (BENCH_DIR / "nchan.conf").read_text()
        config = config.replace("@PREFIX@", str(workdir)).replace("@PORT@", str(self.port))
        (workdir / "nginx.conf").write_text(config)
        argv = ["nginx", "-c", str(workdir / "nginx.conf"), "-p", str(workdir)]
        return argv + ["-e", str(workdir / "error.log")], {}, workdir

    def publish_request(self, room, sequence, count, now_us):
        if count != 1:
            raise ValueError("nchan publishes one message per request")
        return f"/pub/{room}", MESSAGE % (room.encode(), sequence, now_us)


class ThisAppNoCoalescing(ThisApp):
    """This project with COALESCE_MS=0: what coalescing adds to latency is the difference."""

    name = "this-nocoalesce"

    def skips(self, workload):
        return None if workload.interval_ms else "only at low load (paced workloads)"

    def command(self, workdir):
        argv, env, cwd = super().command(workdir)
        return argv, {**env, "COALESCE_MS": "0"}, cwd


class ThisAppRedis(ThisApp):
    """This project as two Hypercorn workers (processes), one hub through Redis (BROKER_URL)."""

    name = "this-redis"
    redis_url = "redis://127.0.0.1:6379/9"

    def command(self, workdir):
        import redis  # the app's requirement, so in bench/.venv

        redis.Redis.from_url(self.redis_url).flushdb()  # a fresh hub: ids from 1
        _, env, cwd = super().command(workdir)
        bind = f"{HOST}:{self.port}"
        argv = [str(VENV_BIN / "hypercorn"), "-k", "uvloop", "-w", "2", "-b", bind, "app:app"]
        return argv, {**env, "BROKER_URL": self.redis_url}, cwd


class ThisAppOnUvicorn(ThisApp):
    """This project's app.py served by uvicorn (uvloop + httptools) instead of Hypercorn, as
    the peer is: not how it is deployed (the project runs on Hypercorn), but what the server
    costs it, since everything else is the same code."""

    name = "this-uvicorn"

    def command(self, workdir):
        _, env, cwd = super().command(workdir)
        argv = [str(VENV_BIN / "uvicorn"), "app:app", "--host", HOST, "--port", str(self.port)]
        argv += ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
        argv += ["--no-access-log", "--timeout-graceful-shutdown", "1"]
        return argv, env, cwd
