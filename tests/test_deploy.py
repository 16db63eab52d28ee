"""Deploy: fly.toml and the Dockerfile (issue 10). Docker cannot build here, so this checks
what can be checked: fly.toml parses and agrees with the image and the app, and the
Dockerfile's install and start steps work in a fresh virtual environment."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
from conftest import ROOT, Server, free_port


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instructions(name: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile() if instruction == name]


def image_env() -> dict[str, str]:
    return dict(item.split("=", 1) for env in instructions("ENV") for item in shlex.split(env))


def copied_files() -> list[tuple[list[str], str]]:
    """Each COPY as (sources, destination), flags dropped."""
    copies = []
    for arguments in instructions("COPY"):
        *sources, destination = [word for word in arguments.split() if not word.startswith("--")]
        copies.append((sources, destination))
    return copies


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching rule wins;
    a rule matching a parent directory matches its contents)."""
    included = True
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated, pattern = rule.startswith("!"), rule.lstrip("!").strip("/")
        parts = Path(path).parts
        if any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            included = negated
    return included


def fly() -> dict:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def seconds(duration: str | int) -> float:
    return float(str(duration).removesuffix("s"))


def test_fly_toml_agrees_with_the_image_and_the_app(server: Server):
    config, env = fly(), image_env()
    service = config["http_service"]
    assert service["internal_port"] == int(env["PORT"])
    assert f"EXPOSE {env['PORT']}" in [f"EXPOSE {port}" for port in instructions("EXPOSE")]
    assert service["force_https"] is True
    (check,) = service["checks"]
    assert check["method"] == "GET" and check["path"] == "/readyz"
    assert httpx.get(f"{server.url}{check['path']}").status_code == 200
    (mount,) = config["mounts"]
    assert mount["destination"] == env["DATA_DIR"]
    assert instructions("VOLUME") == [env["DATA_DIR"]]
    # Streams are long-lived connections; the limits leave room for a drain.
    concurrency = service["concurrency"]
    assert concurrency["type"] == "connections"
    assert 0 < concurrency["soft_limit"] <= concurrency["hard_limit"]
    # Idle machines stop and start on demand.
    assert service["auto_stop_machines"] in ("stop", "suspend")
    assert service["auto_start_machines"] is True and service["min_machines_running"] == 0
    # Fly's signal is the one the server drains on, and it waits long enough for the drain.
    assert config["kill_signal"] == "SIGTERM" == instructions("STOPSIGNAL")[0]
    outside = {k: v for k, v in os.environ.items() if k != "SHUTDOWN_TIMEOUT"}
    app_env = {**outside, **env, **config.get("env", {})}  # as on Fly
    shutdown_timeout = subprocess.run(
        [sys.executable, "-c", "import app; print(app.app.settings.shutdown_timeout_s)"],
        cwd=ROOT,
        env=app_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert seconds(config["kill_timeout"]) > float(shutdown_timeout)


def test_the_image_holds_what_the_app_reads_and_nothing_secret():
    copied = {source for sources, _ in copied_files() for source in sources}
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert in_build_context(source), f".dockerignore keeps {source} out of the context"
    # Every file beside app.py that it opens (ROOT / "..." / ...) is in the image, but .env
    # (in a container, settings come from the environment: `fly secrets set`, `docker -e`)
    # and the default data directory (the image's DATA_DIR is the volume).
    paths = re.findall(r'ROOT((?: / "[^"]+")+)', (ROOT / "app.py").read_text())
    read = {"/".join(re.findall(r'"([^"]+)"', path)) for path in paths} - {".env", "data"}
    assert {"schema.sql", "frontend/dist"} <= read
    for name in read:
        assert any(name == c or name.startswith(c.rstrip("/") + "/") for c in copied), name
    for secret in (".env", "data/streaming-message.db", ".git/config", "tests/conftest.py"):
        assert not in_build_context(secret)
    (user,) = instructions("USER")
    assert user not in ("root", "0")
    assert instructions("FROM") == ["python:3.11-slim"]


def test_dockerfile_install_and_start_steps_work_in_a_fresh_venv(tmp_path: Path):
    """Play the Dockerfile in a directory standing in for the image's root: copy what it
    copies, run its pip install in a new virtual environment, start its CMD, ask its
    HEALTHCHECK, stop it with its STOPSIGNAL."""
    assert sys.version_info[:2] == (3, 11)  # the FROM image's Python
    image = tmp_path / "image"
    env = image_env()
    workdir = image / instructions("WORKDIR")[-1].lstrip("/")
    workdir.mkdir(parents=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for instruction, arguments in dockerfile():
        if instruction == "COPY":
            *sources, destination = [w for w in arguments.split() if not w.startswith("--")]
            target = workdir / destination
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
        elif instruction == "RUN" and arguments.startswith("pip install"):
            # The image keeps no pip cache; here pip's cache spares PyPI.
            command = [w for w in shlex.split(arguments) if w != "--no-cache-dir"]
            command[0] = str(venv / "bin" / "pip")
            subprocess.run(command, cwd=workdir, check=True, capture_output=True)

    port = free_port()
    data_dir = image / env["DATA_DIR"].lstrip("/")
    data_dir.mkdir(parents=True)
    run_env = {
        **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
        **env,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(data_dir),
    }
    command = json.loads(instructions("CMD")[-1])
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, cwd=workdir, env=run_env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200  # the frontend
        (healthcheck,) = instructions("HEALTHCHECK")
        probe = json.loads(healthcheck.split(" CMD ", 1)[1])
        assert subprocess.run(probe, cwd=workdir, env=run_env, timeout=10).returncode == 0
        assert (data_dir / "streaming-message.db").exists()
        process.send_signal(getattr(signal, instructions("STOPSIGNAL")[0]))
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
