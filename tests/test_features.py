"""Hub features of issue 17: readiness that tells the truth, the JSON history API,
idempotent publishes and the command-line client. Each against the real server, with and
without BROKER_URL where the feature touches the broker."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import Server, free_port

# ---------------------------------------------------------------------------------------
# Health: /healthz (alive) and /readyz (can serve)
# ---------------------------------------------------------------------------------------


def readiness(server: Server) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def test_ready_when_sqlite_takes_writes_and_redis_answers(make_server, broker_env):
    server = make_server(**broker_env)
    reply = readiness(server)
    assert reply.status_code == 200, reply.text
    expected = {"sqlite": "ok"} | ({"redis": "ok"} if broker_env else {})
    assert reply.json() == {"success": True, "code": 200, "msg": "Ready", "checks": expected}
    health = httpx.get(f"{server.url}/healthz").json()  # liveness: as it was
    assert health["success"] is True and health["broker"] == ("redis" if broker_env else "local")


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: a disk that really fills up. Needs root (CAP_SYS_ADMIN)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield volume
    subprocess.run(["umount", "-l", str(volume)], check=True)


def fill(volume: Path) -> Path:
    """Write to the volume until it is full; returns the filler."""
    filler = volume / "filler"
    with filler.open("wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    return filler


def test_not_ready_while_the_disk_is_full(small_volume: Path, tmp_path: Path):
    """SQLite on a full disk takes no write: /readyz says so (503, naming SQLite) while
    /healthz still answers; freed, it is ready again."""
    server = Server(small_volume)
    server.log_path = tmp_path / "server.log"  # not on the disk that fills up
    server.start()
    try:
        assert readiness(server).status_code == 200
        filler = fill(small_volume)
        reply = readiness(server)
        assert reply.status_code == 503, reply.text
        body = reply.json()
        assert body["success"] is False and body["code"] == 503
        assert body["checks"]["sqlite"].startswith("not writable")
        assert "full" in body["checks"]["sqlite"]
        assert body["msg"].startswith("Not ready: sqlite not writable")
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive all the same
        filler.unlink()
        assert readiness(server).status_code == 200
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server of this test's own on a free port: (its URL, its process)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url, process
    process.kill()
    process.wait()


def test_not_ready_while_redis_is_unreachable(make_server, own_redis):
    url, redis_server = own_redis
    server = make_server(BROKER_URL=url)
    assert readiness(server).json()["checks"] == {"sqlite": "ok", "redis": "ok"}
    redis_server.kill()
    redis_server.wait()
    reply = readiness(server)
    assert reply.status_code == 503, reply.text
    checks = reply.json()["checks"]
    assert checks["sqlite"] == "ok" and checks["redis"] != "ok"
    assert reply.json()["msg"].startswith("Not ready: redis ")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
