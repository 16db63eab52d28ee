"""The attacks of issue 14 (items 1, 2, 6 and the big batch of 13), each against a hub this
script starts (`python app.py`, fresh DATA_DIR), with the figures docs/SECURITY.md gives:

  replay   20 sockets ask a room of 1000 x 60 KB messages for everything (Last-Event-ID: 0)
           and never read: the server's RSS, whether they were dropped once 3000 more
           messages came, RSS after they closed
  sigterm  5 such stalled readers and one good one on a flooded room, then SIGTERM: seconds
           to exit, whether the good reader got `event: shutdown`
  clock    2000 /api/v1/clock streams: the server's CPU %, and the delay of room messages
  batch    a 1 MB batch published to 1500 subscribers: the longest /healthz answer during
           its fan-out (how long the event loop was held)

    .venv/bin/python bench/hardening.py [--app-dir DIR] [--only replay,clock] [--quick]

--app-dir runs another checkout's app.py (e.g. a copy of main) with this interpreter.
Linux only (/proc). Raises its open-files limit to the hard one (the server inherits it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from procstat import cpu_seconds, rss_kb

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAD = "x" * 60_000  # a 60 KB message


def raise_open_files() -> None:
    """To the hard limit: a stream is a file on both sides."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Hub:
    def __init__(self, app_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tempfile.TemporaryDirectory(prefix="hardening-")
        self.process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=app_dir,
            env={
                **os.environ,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "DATA_DIR": self.data.name,
                "SSE_TOKEN": TOKEN,
                "ACCESS_LOG": "false",
                "LOG_LEVEL": "WARNING",
                "HITOKOTO_URL": f"http://127.0.0.1:{free_port()}/",
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("hub did not start")

    def rss_mib(self) -> float:
        return rss_kb([self.process.pid]) / 1024

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=30).json()

    def publish(self, messages: list[dict], room: str) -> None:
        body = [{"speaker": "b", "room": room, **m} for m in messages]
        reply = httpx.post(f"{self.url}/api/v1/send", json=body, headers=AUTH, timeout=60)
        assert reply.status_code == 202, reply.text

    def create_room(self, room: str, **fields) -> None:
        reply = httpx.post(
            f"{self.url}/api/v1/rooms", json={"id": room, **fields}, headers=AUTH, timeout=30
        )
        assert reply.status_code == 201, reply.text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.data.cleanup()


def stalled_reader(port: int, path: str, last_id: int | None = None) -> socket.socket:
    """A socket that asks for a stream and never reads it (a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    resume = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{resume}\r\n".encode())
    return sock


def readers(port: int, path: str, count: int, pipe) -> None:
    """A child process: `count` streams of `path`, read as fast as they come. Sends "open"
    when each has its first bytes, then, each time it is asked, the bytes they got; ends
    when told "close"."""
    raise_open_files()

    async def main() -> None:
        got = [0] * count
        opened = asyncio.Event()
        started = 0

        async def read(i: int) -> None:
            nonlocal started
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            first = True
            while chunk := await reader.read(1 << 20):
                got[i] += len(chunk)
                if first:
                    first, started = False, started + 1
                    if started == count:
                        opened.set()

        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(read(i)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await opened.wait()
        pipe.send("open")
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, pipe.recv) != "close":
            pipe.send(sum(got))
        for task in tasks:
            task.cancel()

    asyncio.run(main())


class Readers:
    def __init__(self, hub: Hub, path: str, count: int) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=readers, args=(hub.port, path, count, child))
        self.process.start()
        if not self.pipe.poll(120):
            raise RuntimeError("readers did not open")
        assert self.pipe.recv() == "open"

    def received(self) -> int:
        self.pipe.send("report")
        return self.pipe.recv()

    def close(self) -> None:
        self.pipe.send("close")
        self.process.join(10)


def replay(app_dir: Path, quick: bool) -> dict:
    messages, sockets = (300, 10) if quick else (1000, 20)
    hub = Hub(app_dir, HISTORY_SIZE=str(messages), MAX_MESSAGE_BYTES="70000")
    try:
        hub.create_room("big")
        for _ in range(0, messages, 15):
            hub.publish([{"data": {"pad": PAD}}] * 15, "big")
        rss = {"before": hub.rss_mib()}
        stalled = [stalled_reader(hub.port, "/api/v1/events/big", 0) for _ in range(sockets)]
        time.sleep(3)
        rss["stalled"] = hub.rss_mib()
        for _ in range(30):  # 3000 later messages: past the ring (SUBSCRIBER_QUEUE)
            hub.publish([{"data": {"n": 1}}] * 100, "big")
        time.sleep(2)
        health = hub.health()
        rss["after_3000_more"] = hub.rss_mib()
        for sock in stalled:
            sock.close()
        time.sleep(3)
        rss["closed"] = hub.rss_mib()
        return {
            "history": f"{messages} x 60 KB",
            "stalled_readers": sockets,
            "rss_mib": {k: round(v) for k, v in rss.items()},
            "dropped": health["slow_consumer_disconnects"],
        }
    finally:
        hub.stop()


def sigterm(app_dir: Path, quick: bool) -> dict:
    hub = Hub(app_dir, SHUTDOWN_TIMEOUT="5", MAX_MESSAGE_BYTES="70000")
    exited = None
    try:
        stalled = [stalled_reader(hub.port, "/api/v1/events/lobby") for _ in range(5)]
        good = socket.create_connection(("127.0.0.1", hub.port))
        good.sendall(b"GET /api/v1/events/lobby HTTP/1.1\r\nHost: x\r\n\r\n")
        received = bytearray()

        def read_good() -> None:
            while chunk := good.recv(1 << 20):
                received.extend(chunk)

        reading = threading.Thread(target=read_good, daemon=True)
        reading.start()
        time.sleep(1)
        for _ in range(20):  # 300 x 60 KB: 18 MB for each reader, under the ring's 1024
            hub.publish([{"data": {"pad": PAD}}] * 15, "lobby")
        time.sleep(1)
        started = time.monotonic()
        hub.process.send_signal(signal.SIGTERM)
        try:
            hub.process.wait(120)
            exited = round(time.monotonic() - started, 1)
        except subprocess.TimeoutExpired:
            exited = "not within 120 s"
        reading.join(5)
        for sock in (*stalled, good):
            sock.close()
        return {
            "shutdown_timeout_s": 5,
            "stalled_readers": 5,
            "exit_s": exited,
            "good_reader_got_shutdown": b"event: shutdown" in received,
        }
    finally:
        hub.stop()


async def message_delays(hub: Hub, count: int) -> list[float]:
    """Milliseconds from sending a publish to its frame reaching a subscriber of the room."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET /api/v1/events/lobby HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"event: meta")
    delays = []
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        for i in range(count):
            sent = time.perf_counter()
            await client.post(f"{hub.url}/api/v1/send", json={"speaker": "d", "data": {"i": i}})
            await reader.readuntil(b'"data":{"i":%d}' % i)
            delays.append((time.perf_counter() - sent) * 1000)
            await asyncio.sleep(0.2)
    writer.close()
    return delays


def clock(app_dir: Path, quick: bool) -> dict:
    streams = 500 if quick else 2000
    hub = Hub(app_dir)
    try:
        idle = asyncio.run(message_delays(hub, 10))
        pool = Readers(hub, "/api/v1/clock", streams)
        time.sleep(2)
        cpu = cpu_seconds([hub.process.pid])
        start = time.monotonic()
        time.sleep(10)
        cpu_percent = (cpu_seconds([hub.process.pid]) - cpu) / (time.monotonic() - start) * 100
        delays = asyncio.run(message_delays(hub, 20))
        pool.close()
        return {
            "clock_streams": streams,
            "server_cpu_percent": round(cpu_percent),
            "message_delay_ms_without": round(statistics.median(idle), 1),
            "message_delay_ms_median": round(statistics.median(delays), 1),
            "message_delay_ms_max": round(max(delays), 1),
        }
    finally:
        hub.stop()


def batch(app_dir: Path, quick: bool) -> dict:
    subscribers = 300 if quick else 1500
    hub = Hub(app_dir, MAX_MESSAGE_BYTES="70000", SUBSCRIBER_QUEUE="4096")
    try:
        pool = Readers(hub, "/api/v1/events/lobby", subscribers)
        answers: list[float] = []
        probing = threading.Event()

        def probe() -> None:  # /healthz every 10 ms: how long the loop keeps it waiting
            with httpx.Client(timeout=60) as client:
                while not probing.is_set():
                    sent = time.perf_counter()
                    client.get(f"{hub.url}/healthz")
                    answers.append((time.perf_counter() - sent) * 1000)
                    time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(1)
        before = len(answers)
        already = pool.received()
        started = time.monotonic()
        hub.publish([{"data": {"pad": PAD}}] * 16, "lobby")  # ~1 MB, one batch
        while time.monotonic() < started + 120:  # until every subscriber has it all
            time.sleep(0.2)
            received = pool.received() - already
            if received >= subscribers * 16 * len(PAD):
                break
        fan_out_s = time.monotonic() - started
        probing.set()
        prober.join()
        pool.close()
        during = answers[before:]
        return {
            "subscribers": subscribers,
            "batch": "16 x 60 KB",
            "fan_out_s": round(fan_out_s, 1),
            "healthz_ms_max": round(max(during)),
            "healthz_ms_median": round(statistics.median(during), 1),
            "received_mib": round(received / 2**20),
        }
    finally:
        hub.stop()


SCENARIOS = {"replay": replay, "sigterm": sigterm, "clock": clock, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", type=Path, default=ROOT)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="smaller numbers")
    args = parser.parse_args()
    raise_open_files()
    for name in args.only.split(","):
        print(name, json.dumps(SCENARIOS[name](args.app_dir.resolve(), args.quick)), flush=True)


if __name__ == "__main__":
    main()
