"""Issue 16: a room's uploaded images (speaker avatars, the `@{name}` code) and its speaker
profiles, against the real app."""

from __future__ import annotations

import json
import struct
import zlib

import httpx
from conftest import Server, assert_envelope, collect, subscribe


def png(
    width: int = 2,
    height: int = 2,
    rgb: tuple[int, int, int] = (226, 88, 127),
    pixels: list[tuple[int, int, int]] | None = None,
) -> bytes:
    """A real PNG of one colour, or of these pixels (row by row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixels = pixels or [rgb] * (width * height)
    rows = b"".join(
        b"\0" + b"".join(bytes(pixel) for pixel in pixels[y * width : (y + 1) * width])
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


GIF = (  # one transparent pixel
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
WEBP_HEAD = b"RIFF\x1a\x00\x00\x00WEBPVP8L"
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def put(server: Server, room: str, name: str, data: bytes, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {server.token}"}
    return httpx.put(
        f"{server.url}/api/v1/rooms/{room}/uploads/{name}", content=data, headers=auth | headers
    )


def test_an_image_is_stored_and_served_from_our_origin_with_safe_headers(make_server):
    server: Server = make_server()
    image = png()
    reply = put(server, "lobby", "Alice", image, **{"Content-Type": "text/html"})
    assert reply.status_code == 201, reply.text
    upload = reply.json()["upload"]
    assert upload["name"] == "alice" and upload["type"] == "image/png"
    assert upload["size"] == len(image) and upload["url"] == "/api/v1/rooms/lobby/uploads/alice"

    served = httpx.get(server.url + upload["url"])
    assert served.status_code == 200 and served.content == image
    assert served.headers["content-type"] == "image/png"  # by its bytes, not what was sent
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in served.headers["content-security-policy"]
    assert served.headers["cache-control"] == "max-age=300, public"
    etag = served.headers["etag"]
    again = httpx.get(server.url + upload["url"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(f"{server.url}/api/v1/rooms/lobby/uploads/ALICE").content == image

    for name, data, kind in (("g", GIF, "image/gif"), ("w", WEBP_HEAD, "image/webp")):
        assert put(server, "lobby", name, data).json()["upload"]["type"] == kind
    assert put(server, "lobby", "j", JPEG_HEAD).json()["upload"]["type"] == "image/jpeg"
    for name, data, kind in (
        ("v1", b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
        ("v2", b"OggS\x00\x02", "audio/ogg"),
        ("v3", b"ID3\x04\x00", "audio/mpeg"),
    ):
        assert put(server, "lobby", name, data).json()["upload"]["type"] == kind
        assert httpx.get(f"{server.url}/api/v1/rooms/lobby/uploads/{name}").content == data
    listed = httpx.get(f"{server.url}/api/v1/rooms/lobby/uploads").json()["uploads"]
    assert [u["name"] for u in listed] == ["alice", "g", "j", "v1", "v2", "v3", "w"]

    replaced = put(server, "lobby", "alice", GIF).json()["upload"]
    assert replaced["type"] == "image/gif"
    assert httpx.get(server.url + upload["url"]).headers["etag"] != etag


def test_uploads_are_limited_in_size_type_number_and_rights(make_server):
    server: Server = make_server(MAX_UPLOAD_BYTES="1000", MAX_UPLOADS_PER_ROOM="2")
    assert_envelope(put(server, "lobby", "big", png(40, 40)[:10] + b"\0" * 1000), 413, "max 1000")
    for data in (SVG, b"<html><script>alert(1)</script>", b"", b"GIF87"):
        assert_envelope(put(server, "lobby", "bad", data), 415, "PNG, JPEG, WebP or GIF")
    assert_envelope(put(server, "lobby", "no.dots", GIF), 400, "Invalid upload name")
    assert_envelope(put(server, "nosuchroom", "a", GIF), 404, "Unknown room")
    url = f"{server.url}/api/v1/rooms/lobby/uploads/a"
    assert_envelope(httpx.put(url, content=GIF), 401, "")
    assert_envelope(httpx.put(url, content=GIF, headers={"Authorization": "Bearer nope"}), 401, "")
    assert put(server, "lobby", "a", GIF).status_code == 201
    assert put(server, "lobby", "b", GIF).status_code == 201
    assert_envelope(put(server, "lobby", "c", GIF), 403, "Upload limit reached")
    assert put(server, "lobby", "a", png()).status_code == 201  # replacing is no new one
    assert_envelope(httpx.get(f"{server.url}/api/v1/rooms/lobby/uploads/c"), 404, "Unknown")
    assert httpx.get(f"{server.url}/api/v1/rooms/lobby/uploads").json()["uploads"][0]["size"] > 0

    auth = {"Authorization": f"Bearer {server.token}"}
    assert_envelope(httpx.delete(url), 401, "")
    assert httpx.delete(url, headers=auth).json()["name"] == "a"
    assert_envelope(httpx.delete(url, headers=auth), 404, "Unknown upload")
    assert put(server, "lobby", "c", GIF).status_code == 201  # room for one more


def test_uploads_go_with_their_room_and_private_ones_need_a_token(make_server):
    server: Server = make_server()
    auth = {"Authorization": f"Bearer {server.token}"}
    reply = httpx.post(
        f"{server.url}/api/v1/rooms", json={"id": "secret", "private": True}, headers=auth
    )
    assert reply.status_code == 201
    assert put(server, "secret", "face", GIF).status_code == 201
    url = f"{server.url}/api/v1/rooms/secret/uploads/face"
    assert_envelope(httpx.get(url), 401, "")
    served = httpx.get(f"{url}?token={server.token}")
    assert served.content == GIF and served.headers["cache-control"] == "max-age=300, private"
    assert httpx.delete(f"{server.url}/api/v1/rooms/secret", headers=auth).status_code == 200
    httpx.post(f"{server.url}/api/v1/rooms", json={"id": "secret"}, headers=auth)
    assert_envelope(httpx.get(url), 404, "Unknown upload")


async def test_speaker_profiles_are_room_settings_and_reach_streams_at_once(make_server):
    server: Server = make_server()
    auth = {"Authorization": f"Bearer {server.token}"}
    profiles = {
        "Alice": {"color": "#E2587F", "avatar": "alice", "speed": 50, "pitch": 1.5},
        "Bob": {"sound": "none"},
    }
    async with subscribe(f"{server.url}/api/v1/events/lobby") as room:
        reply = httpx.patch(
            f"{server.url}/api/v1/rooms/lobby",
            json={"settings": {"profiles": profiles, "theme": "light"}},
            headers=auth,
        )
        assert reply.status_code == 200, reply.text
        (event,) = await collect(room, 1, "settings")
    settings = json.loads(event.data)["settings"]
    assert settings == {"profiles": profiles, "theme": "light"}
    assert reply.json()["room"]["settings"] == settings

    for bad, fragment in (
        ({"Alice": {"color": "red"}}, "#rrggbb"),
        ({"Alice": {"avatar": "../x"}}, "upload's name"),
        ({"Alice": {"sound": "http://x/y.mp3"}}, "upload's name"),
        ({"Alice": {"pitch": 10}}, "pitch"),
        ({"Alice": {"html": "<b>"}}, "html"),
        ({"": {}}, "profiles"),
    ):
        reply = httpx.patch(
            f"{server.url}/api/v1/rooms/lobby",
            json={"settings": {"profiles": bad}},
            headers=auth,
        )
        assert_envelope(reply, 400, fragment)
    room = httpx.get(f"{server.url}/api/v1/rooms/lobby").json()["room"]
    assert room["settings"]["profiles"] == profiles  # nothing changed


async def test_settings_and_uploads_reach_every_process_of_a_hub(make_server, tmp_path, broker_url):
    """With BROKER_URL, a profile changed on one process reaches a player of another at once,
    and an image put on one is served by the other (one SQLite file)."""
    a, b = (make_server(data_dir=tmp_path / "shared", BROKER_URL=broker_url) for _ in range(2))
    async with subscribe(f"{b.url}/api/v1/events/lobby") as room:
        reply = httpx.patch(
            f"{a.url}/api/v1/rooms/lobby",
            json={"settings": {"profiles": {"Alice": {"avatar": "alice"}}}},
            headers={"Authorization": f"Bearer {a.token}"},
        )
        assert reply.status_code == 200, reply.text
        (event,) = await collect(room, 1, "settings")
    assert json.loads(event.data)["settings"]["profiles"] == {"Alice": {"avatar": "alice"}}
    assert put(a, "lobby", "alice", GIF).status_code == 201
    assert httpx.get(f"{b.url}/api/v1/rooms/lobby/uploads/alice").content == GIF
