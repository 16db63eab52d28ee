"""Hardening: limits (body, JSON depth, ids, tokens, headers, slow bodies), security
headers, CORS, CSRF on cookie credentials, and the request/stream logs with every secret
redacted."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

import httpx
from conftest import Server, assert_envelope, collect, raw_request, subscribe

ADMIN = {"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin password 1"}


def root(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


# Limits


def test_body_size_and_read_time_are_limited_on_every_route(make_server):
    server: Server = make_server(MAX_BODY_BYTES="2000", BODY_TIMEOUT_S="0.5")
    big = {"speaker": "s", "data": {"pad": "x" * 3000}}
    for path in ("/api/v1/send", "/api/v1/rooms"):  # the hot path, and Quart
        reply = httpx.post(f"{server.url}{path}", json=big, headers=root(server))
        assert_envelope(reply, 413, "too large")
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {server.token}\r\nContent-Length: 100\r\n\r\n"
        ).encode()
        reply = raw_request(server, head, b'{"speaker": ')  # then nothing: a slow client
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b'"success":false' in reply and b'"code":408' in reply
    assert server.health()["published"] == 0


def test_header_size_is_limited(make_server):
    server: Server = make_server(MAX_HEADER_BYTES="4096")
    fits = httpx.get(f"{server.url}/healthz", headers={"X-Pad": "x" * 2000})
    assert fits.status_code == 200
    too_big = httpx.get(f"{server.url}/healthz", headers={"X-Pad": "x" * 8000})
    assert_envelope(too_big, 431, "Request headers too large (max 4096 bytes)")
    assert too_big.headers["x-content-type-options"] == "nosniff"


def test_deep_json_is_refused(server: Server):
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/v1/send", "/api/v1/rooms"):
        reply = httpx.post(f"{server.url}{path}", content=deep, headers=root(server))
        assert_envelope(reply, 400, "Invalid JSON")


def test_ids_speakers_and_tokens_have_length_limits(server: Server):
    url = server.url
    reply = httpx.post(f"{url}/api/v1/rooms", json={"id": "a" * 65}, headers=root(server))
    assert_envelope(reply, 400, "id must be 1-64 letters or digits")
    assert_envelope(httpx.get(f"{url}/api/v1/rooms/{'a' * 65}"), 400, "Invalid room id")
    speaker = {"speaker": "s" * 65, "data": {}}
    reply = httpx.post(f"{url}/api/v1/send", json=speaker, headers=root(server))
    assert_envelope(reply, 400, "speaker")
    long_token = "x" * 513
    for reply in [
        httpx.get(f"{url}/api/v1/auth/me", headers={"Authorization": f"Bearer {long_token}"}),
        httpx.get(f"{url}/api/v1/send/s", params={"token": long_token, "msg": "hi"}),
        httpx.post(f"{url}/api/v1/send", json={"token": long_token, "speaker": "s", "data": {}}),
    ]:
        assert_envelope(reply, 401, "longer than 512 characters")


def test_a_session_token_fits_the_token_limit(make_server):
    server: Server = make_server(**ADMIN)
    body = {"username": ADMIN["ADMIN_USERNAME"], "password": ADMIN["ADMIN_PASSWORD"]}
    tokens = httpx.post(f"{server.url}/api/v1/auth/login", json=body).json()
    assert len(tokens["access_token"]) <= 512 and len(tokens["refresh_token"]) <= 512


# Keep-alive (the KeepAliveTimer that stands in for Hypercorn's)

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def read_reply(sock: socket.socket) -> bytes:
    """One reply with a Content-Length, read from a keep-alive connection."""
    reply = b""
    while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < int(
        re.search(rb"content-length: (\d+)", reply).group(1)
    ):
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-reply: {reply!r}"
        reply += chunk
    return reply


def test_a_keep_alive_connection_stays_open_while_used_and_closes_when_idle(server: Server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        started = time.monotonic()
        while True:  # longer than the 5 s timeout, never idle 5 s
            sock.sendall(HEALTH)
            assert read_reply(sock).startswith(b"HTTP/1.1 200")
            idle_from = time.monotonic()  # the last reply: the connection is idle from here
            if idle_from - started > 8:
                break
            time.sleep(1)
        assert sock.recv(1) == b""  # the server closes it...
        assert 4 < time.monotonic() - idle_from < 15  # ...after Hypercorn's 5 s keep-alive


def test_shutdown_closes_idle_keep_alive_connections_at_once(make_server):
    server: Server = make_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(HEALTH)
        assert read_reply(sock).startswith(b"HTTP/1.1 200")
        server.process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        assert sock.recv(1) == b""
        assert server.process.wait(10) == 0
        assert time.monotonic() - stopping < 4  # not after the 5 s keep-alive timeout


# Security headers


async def test_every_response_has_the_security_headers(make_server):
    server: Server = make_server(FRAME_ANCESTORS="https://obs.example")
    replies = {
        "quart json": httpx.get(f"{server.url}/healthz"),
        "quart error": httpx.get(f"{server.url}/api/v1/rooms/nosuchroom"),
        "hot path": httpx.get(f"{server.url}/api/v1/send/s", params={"msg": "x"}),
        "player": httpx.get(f"{server.url}/lobby"),
        "admin": httpx.get(f"{server.url}/admin"),
        "script": httpx.get(f"{server.url}/static/js/sse-client.js"),
    }
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{server.url}/api/v1/events") as stream,
    ):
        replies["stream"] = stream
    for name, reply in replies.items():
        assert reply.headers["x-content-type-options"] == "nosniff", name
        assert reply.headers["referrer-policy"] == "no-referrer", name
        assert "strict-transport-security" not in reply.headers, name  # plain http
        html = reply.headers["content-type"].startswith("text/html")
        assert ("content-security-policy" in reply.headers) == html, name
    player = replies["player"].headers["content-security-policy"]
    assert "default-src 'self'" in player and "script-src 'self'" in player
    assert "'unsafe-inline'" not in player
    assert player.endswith("frame-ancestors https://obs.example")  # OBS, stream sites
    admin = replies["admin"].headers["content-security-policy"]
    assert admin.endswith("frame-ancestors 'self'")  # never framed by another site


def test_https_behind_a_trusted_proxy_gets_hsts_and_secure_cookies(make_server):
    behind_https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    body = {"username": ADMIN["ADMIN_USERNAME"], "password": ADMIN["ADMIN_PASSWORD"]}
    direct: Server = make_server(**ADMIN)  # TRUST_PROXY=0: anyone could send those headers
    reply = httpx.post(f"{direct.url}/api/v1/auth/login", json=body, headers=behind_https)
    assert "strict-transport-security" not in reply.headers
    assert not any("Secure" in c for c in reply.headers.get_list("set-cookie"))
    proxied: Server = make_server(TRUST_PROXY="1", **ADMIN)
    reply = httpx.post(f"{proxied.url}/api/v1/auth/login", json=body, headers=behind_https)
    assert reply.headers["strict-transport-security"] == "max-age=31536000"
    assert all("Secure" in c for c in reply.headers.get_list("set-cookie"))
    assert "client=203.0.113.7" in proxied.log_with("client=203.0.113.7")  # not the proxy's
    assert "client=203.0.113.7" not in direct.log_with("path=/api/v1/auth/login")


# CORS


def cors_replies(server: Server, origin: str) -> dict[str, httpx.Response]:
    headers = {"Origin": origin, **root(server)}
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, last-event-id",
    }
    replies = {
        "quart": httpx.get(f"{server.url}/api/v1/rooms", headers=headers),
        "publish": httpx.post(
            f"{server.url}/api/v1/send", json={"speaker": "s", "data": {}}, headers=headers
        ),
        "error": httpx.get(f"{server.url}/api/v1/send/s", headers={"Origin": origin}),
    }
    for path in ("/api/v1/send", "/api/v1/events/lobby", "/api/v1/rooms"):
        replies[f"preflight {path}"] = httpx.options(f"{server.url}{path}", headers=preflight)
    with httpx.stream("GET", f"{server.url}/api/v1/events", headers=headers) as stream:
        replies["stream"] = stream
    return replies


def test_cors_star_never_allows_credentials(server: Server):
    for name, reply in cors_replies(server, "https://anywhere.example").items():
        assert reply.headers["access-control-allow-origin"] == "*", name
        assert "access-control-allow-credentials" not in reply.headers, name
        if name.startswith("preflight"):
            assert reply.status_code == 204
            assert "POST" in reply.headers["access-control-allow-methods"]
            assert "last-event-id" in reply.headers["access-control-allow-headers"]


def test_cors_listed_origins_get_credentials_and_others_nothing(make_server):
    server: Server = make_server(CORS_ORIGINS="https://a.example, https://b.example")
    for name, reply in cors_replies(server, "https://b.example").items():
        assert reply.headers["access-control-allow-origin"] == "https://b.example", name
        assert reply.headers["access-control-allow-credentials"] == "true", name
        assert reply.headers["vary"] == "Origin", name
    for name, reply in cors_replies(server, "https://evil.example").items():
        assert "access-control-allow-origin" not in reply.headers, name
        assert "access-control-allow-methods" not in reply.headers, name


# CSRF


def test_cookie_credentials_need_an_origin_of_this_site(make_server):
    server: Server = make_server(CORS_ORIGINS="https://admin.example", **ADMIN)
    body = {"username": ADMIN["ADMIN_USERNAME"], "password": ADMIN["ADMIN_PASSWORD"]}
    with httpx.Client(base_url=server.url) as browser:
        assert browser.post("/api/v1/auth/login", json=body).status_code == 200
        cookie = browser.cookies["sm_refresh"]
        for origin in (None, "https://evil.example", "http://127.0.0.1:1"):
            headers = {"Origin": origin} if origin else {}
            for path in ("/api/v1/auth/refresh", "/api/v1/auth/logout"):
                reply = browser.post(path, headers=headers)
                assert_envelope(reply, 403, "Origin")
        assert browser.cookies["sm_refresh"] == cookie  # nothing rotated, nothing revoked
        for origin in (server.url, "https://admin.example"):  # this site, a listed one
            reply = browser.post("/api/v1/auth/refresh", headers={"Origin": origin})
            assert reply.status_code == 200, reply.text
        # a token in the body is no cookie: a cross-site page cannot know it
        refresh = {"refresh_token": browser.cookies["sm_refresh"]}
        browser.cookies.clear()
        reply = httpx.post(f"{server.url}/api/v1/auth/refresh", json=refresh)
        assert reply.status_code == 200, reply.text


# Logs


async def test_logs_have_a_line_per_request_and_stream_and_no_secret(make_server):
    key = "sk-llm-key-never-logged"
    server: Server = make_server(LLM_API_KEY=key, LLM_BASE_URL="http://127.0.0.1:9/v1", **ADMIN)
    body = {"username": ADMIN["ADMIN_USERNAME"], "password": ADMIN["ADMIN_PASSWORD"]}
    session = httpx.post(f"{server.url}/api/v1/auth/login", json=body).json()
    bearer = {"Authorization": f"Bearer {session['access_token']}"}
    created = httpx.post(
        f"{server.url}/api/v1/tokens",
        json={"name": "bot", "rooms": "*", "rights": ["publish"]},
        headers=bearer,
    ).json()
    api_token = created["token"]
    secrets = [
        server.token,
        ADMIN["ADMIN_PASSWORD"],
        session["access_token"],
        session["refresh_token"],
        api_token,
        key,
    ]
    httpx.get(f"{server.url}/api/v1/send/otto", params={"token": server.token, "msg": "hi"})
    httpx.get(f"{server.url}/api/v1/send/otto", params={"token": api_token, "msg": "yo"})
    httpx.get(f"{server.url}/api/v1/rooms", params={"token": session["access_token"]})
    url = f"{server.url}/api/v1/events/lobby?role=controller&token={server.token}"
    async with subscribe(url) as events:
        server.publish(data={"message": "logged"})
        await collect(events, 1)
    chat = httpx.post(f"{server.url}/api/v1/chat", json={"prompt": "hi"}).json()
    async with httpx.AsyncClient(timeout=10) as client:  # the upstream is down: a 502 event
        await client.get(f"{server.url}/api/v1/chat/{chat['uid']}/events")
    await asyncio.sleep(0.3)  # the stream's close line follows the client's leaving
    log = server.log()
    for secret in secrets:
        assert secret not in log
    assert re.search(
        r"request method=GET path=/api/v1/send/otto\?token=\[redacted\]&msg=hi status=202 "
        r"ms=[0-9.]+ client=127\.0\.0\.1",
        log,
    ), log
    assert "path=/api/v1/rooms?token=[redacted] status=200" in log
    assert "request method=POST path=/api/v1/auth/login status=200" in log
    assert "stream open room=lobby role=controller client=127.0.0.1" in log
    assert re.search(r"stream close room=lobby role=controller client=\S+ s=\S+ bytes=\d+", log)
    assert re.search(
        r"path=/api/v1/events/lobby\?role=controller&token=\[redacted\] status=200", log
    )


def test_access_log_can_be_turned_off(make_server):
    server: Server = make_server(ACCESS_LOG="0")
    server.publish()
    assert "request method=" not in server.log()
