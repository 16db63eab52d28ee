"""Starting the hub as a new user does: a bad setting, a taken port or an unwritable data
directory is one clear line and exit status 1, at once; the hub starts without uvloop (as
on Windows); a well-known placeholder token on a public address is warned about."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TOKEN, Server


def start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`python app.py` as a user starts it; it must end by itself within 20 s."""
    environment = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "HOST": "127.0.0.1"}
    return subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


def one_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_a_bad_setting_is_one_line(tmp_path: Path):
    assert one_line(start(tmp_path, PORT="abc")).startswith("config: PORT: ")
    line = one_line(start(tmp_path, ADMIN_USERNAME="admin", ADMIN_PASSWORD="short"))
    assert line == "config: ADMIN_PASSWORD must be at least 8 characters"


def test_a_taken_port_is_one_line(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(start(tmp_path, PORT=str(port)))
    assert line == f"port {port} is in use; set PORT"


def test_an_unwritable_data_dir_is_one_line(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a data dir below a file can't be made, even by root
    line = one_line(start(tmp_path, DATA_DIR=str(blocker / "data")))
    assert line.startswith(f"DATA_DIR {blocker / 'data'} is not writable by uid {os.getuid()}")


def test_the_hub_starts_without_uvloop(make_server, tmp_path: Path):
    shim = tmp_path / "no-uvloop"
    shim.mkdir()
    (shim / "uvloop.py").write_text("raise ImportError('no uvloop here, as on Windows')\n")
    server: Server = make_server(PYTHONPATH=str(shim))
    assert server.publish()["success"] is True


def test_a_placeholder_token_on_a_public_address_is_warned_about(make_server):
    warning = "SSE_TOKEN is a well-known placeholder"
    public: Server = make_server(HOST="0.0.0.0", SSE_TOKEN=TOKEN)
    assert warning in public.log()
    local: Server = make_server(SSE_TOKEN=TOKEN)  # 127.0.0.1: a laptop, fine
    assert warning not in local.log()
