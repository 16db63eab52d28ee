"""Properties (hypothesis) of the wire, checked against ONE real server: any JSON payload
published over HTTP comes back equal through an open SSE subscription; what cannot be
stored and sent again (lone surrogates, NaN, nesting past MAX_JSON_DEPTH) is a clear 400;
room ids and Last-Event-ID values of any shape never break a stream (issue 9)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import httpx
import pytest
from conftest import Server, collect, subscribe
from httpx_sse import ServerSentEvent
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

MAX_JSON_DEPTH = 12  # set on the server below, so the limit is the test's own

bounded = settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow "explain"
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Strings a frame must survive: SSE line ends, JSON escapes, separators, NUL, BOM, non-BMP.
AWKWARD = ["\r", "\n", "\r\n", "\n\n", "\u2028", "\u2029", "\x85", "\x00", "\ufeff", "\\", '"']
AWKWARD += ["data: x", "id: 9", "event: meta", ":", "🎉", "𝕏"]
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),  # any Unicode but surrogates
    st.lists(st.sampled_from(AWKWARD) | st.text(max_size=3), max_size=8).map("".join),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # past 64 bits: see below
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)
SPEAKERS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64).filter(str.strip)
VALID_ROOM = re.compile(r"[a-zA-Z0-9]{1,64}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("properties"), MAX_JSON_DEPTH=str(MAX_JSON_DEPTH)
    ).start()
    yield server
    server.stop()
    assert "Traceback" not in server.log()


@pytest.fixture(scope="module")
async def client(hub: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=hub.url, headers={"Authorization": f"Bearer {hub.token}"}, timeout=10
    ) as http:
        yield http


@pytest.fixture(scope="module")
async def lobby(hub: Server) -> AsyncIterator:
    """The one open subscription every round-trip property reads from."""
    async with subscribe(f"{hub.url}/api/v1/events") as events:
        yield events


async def publish(client: httpx.AsyncClient, body: object, ascii_only: bool = True):
    """POST a body encoded by Python's json (escaped to ASCII, or raw UTF-8)."""
    content = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return await client.post("/api/v1/send", content=content)


async def delivered(events, message_id: int) -> ServerSentEvent:
    """The message event with `message_id` (earlier ones are skipped)."""
    while True:
        (event,) = await collect(events, 1)
        if int(event.id) >= message_id:
            assert int(event.id) == message_id
            return event


async def assert_refused(client, lobby, body: bytes, status: int, fragments: list[str]):
    """The body gets `status` with a precise message, and nothing is stored or delivered:
    the next message through the stream is the sentinel published after it."""
    reply = await client.post("/api/v1/send", content=body)
    assert reply.status_code == status, reply.text
    answer = reply.json()
    assert answer["success"] is False and answer["code"] == status
    text = f"{answer['msg']} {answer.get('detail', '')}"
    assert all(fragment in text for fragment in fragments), answer
    sentinel = await publish(client, {"speaker": "s", "data": {"sentinel": True}})
    event = await delivered(lobby, sentinel.json()["id"])
    assert json.loads(event.data)["data"] == {"sentinel": True}


@bounded
@given(
    speaker=SPEAKERS,
    data=st.dictionaries(TEXT, JSON, max_size=6),
    meta=JSON,
    ascii_only=st.booleans(),
)
async def test_any_json_payload_comes_back_equal(client, lobby, speaker, data, meta, ascii_only):
    reply = await publish(client, {"speaker": speaker, "data": data, "meta": meta}, ascii_only)
    if max(json_depth(data), json_depth(meta)) > MAX_JSON_DEPTH:
        assert reply.status_code == 400 and "nested deeper" in reply.json()["msg"]
        return
    assert reply.status_code == 202, reply.text
    event = await delivered(lobby, reply.json()["id"])
    payload = json.loads(event.data)
    assert payload == reply.json()["event"]
    assert (payload["speaker"], payload["data"], payload["meta"]) == (speaker, data, meta)
    assert payload["room"] == "lobby"


def json_depth(value: object) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    return 1 + max(map(json_depth, value), default=0) if isinstance(value, list) else 0


def nested(depth: int, leaf: object = "leaf") -> object:
    """`depth` levels of arrays and objects in turn, the outermost an object."""
    value = leaf
    for level in range(depth, 0, -1):
        value = {"k": value} if level % 2 else [value]
    return value


@bounded
@given(
    depth=st.integers(min_value=1, max_value=MAX_JSON_DEPTH + 3),
    where=st.sampled_from(["data", "meta"]),
)
@example(depth=MAX_JSON_DEPTH, where="data")
@example(depth=MAX_JSON_DEPTH + 1, where="data")
@example(depth=MAX_JSON_DEPTH + 1, where="meta")
async def test_nesting_up_to_max_json_depth_and_no_deeper(client, lobby, depth, where):
    message = {"speaker": "s", "data": {}, "meta": None, where: nested(depth)}
    if depth <= MAX_JSON_DEPTH:
        reply = await publish(client, message)
        assert reply.status_code == 202, reply.text
        event = await delivered(lobby, reply.json()["id"])
        assert json.loads(event.data)[where] == nested(depth)
    else:
        body = json.dumps(message).encode()
        fragment = f"{where} is nested deeper than {MAX_JSON_DEPTH} levels"
        await assert_refused(client, lobby, body, 400, [fragment])


@pytest.mark.parametrize("depth", [900, 5_000, 200_000])
async def test_nesting_past_what_a_parser_recurses_through_is_a_400(client, lobby, depth):
    body = b'{"speaker":"s","data":{"x":' + b"[" * depth + b"]" * depth + b"}}"
    fragments = ["Invalid JSON body"] if depth > 900 else [f"nested deeper than {MAX_JSON_DEPTH}"]
    await assert_refused(client, lobby, body, 400, fragments)


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@bounded
@given(
    surrogate=SURROGATES,
    text=TEXT,
    where=st.sampled_from(["speaker", "value", "key", "meta", "token", "room"]),
    raw_bytes=st.booleans(),
)
async def test_lone_surrogates_are_a_clear_400(
    client, lobby, hub, surrogate, text, where, raw_bytes
):
    """Python's json parses "\\ud800" (and raw surrogate bytes), but no UTF-8 frame or
    SQLite text can carry it: the publish is refused, not half-done or a 500."""
    bad = text[: len(text) // 2] + surrogate + text[len(text) // 2 :]
    message = {"speaker": "s", "data": {"message": "x"}, "token": hub.token}
    message |= {
        "speaker": {"speaker": bad},
        "value": {"data": {"message": bad}},
        "key": {"data": {bad: 1}},
        "meta": {"meta": [bad]},
        "token": {"token": bad},
        "room": {"room": bad},
    }[where]
    # as a \\uXXXX escape, or as the bytes a UTF-8 encoder would make of it if it dared
    body = json.dumps(message, ensure_ascii=not raw_bytes).encode("utf-8", "surrogatepass")
    await assert_refused(client, lobby, body, 400, ["Invalid JSON body", "surrogate"])


@pytest.mark.parametrize("number", [10**30, -(2**63) - 1, 2**64])
async def test_integers_past_64_bits_come_back_as_doubles(client, lobby, number):
    """As a browser's JSON.parse (and the Bun project) reads them: the nearest double."""
    reply = await publish(client, {"speaker": "s", "data": {"n": number}})
    assert reply.status_code == 202, reply.text
    event = await delivered(lobby, reply.json()["id"])
    assert json.loads(event.data)["data"] == {"n": float(number)}
    assert isinstance(json.loads(event.data)["data"]["n"], float)


@pytest.mark.parametrize(
    "number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"], ids=bytes.decode
)
async def test_non_finite_numbers_are_a_clear_400(client, lobby, number):
    """Python's json reads these; no browser's JSON.parse could read them back."""
    body = b'{"speaker":"s","data":{"x":' + number + b"}}"
    await assert_refused(client, lobby, body, 400, ["Invalid JSON body"])


def case_variant(room: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if flip else c for c, flip in zip(room, flips, strict=False))


@settings(bounded, max_examples=30)
@given(
    room=st.from_regex(VALID_ROOM, fullmatch=True),
    flips=st.lists(st.booleans(), min_size=128, max_size=128),
)
async def test_valid_room_ids_are_one_room_in_any_case(hub, client, room, flips):
    canonical = room.lower()
    created = await client.post("/api/v1/rooms", json={"id": case_variant(room, flips[:64])})
    assert created.status_code in (201, 409), created.text
    if created.status_code == 201:
        assert created.json()["room"]["id"] == canonical
    else:
        assert created.json()["room"] == canonical
    stream = quote(case_variant(room, flips[64:]))
    async with subscribe(f"{hub.url}/api/v1/events/{stream}") as events:
        assert events.hello["room"] == canonical and events.hello["fallback"] is False
        reply = await publish(client, {"room": room.upper(), "speaker": "s", "data": {}})
        assert reply.status_code == 202, reply.text
        event = await delivered(events, reply.json()["id"])
    assert json.loads(event.data)["room"] == canonical == reply.json()["target"]["room"]


@settings(bounded, max_examples=60)
@given(room=st.text(st.characters(codec="utf-8"), min_size=1, max_size=80))
@example(room="a/b")
@example(room="lobby/")
@example(room="..")
@example(room="x" * 65)
@example(room="LOBBY")
async def test_any_room_id_streams_its_room_or_the_quote_feed(hub, client, room):
    """Publishing answers 400 (invalid id) or 404 (unknown room), never a 5xx; a stream of
    any id answers 200: its room, or the quote feed saying why."""
    rooms = {room["id"] for room in (await client.get("/api/v1/rooms")).json()["rooms"]}
    valid = VALID_ROOM.fullmatch(room) is not None
    known = valid and room.lower() in rooms
    reply = await publish(client, {"room": room, "speaker": "s", "data": {}})
    assert reply.status_code == (202 if known else 404 if valid else 400), reply.text
    segment = quote(room, safe="").replace(".", "%2E")  # or the client drops "." and ".."
    async with subscribe(f"{hub.url}/api/v1/events/{segment}") as events:
        hello = events.hello
    if known:
        assert hello["room"] == room.lower() and hello["fallback"] is False
    else:
        assert hello["fallback"] is True and hello["requested"] == room
        assert hello["reason"] == ("unknown room" if valid else "invalid room id")


LAST_EVENT_IDS = st.one_of(
    st.integers(min_value=0, max_value=10**30).map(str),
    st.text("0123456789", min_size=1, max_size=25),
    st.text("0123456789²³¹١٢۳+-.e", min_size=1, max_size=25),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), min_size=1, max_size=25),
)


@settings(bounded, max_examples=50)
@given(value=LAST_EVENT_IDS, in_query=st.booleans())
@example(value="9" * 5000, in_query=True)
@example(value="99999999999999999999", in_query=False)
@example(value="²", in_query=True)
@example(value="١", in_query=True)
async def test_any_last_event_id_replays_after_it_or_nothing(hub, client, value, in_query):
    """A Last-Event-ID of ASCII digits (one that fits a 64-bit id) replays what follows it;
    anything else is no Last-Event-ID at all. Never an error."""
    if (await client.get("/api/v1/rooms/replay")).status_code == 404:
        assert (await client.post("/api/v1/rooms", json={"id": "replay"})).status_code == 201
        for i in range(3):
            await publish(client, {"room": "replay", "speaker": "s", "data": {"i": i}})
    url = f"{hub.url}/api/v1/events/replay"
    if in_query:
        options = {"url": f"{url}?lastEventId={quote(value)}"}
    else:
        options = {"url": url, "Last-Event-ID": value.encode()}  # as UTF-8 bytes
    async with subscribe(**options) as events:
        last_id = events.hello["last_id"]
        sentinel = await publish(client, {"room": "replay", "speaker": "s", "data": {}})
        ids = []
        while not ids or ids[-1] < sentinel.json()["id"]:
            ids += [int(event.id) for event in await collect(events, 1)]
    after = int(value) if re.fullmatch(r"[0-9]{1,18}", value) else None
    replayed = list(range(after + 1, last_id + 1)) if after is not None else []
    assert ids == [*replayed, sentinel.json()["id"]]
