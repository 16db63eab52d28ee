"""The app's cost per publish as instructions counted by callgrind: a W4-shaped load (1 room,
1 subscriber, single-message publishes from 32 keep-alive publishers) against app.py run
under valgrind, counting only the measured publishes.

Usage: bench/.venv/bin/python bench/instructions.py [--app-dir DIR ...] [--publishes N] [--reps K]

CPU time on a shared VM varies ±10 % between runs; these counts repeat within ~0.6 %, so two
app versions compare on one run each. They count user-space instructions of all the server's
threads: not syscalls, cache misses or waiting, which bench/run's CPU figures include.
"""

import argparse
import asyncio
import getpass
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hubs import BENCH_DIR, HOST, ThisApp
from publish import publish
from subscribers import MARKER

ROOM = "bench0"  # letters and digits only, as the app wants room ids
PUBLISHERS = 32
WARMUP = 300  # publishes before counting: imports, caches and code paths all settled


class ThisAppUnderCallgrind(ThisApp):
    """ThisApp started by valgrind with instrumentation off until `count` turns it on."""

    name = "this-callgrind"

    def command(self, workdir):
        # pymalloc, as the app runs: PYTHONMALLOC=malloc is for memcheck (and counts ~8 % more).
        argv, env, cwd = super().command(workdir)
        self.out_file = workdir / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        valgrind.append(f"--callgrind-out-file={self.out_file}")
        return valgrind + argv, {**env, **vgdb_env()}, cwd

    def callgrind_control(self, *options: str) -> None:
        argv = ["callgrind_control", *options, str(self.process.pid)]
        done = subprocess.run(argv, env={**os.environ, **vgdb_env()}, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout + done.stderr!r}")

    def instructions(self) -> int:
        """Instructions counted since the last zeroing, from a dump written now."""
        self.callgrind_control("--dump=measured")
        # The dump goes to <out_file>.1 (the first dump; the exit's goes to <out_file>, later),
        # with the costs since --zero. Its `totals:` line sums them; `summary:` reads 0 there.
        dump = self.out_file.with_name(f"{self.out_file.name}.1")
        for line in dump.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise RuntimeError(f"no totals: line in {dump}")


def vgdb_env() -> dict[str, str]:
    # vgdb, which callgrind_control drives, names its FIFOs after USER and HOST: both sides
    # need the same ones, and USER may be unset (then the FIFO is not found).
    return {"USER": os.environ.get("USER") or getpass.getuser(), "HOST": HOST}


class Subscriber(asyncio.Protocol):
    """One SSE stream that counts the messages (lines carrying the bench marker) it receives."""

    def __init__(self, ready: asyncio.Future) -> None:
        self.ready, self.received, self.partial = ready, 0, b""

    def connection_made(self, transport):
        self.transport = transport
        transport.write(f"GET /api/v1/events/{ROOM} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())

    def data_received(self, data):
        if not self.ready.done():
            self.ready.set_result(data.split(b"\r\n", 1)[0])
        lines = self.partial + data
        cut = lines.rfind(b"\n") + 1  # count whole lines only: a read may split a message
        self.partial = lines[cut:]
        self.received += len(MARKER.findall(lines, 0, cut))

    async def wait_for(self, count: int, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while self.received < count:
                await asyncio.sleep(0.05)


async def publish_all(hub: ThisApp, subscriber: Subscriber, count: int) -> None:
    """Publish `count` single messages; fail unless all got 202 and all reached the stream."""
    subscriber.received = 0
    result = await publish(hub, HOST, hub.port, [(ROOM, 1)] * count, PUBLISHERS, within_s=600)
    if result.statuses != {202: count} or result.errors:
        raise RuntimeError(f"publishes answered {dict(result.statuses)}, errors {result.errors}")
    try:
        await subscriber.wait_for(count)
    except TimeoutError:
        raise RuntimeError(f"{subscriber.received} of {count} messages delivered") from None


async def count(app_dir: Path, publishes: int) -> float:
    """Instructions per publish of the app in app_dir, over `publishes` publishes."""
    hub = ThisAppUnderCallgrind(server_cpu=0, app_dir=app_dir)
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as workdir:
        hub.start(Path(workdir))
        try:
            await hub.wait_ready(timeout=120)  # valgrind's start takes seconds
            await hub.create_rooms([ROOM])
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            subscriber = Subscriber(ready)
            await loop.create_connection(lambda: subscriber, HOST, hub.port)
            status = await asyncio.wait_for(ready, 30)
            if b" 200" not in status:
                raise RuntimeError(f"subscribing answered {status!r}")
            await publish_all(hub, subscriber, WARMUP)
            hub.callgrind_control("--zero")
            hub.callgrind_control("--instr=on")
            await publish_all(hub, subscriber, publishes)
            hub.callgrind_control("--instr=off")
            return hub.instructions() / publishes
        finally:
            hub.stop()


def label(app_dir: Path) -> str:
    """The app dir's git short commit if it is a checkout, else its path."""
    git = ["git", "-C", str(app_dir), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True)
    return commit.stdout.strip() if commit.returncode == 0 else str(app_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", type=Path, action="append", help="default: the repo")
    parser.add_argument("--publishes", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        sys.exit("valgrind not found: apt-get install -y valgrind")
    app_dirs = [d.resolve() for d in args.app_dir or [BENCH_DIR.parent]]
    for rep in range(args.reps):
        first = None
        for app_dir in app_dirs:
            per_publish = asyncio.run(count(app_dir, args.publishes))
            first = first or per_publish
            ratio = f"  {per_publish / first:.3f}× the first" if len(app_dirs) > 1 else ""
            print(
                f"rep {rep + 1}  {label(app_dir):>10}  {per_publish:>11,.0f} instr/publish{ratio}"
            )


if __name__ == "__main__":
    main()
