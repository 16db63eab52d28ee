"""The Docker image, built from the unchanged Dockerfile by podman and run (issue 18).

No container registry is reachable here (PyPI, npm and Debian's archive are), so the Dockerfile's
`python:3.11-slim` is stood in for by Debian bookworm's own Python 3.11: debootstrap makes it from
the mirror that apt uses, and it stays in podman's storage, so only a first run makes it (about a
minute). `podman build --format docker` keeps the HEALTHCHECK (an OCI image has none); the host's
CA bundle is mounted for pip. Where podman can't run, the tests skip and say why;
REQUIRE_CONTAINER=1 (`make test-container` in CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NoReturn

import httpx
import pytest
from conftest import ROOT
from httpx_sse import ServerSentEvent, aconnect_sse

BASE_IMAGE = "docker.io/library/python:3.11-slim"
DEBIAN_RELEASE = "bookworm"  # its python3 is 3.11, as the image's
IMAGE = "localhost/streaming-message:test"
# The host's CA bundle, mounted for pip at Debian's path (the same in the image).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# No systemd here: cgroupfs, and events to a file. runc is the runtime Debian's podman comes with.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
TOKEN = "container-test-token"
SHUTDOWN_TIMEOUT = 3
APP_UID = 10001
# What the Dockerfile copies into /app, and only that.
RUNTIME_FILES = ["requirements.txt", "app.py", "schema.sql", "quotes.json", "frontend/dist"]


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_CONTAINER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class Podman:
    """Runs podman with this file's containers.conf."""

    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: IO[bytes] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *args],
            env=self.env,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"podman {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    if not (shutil.which("podman") and shutil.which("runc")):
        unavailable("podman or runc is missing: `apt-get install -y podman runc debootstrap`")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    podman = Podman(conf)
    info = podman("info", check=False)
    if info.returncode:
        unavailable(f"podman cannot run here: {info.stderr.strip()[-400:]}")
    return podman


def debian_mirror() -> str:
    """The URI of the Debian archive that apt uses here for DEBIAN_RELEASE."""
    sources = Path("/etc/apt/sources.list.d")
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*"))]:
        if not path.is_file():
            continue
        lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in "\n".join(lines).split("\n\n"):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
                if (
                    "deb" in fields.get("Types", "").split()
                    and DEBIAN_RELEASE in fields.get("Suites", "").split()
                ):
                    return fields["URIs"].split()[0]
        for line in lines:  # one-line style
            match = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if match and match[2] == DEBIAN_RELEASE:
                return match[1]
    unavailable(f"apt has no source for Debian {DEBIAN_RELEASE}")


@pytest.fixture(scope="module")
def base_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The stand-in for python:3.11-slim, made unless podman's storage has it."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if not shutil.which("debootstrap") or os.geteuid() != 0:
        unavailable(f"{BASE_IMAGE} is missing, and making it needs debootstrap and root")
    rootfs = tmp_path_factory.mktemp("base") / "rootfs"
    debootstrap = [
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates",
        DEBIAN_RELEASE,
        str(rootfs),
        debian_mirror(),
    ]
    try:
        done = subprocess.run(debootstrap, capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        # The names python:3.11-slim has, and none of apt's downloads.
        (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        (rootfs / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman(
            "import",
            # Debian's pip refuses to install outside a venv unless told; the image's pip does.
            "--change",
            "ENV PIP_BREAK_SYSTEM_PACKAGES=1",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            "--change",
            f'LABEL description="Debian {DEBIAN_RELEASE}, standing in for python:3.11-slim"',
            "-",
            BASE_IMAGE,
            stdin=tar.stdout,
            timeout=300,
        )
        assert tar.wait() == 0
    finally:
        # Not while a debootstrap cut short left /proc or /dev mounted in it.
        if str(rootfs) not in Path("/proc/self/mounts").read_text():
            shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(podman: Podman, base_image: str) -> str:
    """The image of this tree's Dockerfile. The last run's image is removed once replaced (the
    layers both share stay: the build's cache)."""
    previous = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).stdout
    build = ["build", "--format", "docker", "--pull=never", "--tag", IMAGE]
    if CA_BUNDLE.is_file():
        build += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    podman(*build, str(ROOT), timeout=900)
    current = podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout
    if previous and previous != current:
        podman("rmi", previous.strip(), check=False)
    return IMAGE


class Container:
    def __init__(self, podman: Podman, name: str) -> None:
        self.podman = podman
        self.name = name
        host_port = podman("port", name, "8000/tcp").stdout.strip()
        self.url = f"http://{host_port}"

    def exec(self, *command: str, workdir: str = "/") -> str:
        return self.podman("exec", "--workdir", workdir, self.name, *command).stdout

    def inspect(self, template: str) -> str:
        return self.podman("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        done = self.podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.inspect("{{.State.Running}}") == "true", self.logs()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                assert time.monotonic() < deadline, self.logs()
                time.sleep(0.2)

    def publish(self, data: str) -> int:
        reply = httpx.post(
            f"{self.url}/api/v1/send",
            json={"room": "lobby", "speaker": "s", "data": {"text": data}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert reply.status_code == 202, reply.text
        return reply.json()["id"]


Start = Callable[[str], Container]


@pytest.fixture(scope="module")
def start(podman: Podman, image: str) -> Iterator[Start]:
    """start(volume): a container of the image on that named volume (made if new), its port 8000
    published on a free loopback port; all removed, with their volumes, after the module."""
    names, volumes = [], set()
    serial = itertools.count()

    def run(volume: str) -> Container:
        name = f"sm-test-{os.getpid()}-{next(serial)}"
        volume = f"sm-test-{os.getpid()}-{volume}"
        names.append(name)
        volumes.add(volume)
        podman(
            "run",
            "--detach",
            "--name",
            name,
            "--publish",
            "127.0.0.1::8000",
            "--volume",
            f"{volume}:/data",
            "--env",
            f"SSE_TOKEN={TOKEN}",
            "--env",
            f"SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT}",
            # no test reaches the internet: the quote feed's API is down
            "--env",
            "HITOKOTO_URL=http://127.0.0.1:9/",
            image,
        )
        container = Container(podman, name)
        container.wait_until_serving()
        return container

    yield run
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)
    for volume in volumes:
        podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture(scope="module")
def container(start: Start) -> Container:
    return start("shared")


async def next_message(events: object) -> ServerSentEvent:
    """The next unnamed (message) event; the hello, presence and others are skipped."""
    async for event in events:  # type: ignore[attr-defined]
        if event.event == "message":
            return event
    raise AssertionError("the stream ended")


async def test_health_and_a_publish_reaches_a_subscriber(container: Container) -> None:
    health = httpx.get(f"{container.url}/healthz")
    assert health.status_code == 200 and health.json()["success"] is True
    async with (
        httpx.AsyncClient(base_url=container.url, timeout=10) as client,
        aconnect_sse(client, "GET", "/api/v1/events/lobby") as source,
    ):
        events = source.aiter_sse()
        hello = await anext(events)
        assert hello.event == "meta"
        sent = await asyncio.to_thread(container.publish, "hello from the image")
        received = await asyncio.wait_for(next_message(events), 10)
    assert received.id == str(sent)
    assert json.loads(received.data)["data"] == {"text": "hello from the image"}


def test_the_server_runs_as_uid_10001(container: Container) -> None:
    status = container.exec("cat", "/proc/1/status")  # the server is the container's process 1
    uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)[1].split()  # type: ignore[index]
    assert uids == [str(APP_UID)] * 4  # real, effective, saved, filesystem
    # The volume is its: the database it wrote there.
    assert container.exec("stat", "-c", "%u", "/data/streaming-message.db").strip() == str(APP_UID)


def test_podman_healthcheck_passes(podman: Podman, container: Container) -> None:
    image = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    assert image["Healthcheck"]["Test"][0] == "CMD"  # kept, as --format docker does
    done = podman("healthcheck", "run", container.name, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + container.logs()
    assert container.inspect("{{.State.Health.Status}}") == "healthy"


def test_app_holds_only_the_runtime_files(container: Container) -> None:
    expected = {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
        for name in RUNTIME_FILES
        for path in [ROOT / name, *(ROOT / name).rglob("*")]
        if path.is_file()
    }
    entries = container.exec("find", "/app", "-mindepth", "1", "-printf", r"%y %P\n").split("\n")
    files = sorted(entry[2:] for entry in entries if entry.startswith("f "))
    directories = {entry[2:] for entry in entries if entry.startswith("d ")}
    assert files == sorted(expected)
    assert directories == {str(p) for name in expected for p in Path(name).parents} - {"."}
    listing = container.exec("sha256sum", *files, workdir="/app")
    found = {
        name: digest for digest, name in (line.split("  ", 1) for line in listing.splitlines())
    }
    assert found == expected  # this tree's files


async def test_stop_ends_streams_in_time_and_a_new_container_replays_the_history(
    podman: Podman, start: Start
) -> None:
    first = start("history")
    sent = [await asyncio.to_thread(first.publish, f"message {n}") for n in range(3)]
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=30) as client,
        aconnect_sse(client, "GET", "/api/v1/events/lobby") as source,
    ):
        events = source.aiter_sse()
        assert (await anext(events)).event == "meta"
        rest = asyncio.create_task(collect_rest(events))
        stopping = time.monotonic()
        await asyncio.to_thread(
            podman, "stop", "--time", str(SHUTDOWN_TIMEOUT + 30), first.name, timeout=60
        )
        took = time.monotonic() - stopping
        received = await asyncio.wait_for(rest, 10)
    print(f"podman stop: {took:.2f} s (SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT})")
    # Ended by the server (not killed by podman after its --time): exit status 0.
    assert first.inspect("{{.State.ExitCode}}") == "0", first.logs()
    assert took < SHUTDOWN_TIMEOUT + 3
    assert received and received[-1].event == "shutdown", received
    assert received[-1].json()["reconnect"] is True

    second = start("history")  # the same volume
    async with (
        httpx.AsyncClient(base_url=second.url, timeout=10) as client,
        aconnect_sse(
            client, "GET", "/api/v1/events/lobby", headers={"Last-Event-ID": "0"}
        ) as source,
    ):
        events = source.aiter_sse()
        replayed = [await asyncio.wait_for(next_message(events), 10) for _ in sent]
    assert [int(event.id) for event in replayed] == sent
    assert [json.loads(e.data)["data"]["text"] for e in replayed] == [
        f"message {n}" for n in range(3)
    ]


async def collect_rest(events: object) -> list[ServerSentEvent]:
    return [event async for event in events]  # type: ignore[attr-defined]
