"""Users, login, tokens, room ownership and private rooms (issue 3), attacks included."""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import itertools
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import jwt
import pytest
from conftest import ROOT, TOKEN, Server, collect, subscribe

ADMIN_PASSWORD = "admin password 1"
SECRET_KEY = "a test secret key that is long enough: 0123456789"
names = itertools.count()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module: an admin from the environment, a known SECRET_KEY (to
    forge tokens with), debug logging (searched for secrets), no address login limit and no
    wait after a failed login (tests try a wrong password, then the right one)."""
    server = Server(
        tmp_path_factory.mktemp("auth"),
        ADMIN_USERNAME="admin",
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        SECRET_KEY=SECRET_KEY,
        LOGIN_MAX_FAILURES_PER_ADDRESS="100000",
        LOGIN_DELAY_S="0",
        LOG_LEVEL="DEBUG",
    ).start()
    yield server
    server.stop()


@dataclass
class Session:
    user: dict
    password: str
    access: str
    refresh: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


def login(server: Server, username: str, password: str) -> Session:
    reply = httpx.post(
        f"{server.url}/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return Session(body["user"], password, body["access_token"], body["refresh_token"])


@pytest.fixture(scope="module")
def admin(hub: Server) -> Session:
    return login(hub, "admin", ADMIN_PASSWORD)


def new_user(server: Server, role: str = "user") -> Session:
    """A fresh user, created with the root token and logged in."""
    username, password = f"user{next(names)}", f"password-{os.urandom(6).hex()}"
    reply = httpx.post(
        f"{server.url}/api/v1/users",
        json={"username": username, "password": password, "role": role},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert reply.status_code == 201, reply.text
    return login(server, username, password)


def new_room(server: Server, owner: Session, **fields) -> str:
    room = f"room{next(names)}"
    reply = httpx.post(
        f"{server.url}/api/v1/rooms", json={"id": room, **fields}, headers=owner.auth
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["room"]["owner"] == owner.user["id"]
    return room


def new_token(server: Server, owner: Session, **fields) -> str:
    reply = httpx.post(f"{server.url}/api/v1/tokens", json=fields, headers=owner.auth)
    assert reply.status_code == 201, reply.text
    secret = reply.json()["token"]
    assert secret.startswith("smt_")
    return secret


def publish(server: Server, room: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/send",
        json={"room": room, "speaker": "s", "data": {"message": "hi"}},
        headers={"Authorization": f"Bearer {token}"},
    )


def stored_count(server: Server, room: str) -> int:
    with sqlite3.connect(server.data_dir / "streaming-message.db") as db:
        return db.execute("SELECT COUNT(*) FROM messages WHERE room = ?", (room,)).fetchone()[0]


# ---------------------------------------------------------------------------------------
# Users and login
# ---------------------------------------------------------------------------------------


def test_login_answers_a_pinned_jwt_and_a_refresh_token(hub: Server):
    reply = httpx.post(
        f"{hub.url}/api/v1/auth/login", json={"username": "ADMIN", "password": ADMIN_PASSWORD}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 6 * 3600 and body["refresh_expires_in"] == 14 * 86400
    assert body["user"]["username"] == "admin" and body["user"]["role"] == "admin"
    assert reply.headers["cache-control"] == "no-store"
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    claims = jwt.decode(
        body["access_token"],
        SECRET_KEY,
        algorithms=["HS256"],
        audience="streaming-message/api",
        issuer="streaming-message",
    )
    assert claims["sub"] == body["user"]["id"] and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 6 * 3600 and claims["jti"]
    assert len(body["refresh_token"]) >= 40 and "." not in body["refresh_token"]
    me = httpx.get(f"{hub.url}/api/v1/auth/me", headers=auth(body["access_token"])).json()
    assert me["principal"] == {
        "kind": "session",
        "name": "admin",
        "role": "admin",
        "user_id": body["user"]["id"],
        "token": None,
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_cookies_are_httponly_strict_and_scoped_to_their_paths(hub: Server):
    body = {"username": "admin", "password": ADMIN_PASSWORD}
    reply = httpx.post(f"{hub.url}/api/v1/auth/login", json=body)
    cookies = {c.split("=", 1)[0]: c for c in reply.headers.get_list("set-cookie")}
    refresh, session = cookies["sm_refresh"], cookies["sm_session"]
    assert f"sm_refresh={reply.json()['refresh_token']};" in refresh
    assert f"sm_session={reply.json()['access_token']};" in session
    for cookie, path, max_age in [
        (refresh, "/api/v1/auth", 14 * 86400),
        (session, "/api/v1/events", 6 * 3600),
    ]:
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert f"Path={path};" in cookie + ";" and f"Max-Age={max_age}" in cookie
        assert "Secure" not in cookie


def test_usernames_are_unique_ignoring_case_and_validated(hub: Server):
    root = auth(hub.token)
    url = f"{hub.url}/api/v1/users"
    name = f"Case{next(names)}"
    assert httpx.post(url, json={"username": name, "password": "x" * 8}, headers=root).is_success
    again = httpx.post(url, json={"username": name.upper(), "password": "y" * 8}, headers=root)
    assert again.status_code == 409 and "taken" in again.json()["msg"]
    for body, fragment in [
        ({"username": "has space", "password": "x" * 8}, "username"),
        ({"username": "", "password": "x" * 8}, "username"),
        ({"username": "short", "password": "x" * 7}, "password"),
        ({"username": "nopass"}, "password"),
        ({"username": "badrole", "password": "x" * 8, "role": "root"}, "role"),
    ]:
        reply = httpx.post(url, json=body, headers=root)
        assert reply.status_code == 400 and fragment in reply.json()["msg"], reply.text


def test_no_default_password(make_server):
    with pytest.raises(RuntimeError, match="ADMIN_PASSWORD"):
        make_server(ADMIN_USERNAME="admin")
    server = make_server(LOGIN_DELAY_S="0")  # each guess gets its answer, not a wait
    for password in ["admin", "password", "", "changeme"]:
        reply = httpx.post(
            f"{server.url}/api/v1/auth/login", json={"username": "admin", "password": password}
        )
        assert reply.status_code == 401
    assert "no admin user" in server.log()
    with sqlite3.connect(server.data_dir / "streaming-message.db") as db:
        assert db.execute("SELECT COUNT(*) FROM users").fetchone() == (0,)


def test_create_user_command_while_the_server_runs(make_server):
    server = make_server()
    env = {**os.environ, "DATA_DIR": str(server.data_dir)}
    password = "from stdin 123"

    def command(*args: str, stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "app.py", "create-user", *args],
            cwd=ROOT,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    made = command("Carol", "--admin", stdin=password + "\n")
    assert made.returncode == 0, made.stderr
    assert "created admin Carol" in made.stdout
    assert password not in made.stdout + made.stderr
    session = login(server, "carol", password)
    assert session.user["role"] == "admin"
    users = httpx.get(f"{server.url}/api/v1/users", headers=session.auth)
    assert users.status_code == 200
    again = command("CAROL", stdin="another password\n")
    assert again.returncode != 0 and "taken" in again.stderr
    short = command("dave", stdin="short\n")
    assert short.returncode != 0 and "password" in short.stderr
    plain = command("erin", stdin="erin password\n")
    assert plain.returncode == 0 and login(server, "erin", "erin password").user["role"] == "user"


def test_secret_key_is_generated_once_and_kept_private(make_server):
    server = make_server(ADMIN_USERNAME="admin", ADMIN_PASSWORD=ADMIN_PASSWORD, SSE_TOKEN="")
    key_file = server.data_dir / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    assert len(key) >= 64
    session = login(server, "admin", ADMIN_PASSWORD)
    server.stop()
    server.start()
    assert key_file.read_text() == key
    me = httpx.get(f"{server.url}/api/v1/auth/me", headers=session.auth)
    assert me.status_code == 200, "a token from before the restart still verifies"
    # without SSE_TOKEN there is no root token: the old literal is just a wrong token
    assert publish(server, "lobby", TOKEN).status_code == 401
    assert key not in server.log()


def test_short_secret_key_refuses_to_start(make_server):
    with pytest.raises(RuntimeError, match="SECRET_KEY must be at least 32"):
        make_server(SECRET_KEY="short")


# ---------------------------------------------------------------------------------------
# Refresh, logout, password change, disabled users
# ---------------------------------------------------------------------------------------


def refresh(server: Server, token: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/auth/refresh", json={"refresh_token": token})


def test_refresh_rotates_and_reuse_revokes_the_family(hub: Server):
    first = new_user(hub)
    second = refresh(hub, first.refresh)
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first.refresh
    assert second.json()["access_token"] != first.access
    third = refresh(hub, second.json()["refresh_token"])
    assert third.status_code == 200
    latest = third.json()
    assert httpx.get(f"{hub.url}/api/v1/auth/me", headers=auth(latest["access_token"])).is_success

    reused = refresh(hub, first.refresh)  # a stolen, already rotated token comes back
    assert reused.status_code == 401 and "reused" in reused.json()["msg"]
    assert refresh(hub, latest["refresh_token"]).status_code == 401
    me = httpx.get(f"{hub.url}/api/v1/auth/me", headers=auth(latest["access_token"]))
    assert me.status_code == 401 and "Session ended" in me.json()["msg"]
    assert "refresh token reused" in hub.log()
    # another login of the same user is a different family and keeps working
    other = login(hub, first.user["username"], first.password)
    assert refresh(hub, other.refresh).status_code == 200


def test_refresh_and_logout_with_the_cookie(hub: Server):
    user = new_user(hub)
    # a browser: it sends Origin with every POST, which cookie credentials need (CSRF)
    with httpx.Client(base_url=hub.url, headers={"Origin": hub.url}) as browser:
        reply = browser.post(
            "/api/v1/auth/login",
            json={"username": user.user["username"], "password": user.password},
        )
        access = reply.json()["access_token"]
        refreshed = browser.post("/api/v1/auth/refresh")  # no body: the cookie
        assert refreshed.status_code == 200, refreshed.text
        assert browser.cookies["sm_refresh"] == refreshed.json()["refresh_token"]
        assert browser.get("/api/v1/auth/me", headers=auth(access)).status_code == 200
        out = browser.post("/api/v1/auth/logout")
        assert out.status_code == 200
        assert all("Max-Age=0" in c for c in out.headers.get_list("set-cookie"))
        assert "sm_refresh" not in browser.cookies
        renewed = refreshed.json()
        assert refresh(hub, renewed["refresh_token"]).status_code == 401
        me = browser.get("/api/v1/auth/me", headers=auth(renewed["access_token"]))
        assert me.status_code == 401
        assert browser.post("/api/v1/auth/refresh").status_code == 401


def test_logout_with_the_access_token(hub: Server):
    user = new_user(hub)
    reply = httpx.post(f"{hub.url}/api/v1/auth/logout", headers=user.auth)
    assert reply.status_code == 200
    assert httpx.get(f"{hub.url}/api/v1/auth/me", headers=user.auth).status_code == 401
    assert refresh(hub, user.refresh).status_code == 401
    assert httpx.post(f"{hub.url}/api/v1/auth/logout").status_code == 401


def test_changing_the_password_ends_the_users_sessions(hub: Server):
    first = new_user(hub)
    name = first.user["username"]
    second = login(hub, name, first.password)
    url = f"{hub.url}/api/v1/auth/password"
    wrong = httpx.post(
        url, json={"current_password": "not it!!", "new_password": "y" * 12}, headers=first.auth
    )
    assert wrong.status_code == 401 and "current_password" in wrong.json()["msg"]
    short = httpx.post(
        url, json={"current_password": first.password, "new_password": "y"}, headers=first.auth
    )
    assert short.status_code == 400
    changed = httpx.post(
        url,
        json={"current_password": first.password, "new_password": "a new password"},
        headers=first.auth,
    )
    assert changed.status_code == 200, changed.text
    for session in (first, second):
        assert refresh(hub, session.refresh).status_code == 401
        assert httpx.get(f"{hub.url}/api/v1/auth/me", headers=session.auth).status_code == 401
    new_access = auth(changed.json()["access_token"])
    assert httpx.get(f"{hub.url}/api/v1/auth/me", headers=new_access).status_code == 200
    old = httpx.post(
        f"{hub.url}/api/v1/auth/login", json={"username": name, "password": first.password}
    )
    assert old.status_code == 401
    login(hub, name, "a new password")


def test_disabled_user_cannot_log_in_or_use_old_tokens(hub: Server, admin: Session):
    user = new_user(hub)
    room = new_room(hub, user)
    api_token = new_token(hub, user, name="bot", rooms="*", rights=["publish"])
    assert publish(hub, room, api_token).status_code == 202
    user_url = f"{hub.url}/api/v1/users/{user.user['id']}"
    disabled = httpx.patch(user_url, json={"disabled": True}, headers=admin.auth)
    assert disabled.status_code == 200 and disabled.json()["user"]["disabled"] is True

    credentials = {"username": user.user["username"], "password": user.password}
    rejected = httpx.post(f"{hub.url}/api/v1/auth/login", json=credentials)
    wrong = httpx.post(
        f"{hub.url}/api/v1/auth/login", json={**credentials, "password": "wrong password"}
    )
    assert rejected.status_code == wrong.status_code == 401
    assert rejected.json() == wrong.json()
    assert publish(hub, room, user.access).status_code == 401
    assert publish(hub, room, api_token).status_code == 401
    assert refresh(hub, user.refresh).status_code == 401
    assert httpx.get(f"{hub.url}/api/v1/auth/me", headers=user.auth).status_code == 401

    httpx.patch(user_url, json={"disabled": False}, headers=admin.auth).raise_for_status()
    assert publish(hub, room, login(hub, **credentials).access).status_code == 202


# ---------------------------------------------------------------------------------------
# Brute force
# ---------------------------------------------------------------------------------------


async def test_failed_logins_are_limited_per_username_at_an_address(make_server):
    """The hard limit (the growing wait before it: tests/test_limits.py)."""
    server = make_server(
        ADMIN_USERNAME="admin",
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        LOGIN_MAX_FAILURES="3",
        LOGIN_WINDOW_S="3",
        LOGIN_DELAY_S="0",
    )
    url = f"{server.url}/api/v1/auth/login"
    async with httpx.AsyncClient() as client:
        guesses = [
            client.post(url, json={"username": "admin", "password": f"guess {i}"}) for i in range(8)
        ]
        replies = await asyncio.gather(*guesses)  # in parallel: the limit still holds
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses == [401] * 3 + [429] * 5
    right = httpx.post(url, json={"username": "admin", "password": ADMIN_PASSWORD})
    assert right.status_code == 429, "even the right password waits"
    body = right.json()
    assert body["success"] is False and body["code"] == 429 and "Too many" in body["msg"]
    assert 1 <= int(right.headers["retry-after"]) <= 3 and body["retry_after"] >= 1
    other = httpx.post(url, json={"username": "someone", "password": "a guess"})
    assert other.status_code == 401, "another username is not locked"
    await asyncio.sleep(int(right.headers["retry-after"]) + 0.2)
    assert httpx.post(url, json={"username": "admin", "password": ADMIN_PASSWORD}).is_success


def test_failed_logins_are_limited_per_address(make_server):
    server = make_server(LOGIN_MAX_FAILURES_PER_ADDRESS="4", LOGIN_WINDOW_S="60")
    url = f"{server.url}/api/v1/auth/login"
    for i in range(4):
        reply = httpx.post(url, json={"username": f"name{i}", "password": "a guess"})
        assert reply.status_code == 401
    limited = httpx.post(url, json={"username": "fresh", "password": "a guess"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0


def test_unknown_user_and_wrong_password_get_the_same_reply(hub: Server):
    url = f"{hub.url}/api/v1/auth/login"
    unknown = httpx.post(url, json={"username": "nobody", "password": "a password"})
    wrong = httpx.post(url, json={"username": "admin", "password": "a password"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.content == wrong.content
    assert unknown.json()["msg"] == "Invalid username or password"
    drop = {"date"}
    assert {k: v for k, v in unknown.headers.items() if k not in drop} == {
        k: v for k, v in wrong.headers.items() if k not in drop
    }
    assert "failed login for an unknown user" in hub.log()
    assert "nobody" not in hub.log(), "typed names that match no user are not logged"


# ---------------------------------------------------------------------------------------
# Forged and broken access tokens
# ---------------------------------------------------------------------------------------


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forgeries(token: str) -> dict[str, tuple[str, str]]:
    """Variants of a real access token: name -> (token, expected message)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    header, payload, signature = token.split(".")
    now = int(time.time())
    return {
        "expired": (
            jwt.encode({**claims, "iat": now - 7200, "exp": now - 60}, SECRET_KEY, "HS256"),
            "Token expired",
        ),
        "tampered": (
            f"{header}.{b64({**claims, 'role': 'admin', 'sub': 'someone'})}.{signature}",
            "Invalid token",
        ),
        "wrong audience": (
            jwt.encode({**claims, "aud": "another-app"}, SECRET_KEY, "HS256"),
            "Invalid token",
        ),
        "wrong issuer": (
            jwt.encode({**claims, "iss": "someone-else"}, SECRET_KEY, "HS256"),
            "Invalid token",
        ),
        "alg none": (f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.", "Invalid token"),
        "HS512": (jwt.encode(claims, SECRET_KEY, "HS512"), "Invalid token"),
        "other key": (jwt.encode(claims, "another key " * 4, "HS256"), "Invalid token"),
        "no session id": (
            jwt.encode({k: v for k, v in claims.items() if k != "sid"}, SECRET_KEY, "HS256"),
            "Invalid token",
        ),
        "garbage": ("not.a.jwt", "Invalid token"),
    }


def test_forged_and_broken_access_tokens_are_401(hub: Server, admin: Session):
    claims = jwt.decode(admin.access, options={"verify_signature": False})
    resigned = jwt.encode(claims, SECRET_KEY, "HS256")
    assert publish(hub, "lobby", resigned).status_code == 202, "the forging itself is sound"
    for name, (token, message) in forgeries(admin.access).items():
        published = publish(hub, "lobby", token)
        assert published.status_code == 401, name
        assert published.json()["msg"] == message, name
        me = httpx.get(f"{hub.url}/api/v1/auth/me", headers=auth(token))
        assert me.status_code == 401 and me.json()["msg"] == message, name
        stream = httpx.get(f"{hub.url}/api/v1/events?role=controller&token={token}")
        assert stream.status_code == 401, name


# ---------------------------------------------------------------------------------------
# Rooms
# ---------------------------------------------------------------------------------------


def test_rooms_belong_to_their_creator_and_admins_manage_all(hub: Server, admin: Session):
    alice, bob = new_user(hub), new_user(hub)
    room = new_room(hub, alice, title="Alice's stage")
    url = f"{hub.url}/api/v1/rooms/{room}"
    settings = {
        "title": "Stage",
        "private": False,
        "history_size": 2,
        "settings": {"typewriter_speed": 30, "theme": "dark"},
    }
    updated = httpx.patch(url, json=settings, headers=alice.auth)
    assert updated.status_code == 200, updated.text
    assert httpx.get(url).json()["room"] | settings == httpx.get(url).json()["room"]
    merged = httpx.patch(url, json={"settings": {"theme": None}}, headers=alice.auth)
    assert merged.json()["room"]["settings"] == {"typewriter_speed": 30}

    assert publish(hub, room, alice.access).status_code == 202
    assert publish(hub, "lobby", alice.access).status_code == 403, "the default room is admins'"
    denied = publish(hub, room, bob.access)
    assert denied.status_code == 403 and denied.json()["msg"] == f"No publish right on room {room}"
    assert httpx.patch(url, json={"title": "mine"}, headers=bob.auth).status_code == 403
    assert httpx.delete(url, headers=bob.auth).status_code == 403
    assert publish(hub, room, admin.access).status_code == 202
    assert httpx.patch(url, json={"title": "admin's"}, headers=admin.auth).status_code == 200
    for _ in range(3):
        publish(hub, room, alice.access).raise_for_status()
    assert stored_count(hub, room) == 2, "history_size applies"
    root_room = httpx.post(f"{hub.url}/api/v1/rooms", json={"id": "rootroom"}, headers=auth(TOKEN))
    assert root_room.status_code == 201 and root_room.json()["room"]["owner"] is None


BAD_ROOM_BODIES = [
    ({"title": "x" * 201}, "title"),
    ({"title": 5}, "title"),
    ({"private": "yes"}, "private"),
    ({"history_size": 0}, "history_size"),
    ({"history_size": 2.5}, "history_size"),
    ({"settings": []}, "settings"),
    ({"settings": {"font": "x"}}, "Unknown field: settings.font"),
    ({"settings": {"typewriter_speed": 0}}, "typewriter_speed"),
    ({"settings": {"typewriter_speed": True}}, "typewriter_speed"),
    ({"settings": {"theme": ""}}, "theme"),
    ({"owner": "someone"}, "Unknown field: owner"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_ROOM_BODIES)
def test_bad_room_settings_are_400_and_change_nothing(hub: Server, admin: Session, body, fragment):
    url = f"{hub.url}/api/v1/rooms/lobby"
    before = httpx.get(url).json()["room"]
    reply = httpx.patch(url, json=body, headers=admin.auth)
    assert reply.status_code == 400 and fragment in reply.json()["msg"], reply.text
    assert httpx.get(url).json()["room"] == before
    created = httpx.post(
        f"{hub.url}/api/v1/rooms", json={"id": "badroom", **body}, headers=admin.auth
    )
    assert created.status_code == 400
    assert httpx.get(f"{hub.url}/api/v1/rooms/badroom").status_code == 404


async def test_deleting_a_room_ends_its_streams_and_removes_its_history(hub: Server):
    owner = new_user(hub)
    room = new_room(hub, owner)
    for _ in range(3):
        publish(hub, room, owner.access).raise_for_status()
    async with subscribe(f"{hub.url}/api/v1/events/{room}") as events:
        reply = httpx.delete(f"{hub.url}/api/v1/rooms/{room}", headers=owner.auth)
        assert reply.status_code == 200, reply.text
        async with asyncio.timeout(10):
            last = [event async for event in events][-1]  # the stream ends
    assert last.event == "deleted" and json.loads(last.data) == {"room": room}
    assert stored_count(hub, room) == 0
    assert httpx.get(f"{hub.url}/api/v1/rooms/{room}").status_code == 404
    assert publish(hub, room, owner.access).status_code == 404
    assert room not in {r["id"] for r in httpx.get(f"{hub.url}/api/v1/rooms").json()["rooms"]}
    again = httpx.post(f"{hub.url}/api/v1/rooms", json={"id": room}, headers=owner.auth)
    # ids go on from the deleted room's: a client resuming with one of them misses nothing
    assert again.status_code == 201 and again.json()["room"]["last_id"] == 3
    assert publish(hub, room, owner.access).json()["id"] == 4
    lobby = httpx.delete(f"{hub.url}/api/v1/rooms/lobby", headers=auth(hub.token))
    assert lobby.status_code == 409


async def test_publishes_racing_a_room_deletion_leave_no_orphans(hub: Server):
    owner = new_user(hub)
    room = new_room(hub, owner)
    async with httpx.AsyncClient() as client:
        body = {"room": room, "speaker": "s", "data": {}}
        sends = [
            client.post(f"{hub.url}/api/v1/send", json=body, headers=owner.auth) for _ in range(40)
        ]
        deletion = client.delete(f"{hub.url}/api/v1/rooms/{room}", headers=owner.auth)
        *published, deleted = await asyncio.gather(*sends, deletion)
    assert deleted.status_code == 200
    assert {reply.status_code for reply in published} <= {202, 404}
    assert stored_count(hub, room) == 0
    recreated = httpx.post(f"{hub.url}/api/v1/rooms", json={"id": room}, headers=owner.auth)
    assert recreated.status_code == 201
    assert publish(hub, room, owner.access).status_code == 202


# ---------------------------------------------------------------------------------------
# API tokens
# ---------------------------------------------------------------------------------------


def test_api_tokens_are_shown_once_listed_without_secret_and_revocable(hub: Server):
    user, other = new_user(hub), new_user(hub)
    room = new_room(hub, user)
    created = httpx.post(
        f"{hub.url}/api/v1/tokens",
        json={"name": "OBS", "rooms": [room.upper()], "rights": ["publish", "subscribe"]},
        headers=user.auth,
    )
    assert created.status_code == 201
    secret, record = created.json()["token"], created.json()["api_token"]
    assert record["rooms"] == [room] and record["rights"] == ["publish", "subscribe"]
    listed = httpx.get(f"{hub.url}/api/v1/tokens", headers=user.auth)
    assert listed.json()["tokens"] == [record]
    assert (
        secret not in listed.text and hashlib.sha256(secret.encode()).hexdigest() not in listed.text
    )
    assert httpx.get(f"{hub.url}/api/v1/tokens", headers=other.auth).json()["tokens"] == []
    assert publish(hub, room, secret).status_code == 202

    url = f"{hub.url}/api/v1/tokens/{record['id']}"
    assert httpx.delete(url, headers=other.auth).status_code == 404, "not theirs"
    assert httpx.delete(url, headers=user.auth).status_code == 200
    assert httpx.delete(url, headers=user.auth).status_code == 404
    revoked = publish(hub, room, secret)
    assert revoked.status_code == 401 and revoked.json()["msg"] == "Invalid token"
    assert httpx.get(f"{hub.url}/api/v1/tokens", headers=user.auth).json()["tokens"] == []


def test_api_tokens_work_in_the_three_forms(hub: Server):
    user = new_user(hub)
    room = new_room(hub, user)
    secret = new_token(hub, user, name="bot", rooms=[room], rights=["publish"])
    body = {"room": room, "speaker": "s", "data": {"message": "hi"}}
    forms = [
        httpx.post(f"{hub.url}/api/v1/send", json=body, headers=auth(secret)),
        httpx.post(f"{hub.url}/api/v1/send", json={**body, "token": secret}),
        httpx.get(
            f"{hub.url}/api/v1/send/bot", params={"token": secret, "msg": "hi", "room": room}
        ),
        httpx.post(f"{hub.url}/api/v1/send", params={"token": secret}, json=body),
    ]
    assert [reply.status_code for reply in forms] == [202] * 4, [r.text for r in forms]


def test_token_scope_rights_and_expiry(hub: Server):
    alice, bob = new_user(hub), new_user(hub)
    room_a, room_b, bobs = new_room(hub, alice), new_room(hub, alice), new_room(hub, bob)
    only_a = new_token(hub, alice, name="a", rooms=[room_a], rights=["publish"])
    assert publish(hub, room_a, only_a).status_code == 202
    denied = publish(hub, room_b, only_a)
    assert (
        denied.status_code == 403 and denied.json()["msg"] == f"No publish right on room {room_b}"
    )
    assert stored_count(hub, room_b) == 0
    reader = new_token(hub, alice, name="r", rooms=[room_a], rights=["subscribe"])
    assert publish(hub, room_a, reader).status_code == 403
    every = new_token(hub, alice, name="all", rooms="*", rights=["publish"])
    assert publish(hub, room_a, every).status_code == 202
    assert publish(hub, room_b, every).status_code == 202
    assert publish(hub, bobs, every).status_code == 403, "all of alice's rooms, not bob's"
    assert publish(hub, "lobby", every).status_code == 403

    url = f"{hub.url}/api/v1/tokens"
    for body, status, fragment in [
        ({"name": "x", "rooms": [bobs], "rights": ["publish"]}, 403, "Not your room"),
        ({"name": "x", "rooms": ["nosuchroom"], "rights": ["publish"]}, 404, "Unknown room"),
        ({"name": "x", "rooms": [], "rights": ["publish"]}, 400, "rooms"),
        ({"name": "x", "rooms": "*", "rights": ["admin"]}, 400, "rights"),
        ({"name": "x", "rooms": "*", "rights": []}, 400, "rights"),
        ({"name": "", "rooms": "*", "rights": ["publish"]}, 400, "name"),
        ({"name": "x", "rooms": "*", "rights": ["publish"], "expires_in": -1}, 400, "expires_in"),
    ]:
        reply = httpx.post(url, json=body, headers=alice.auth)
        assert reply.status_code == status and fragment in reply.json()["msg"], reply.text
    for credential in (every, TOKEN):  # API and root tokens cannot make API tokens
        body = {"name": "x", "rooms": "*", "rights": ["publish"]}
        assert httpx.post(url, json=body, headers=auth(credential)).status_code == 403
    short = new_token(hub, alice, name="brief", rooms="*", rights=["publish"], expires_in=1)
    assert publish(hub, room_a, short).status_code == 202
    time.sleep(1.2)
    expired = publish(hub, room_a, short)
    assert expired.status_code == 401 and expired.json()["msg"] == "Token expired"


def test_api_tokens_cannot_manage_rooms_or_users(hub: Server, admin: Session):
    room = new_room(hub, admin)
    token = new_token(hub, admin, name="admin bot", rooms="*", rights=["publish", "subscribe"])
    assert publish(hub, room, token).status_code == 202
    headers = auth(token)
    assert (
        httpx.patch(f"{hub.url}/api/v1/rooms/{room}", json={}, headers=headers).status_code == 403
    )
    assert httpx.delete(f"{hub.url}/api/v1/rooms/{room}", headers=headers).status_code == 403
    created = httpx.post(f"{hub.url}/api/v1/rooms", json={"id": "bytoken"}, headers=headers)
    assert created.status_code == 403
    assert httpx.get(f"{hub.url}/api/v1/users", headers=headers).status_code == 403
    me = httpx.get(f"{hub.url}/api/v1/auth/me", headers=headers).json()["principal"]
    assert me["kind"] == "token" and me["token"]["name"] == "admin bot"


async def test_controller_subscription_needs_publish_right(hub: Server):
    owner = new_user(hub)
    room = new_room(hub, owner)
    writer = new_token(hub, owner, name="w", rooms=[room], rights=["publish"])
    reader = new_token(hub, owner, name="r", rooms=[room], rights=["subscribe"])
    url = f"{hub.url}/api/v1/events/{room}?role=controller"
    async with subscribe(f"{url}&token={writer}") as events:
        assert events.hello["room"] == room
    assert httpx.get(f"{url}&token={reader}").status_code == 403


# ---------------------------------------------------------------------------------------
# Private rooms
# ---------------------------------------------------------------------------------------


async def test_private_room_needs_a_subscribe_token_or_the_session_cookie(hub: Server):
    owner, stranger = new_user(hub), new_user(hub)
    room = new_room(hub, owner, private=True)
    url = f"{hub.url}/api/v1/events/{room}"
    reader = new_token(hub, owner, name="obs", rooms=[room], rights=["subscribe"])
    writer = new_token(hub, owner, name="bot", rooms=[room], rights=["publish"])

    anonymous = httpx.get(url)
    assert anonymous.status_code == 401 and anonymous.json()["success"] is False
    assert httpx.get(url, params={"token": stranger.access}).status_code == 403
    assert httpx.get(url, params={"token": writer}).status_code == 403
    assert httpx.get(url, params={"token": "smt_made-up"}).status_code == 401
    async with subscribe(f"{url}?token={reader}") as events:
        publish(hub, room, writer).raise_for_status()
        (event,) = await collect(events, 1)
        assert json.loads(event.data)["room"] == room
    async with subscribe(url, Authorization=f"Bearer {owner.access}"):
        pass

    async with httpx.AsyncClient(base_url=hub.url) as browser:  # same origin, cookies
        credentials = {"username": owner.user["username"], "password": owner.password}
        (await browser.post("/api/v1/auth/login", json=credentials)).raise_for_status()
        async with browser.stream("GET", f"/api/v1/events/{room}") as stream:
            assert stream.status_code == 200
    assert httpx.get(url, headers={"Cookie": "sm_session=forged"}).status_code == 401

    assert room not in {r["id"] for r in httpx.get(f"{hub.url}/api/v1/rooms").json()["rooms"]}
    listed = httpx.get(f"{hub.url}/api/v1/rooms", headers=auth(reader)).json()["rooms"]
    assert room in {r["id"] for r in listed}
    for path in (f"/api/v1/rooms/{room}", f"/api/v1/rooms/{room}/presence"):
        assert httpx.get(f"{hub.url}{path}").status_code == 401
        assert httpx.get(f"{hub.url}{path}", params={"token": stranger.access}).status_code == 403
        assert httpx.get(f"{hub.url}{path}", params={"token": reader}).status_code == 200
    async with subscribe(f"{hub.url}/api/v1/events/lobby"):
        pass  # public rooms stay open


async def test_a_room_turning_private_ends_anonymous_streams(hub: Server):
    owner = new_user(hub)
    room = new_room(hub, owner)
    url = f"{hub.url}/api/v1/events/{room}"
    async with subscribe(url) as events:
        reply = httpx.patch(
            f"{hub.url}/api/v1/rooms/{room}", json={"private": True}, headers=owner.auth
        )
        assert reply.status_code == 200
        async with asyncio.timeout(10):
            last = [event async for event in events][-1]
    assert last.event == "private"
    assert httpx.get(url).status_code == 401


# ---------------------------------------------------------------------------------------
# User admin
# ---------------------------------------------------------------------------------------


def test_user_admin(hub: Server, admin: Session):
    url = f"{hub.url}/api/v1/users"
    name = f"managed{next(names)}"
    created = httpx.post(
        url, json={"username": name, "password": "first password"}, headers=admin.auth
    )
    assert created.status_code == 201 and created.json()["user"]["role"] == "user"
    user_id = created.json()["user"]["id"]
    listed = httpx.get(url, headers=admin.auth)
    assert name in {u["username"] for u in listed.json()["users"]}
    assert "hash" not in listed.text and "argon2" not in listed.text
    user = login(hub, name, "first password")
    assert httpx.get(url, headers=user.auth).status_code == 403
    room = new_room(hub, user)
    token = new_token(hub, user, name="t", rooms="*", rights=["publish"])

    reset = httpx.patch(
        f"{url}/{user_id}", json={"password": "second password"}, headers=admin.auth
    )
    assert reset.status_code == 200
    assert refresh(hub, user.refresh).status_code == 401
    assert publish(hub, room, user.access).status_code == 401
    user = login(hub, name, "second password")
    promoted = httpx.patch(f"{url}/{user_id}", json={"role": "admin"}, headers=admin.auth)
    assert promoted.json()["user"]["role"] == "admin"
    assert httpx.get(url, headers=user.auth).status_code == 200, "the role applies at once"

    own = httpx.patch(f"{url}/{admin.user['id']}", json={"disabled": True}, headers=admin.auth)
    assert own.status_code == 400
    assert httpx.delete(f"{url}/{admin.user['id']}", headers=admin.auth).status_code == 400
    assert httpx.patch(f"{url}/nosuchuser", json={}, headers=admin.auth).status_code == 404
    bad = httpx.patch(f"{url}/{user_id}", json={"disabled": "yes"}, headers=admin.auth)
    assert bad.status_code == 400

    assert httpx.delete(f"{url}/{user_id}", headers=admin.auth).status_code == 200
    assert publish(hub, room, token).status_code == 401
    assert publish(hub, room, user.access).status_code == 401
    orphan = httpx.get(f"{hub.url}/api/v1/rooms/{room}").json()["room"]
    assert orphan["owner"] is None, "the room stays, for admins to manage"
    assert httpx.delete(f"{url}/{user_id}", headers=admin.auth).status_code == 404
    gone = httpx.post(
        f"{hub.url}/api/v1/auth/login", json={"username": name, "password": "second password"}
    )
    assert gone.status_code == 401


# ---------------------------------------------------------------------------------------
# Secrets: never in logs, responses or the database in plain text; SQL only parameterised
# ---------------------------------------------------------------------------------------


async def test_secrets_never_appear_in_logs_responses_or_the_database(hub: Server, admin):
    log_start = len(hub.log())
    password = f"secret-password-{os.urandom(8).hex()}"
    root = auth(hub.token)
    user_reply = httpx.post(
        f"{hub.url}/api/v1/users",
        json={"username": f"s{next(names)}", "password": password},
        headers=root,
    )
    name = user_reply.json()["user"]["username"]
    user = login(hub, name, password)
    rotated = refresh(hub, user.refresh).json()
    room = new_room(hub, user, private=True)
    token = new_token(hub, user, name="obs", rooms=[room], rights=["publish", "subscribe"])
    replies = [
        user_reply,
        publish(hub, room, token),
        httpx.get(f"{hub.url}/api/v1/send/x", params={"token": token, "msg": "m", "room": room}),
        httpx.get(f"{hub.url}/api/v1/auth/me", headers=auth(rotated["access_token"])),
        httpx.get(f"{hub.url}/api/v1/auth/me", params={"token": token}),
        httpx.get(f"{hub.url}/api/v1/tokens", headers=auth(rotated["access_token"])),
        httpx.get(f"{hub.url}/api/v1/users", headers=admin.auth),
        httpx.get(f"{hub.url}/api/v1/rooms/{room}", params={"token": token}),
        httpx.post(
            f"{hub.url}/api/v1/auth/login", json={"username": name, "password": password + "x"}
        ),
        refresh(hub, user.refresh),  # reuse
        publish(hub, room, token + "x"),
    ]
    async with subscribe(f"{hub.url}/api/v1/events/{room}?token={token}"):
        pass
    secrets = [
        password,
        user.access,
        user.refresh,
        rotated["access_token"],
        rotated["refresh_token"],
        token,
        SECRET_KEY,
        ADMIN_PASSWORD,
        hub.token,
    ]
    with sqlite3.connect(hub.data_dir / "streaming-message.db") as db:
        stored_hashes = [row[0] for row in db.execute("SELECT password_hash FROM users")]
        stored_hashes += [row[0] for row in db.execute("SELECT hash FROM refresh_tokens")]
        stored_hashes += [row[0] for row in db.execute("SELECT hash FROM api_tokens")]
    assert any(h.startswith("$argon2id$") for h in stored_hashes)
    assert hashlib.sha256(token.encode()).hexdigest() in stored_hashes

    log = hub.log()[log_start:]
    assert "DEBUG" in hub.log(), "the search covers debug logging"
    for secret in secrets + stored_hashes:
        assert secret not in log
        for reply in replies:
            assert secret not in reply.text, reply.text
    database = b"".join(path.read_bytes() for path in hub.data_dir.glob("streaming-message.db*"))
    for secret in secrets:
        assert secret.encode() not in database


SQL_INJECTIONS = ["admin' --", "' OR '1'='1", "x'); DROP TABLE users; --", 'a" OR 1=1 --']


def test_sql_injection_payloads_are_only_data(hub: Server, admin: Session):
    for payload in SQL_INJECTIONS:
        reply = httpx.post(
            f"{hub.url}/api/v1/auth/login", json={"username": payload, "password": payload}
        )
        assert reply.status_code == 401
        titled = httpx.patch(
            f"{hub.url}/api/v1/rooms/lobby", json={"title": payload}, headers=admin.auth
        )
        assert titled.json()["room"]["title"] == payload
        for path in (f"/api/v1/users/{payload}", f"/api/v1/tokens/{payload}"):
            assert httpx.delete(f"{hub.url}{path}", headers=admin.auth).status_code == 404
    assert httpx.get(f"{hub.url}/api/v1/users", headers=admin.auth).json()["users"]
    assert login(hub, "admin", ADMIN_PASSWORD)


def test_sql_is_built_only_with_parameters():
    """Every SQL string in app.py is a literal; the only interpolations are column-list
    constants (and PRAGMAs, whose values come from the operator's configuration)."""
    tree = ast.parse((ROOT / "app.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("execute", "executemany", "_rows")
        and node.args  # (a Redis pipeline's execute() has no SQL)
    ]
    assert len(calls) > 20
    literals = {  # module-level names bound to a string literal
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }
    for call in calls:
        sql = call.args[0]
        if isinstance(sql, ast.Constant) or (isinstance(sql, ast.Name) and sql.id in literals):
            continue
        if ast.unparse(call) == "self.read.execute(sql, parameters)":
            continue  # Storage._rows: its callers' SQL is checked where they call it
        if ast.unparse(sql) == "f'ALTER TABLE {table} ADD COLUMN {column} {kind}'":
            continue  # Storage.upgrade: names from the ADDED_COLUMNS constant (no parameters there)
        assert isinstance(sql, ast.JoinedStr), ast.unparse(sql)
        text = "".join(p.value for p in sql.values if isinstance(p, ast.Constant))
        for part in sql.values:
            if isinstance(part, ast.FormattedValue) and not text.startswith("PRAGMA "):
                assert isinstance(part.value, ast.Name), ast.unparse(sql)
                assert part.value.id.endswith("_COLUMNS"), ast.unparse(sql)
