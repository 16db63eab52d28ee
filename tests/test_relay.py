"""AI chat relay: two-step and one-step flows, resume, cancel, limits, the room AI speaker,
the demo model and the clock (issue 5). The upstream is tests/fake_llm.py, a real HTTP
server on 127.0.0.1 speaking the OpenAI streaming format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from conftest import Server, subscribe
from fake_llm import INTERNALS, KEY, WORDS, Call, FakeLLM, relay_env
from httpx_sse import ServerSentEvent, aconnect_sse

SSE_TYPE = "text/event-stream; charset=utf-8"
LONG_ANSWER = [f"word{i}" for i in range(400)]  # ~8 s at the stand-in's default delay


@pytest.fixture(scope="module")
def relay_server(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("relay"), **relay_env(fake_llm)).start()
    yield server
    server.stop()


async def post(url: str, body: dict, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, json=body, headers=headers)


async def start_chat(server: Server, **body) -> str:
    reply = await post(f"{server.url}/api/v1/chat", body)
    assert reply.status_code == 202, reply.text
    assert reply.json()["success"] is True
    return reply.json()["uid"]


async def read_events(
    source, limit: int | None = None, raw: list[str] | None = None
) -> list[ServerSentEvent]:
    """Events of a chat stream until done or error (or `limit` events), within 20 s."""
    assert source.response.status_code == 200, await source.response.aread()
    assert source.response.headers["content-type"] == SSE_TYPE
    assert source.response.headers["cache-control"] == "no-cache"
    assert source.response.headers["x-accel-buffering"] == "no"
    events = []
    async with asyncio.timeout(20):
        async for event in source.aiter_sse():
            events.append(event)
            if raw is not None:
                raw.append(event.data)
            if event.event in ("done", "error") or len(events) == limit:
                break
    return events


async def read_chat(url: str, limit: int | None = None, **headers: str) -> list[ServerSentEvent]:
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
        aconnect_sse(client, "GET", url, headers=headers) as source,
    ):
        return await read_events(source, limit)


def answer_of(events: list[ServerSentEvent]) -> str:
    return "".join(json.loads(e.data)["content"] for e in events if e.event == "delta")


def last_data(events: list[ServerSentEvent]) -> dict:
    return json.loads(events[-1].data)


async def arrival(llm: FakeLLM, index: int) -> Call:
    """The stand-in's request number `index` (0-based), once it has arrived."""
    async with asyncio.timeout(10):
        while len(llm.calls) <= index:
            await asyncio.sleep(0.01)
    return llm.calls[index]


async def wait_for(event, seconds: float = 15) -> bool:
    """Wait for a threading.Event of the stand-in without blocking the test's loop."""
    return await asyncio.to_thread(event.wait, seconds)


async def test_two_step_chat_streams_the_answer_with_ids(relay_server: Server, llm: FakeLLM):
    uid = await start_chat(relay_server, prompt="Say the fox line")
    events = await read_chat(f"{relay_server.url}/api/v1/chat/{uid}/events")
    assert answer_of(events) == llm.answer()
    assert [e.event for e in events] == ["delta"] * len(llm.words) + ["done"]
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    done = last_data(events)
    assert done["finish_reason"] == "stop" and done["model"] == "fake-model"
    assert done["usage"]["completion_tokens"] == len(llm.words)
    sent = llm.calls[-1].body
    assert sent["stream"] is True and sent["model"] == "fake-model" and sent["max_tokens"] == 77
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say the fox line"},
    ]


async def test_late_subscriber_and_two_tabs_get_the_whole_answer(
    relay_server: Server, llm: FakeLLM
):
    index = len(llm.calls)
    uid = await start_chat(relay_server, uid="late-tab_1", prompt="hi")
    assert uid == "late-tab_1"
    assert await wait_for(
        (await arrival(llm, index)).completed
    )  # the answer is over before anyone looks
    url = f"{relay_server.url}/api/v1/chat/{uid}/events"
    late = await read_chat(url)
    assert answer_of(late) == llm.answer() and late[-1].event == "done"

    llm.words, llm.delay = WORDS * 5, 0.02
    uid = await start_chat(relay_server, messages=[{"role": "user", "content": "again"}])
    url = f"{relay_server.url}/api/v1/chat/{uid}/events"
    first = await read_chat(url, limit=3)  # a tab that joins mid-answer, then a second one
    tab1, tab2 = await asyncio.gather(read_chat(url), read_chat(url))
    assert answer_of(first)
    assert answer_of(tab1) == answer_of(tab2) == llm.answer()
    assert [e.id for e in tab1] == [e.id for e in tab2]


async def test_resume_by_last_event_id(relay_server: Server, llm: FakeLLM):
    llm.words = WORDS * 3
    uid = await start_chat(relay_server, prompt="resume me")
    url = f"{relay_server.url}/api/v1/chat/{uid}/events"
    head = await read_chat(url, limit=4)
    tail = await read_chat(url, **{"Last-Event-ID": head[-1].id})
    assert [int(e.id) for e in head + tail] == list(range(1, len(head + tail) + 1))
    assert answer_of(head + tail) == llm.answer()
    by_query = await read_chat(f"{url}?lastEventId=10")
    assert by_query[0].id == "11" and by_query[-1].id == tail[-1].id
    async with httpx.AsyncClient() as client:  # over and all seen: EventSource stops on 204
        reply = await client.get(url, headers={"Last-Event-ID": tail[-1].id})
    assert reply.status_code == 204


async def test_cancel_closes_the_upstream_request(relay_server: Server, llm: FakeLLM):
    llm.words = LONG_ANSWER
    uid = await start_chat(relay_server, prompt="a long one")
    url = f"{relay_server.url}/api/v1/chat/{uid}/events"
    head = await read_chat(url, limit=3)
    call = llm.calls[-1]
    async with httpx.AsyncClient() as client:
        reply = await client.delete(f"{relay_server.url}/api/v1/chat/{uid}")
    assert reply.status_code == 200 and reply.json()["success"] is True
    assert await wait_for(call.disconnected)
    assert not call.completed.is_set()
    rest = await read_chat(url, **{"Last-Event-ID": head[-1].id})
    assert rest[-1].event == "error"
    assert last_data(rest)["code"] == 499 and last_data(rest)["msg"] == "Chat cancelled"
    assert len(answer_of(head + rest)) < len(llm.answer())


async def test_nobody_listening_closes_the_upstream_request(make_server, llm: FakeLLM):
    relay_server: Server = make_server(**relay_env(llm, CHAT_IDLE_S="1"))
    llm.words = LONG_ANSWER
    index = len(llm.calls)
    never_followed = await start_chat(relay_server, prompt="nobody will look")
    unwatched_call = await arrival(llm, index)
    left = await start_chat(relay_server, prompt="a tab that closes")
    left_call = await arrival(llm, index + 1)
    await read_chat(f"{relay_server.url}/api/v1/chat/{left}/events", limit=2)
    assert await wait_for(unwatched_call.disconnected)
    assert await wait_for(left_call.disconnected)
    assert not unwatched_call.completed.is_set() and not left_call.completed.is_set()
    for uid in (never_followed, left):
        events = await read_chat(f"{relay_server.url}/api/v1/chat/{uid}/events")
        assert events[-1].event == "error" and last_data(events)["code"] == 499


async def test_one_step_stream(relay_server: Server, llm: FakeLLM):
    url = f"{relay_server.url}/api/v1/chat/stream"
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "the fox line please"},
    ]
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
        aconnect_sse(client, "POST", url, json={"messages": messages}) as source,
    ):
        events = await read_events(source)
    assert answer_of(events) == llm.answer() and last_data(events)["finish_reason"] == "stop"
    assert llm.calls[-1].body["messages"][1:] == messages

    llm.words = LONG_ANSWER  # the client hangs up: the upstream request goes too
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
        aconnect_sse(client, "POST", url, json={"prompt": "long"}) as source,
    ):
        await read_events(source, limit=3)
    assert await wait_for(llm.calls[-1].disconnected)
    assert not llm.calls[-1].completed.is_set()


@pytest.mark.parametrize(
    ("mode", "code", "msg"),
    [
        ("401", 502, "The AI service rejected the request (401)"),
        ("429", 502, "The AI service is over its rate limit (429); try again later"),
        ("500", 502, "The AI service failed (500)"),
        ("cut", 502, "The connection to the AI service was lost"),
        ("garbage", 502, "The AI service sent an invalid response"),
        ("stall", 504, "The AI service timed out"),
    ],
)
async def test_upstream_failures_become_safe_error_events(
    relay_server: Server, llm: FakeLLM, mode: str, code: int, msg: str
):
    llm.mode = mode
    uid = await start_chat(relay_server, prompt=f"fail with {mode}")
    url = f"{relay_server.url}/api/v1/chat/{uid}/events"
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
        client.stream("GET", url) as response,
    ):
        raw = (await response.aread()).decode()
    assert KEY not in raw and INTERNALS not in raw
    events = await read_chat(url, **{"Last-Event-ID": "0"})
    assert events[-1].event == "error"
    assert last_data(events) == {"success": False, "code": code, "msg": msg}
    if mode in ("cut", "stall", "garbage"):  # what came before the failure was relayed
        assert llm.answer().startswith(answer_of(events)) and answer_of(events)
    if mode == "stall":  # the relay gave up on the stalled request and closed it
        assert await wait_for(llm.calls[-1].disconnected)


async def test_the_key_appears_in_no_response_frame_or_log(make_server, llm: FakeLLM):
    server: Server = make_server(**relay_env(llm, LOG_LEVEL="DEBUG"))
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        for mode in ("ok", "401", "500"):
            llm.mode = mode
            reply = await client.post(f"{server.url}/api/v1/chat", json={"prompt": "x"})
            seen.append(reply.text)
            async with client.stream(
                "GET", f"{server.url}/api/v1/chat/{reply.json()['uid']}/events"
            ) as response:
                seen.append((await response.aread()).decode())
        async with client.stream(
            "POST", f"{server.url}/api/v1/chat/stream", json={"prompt": "y"}
        ) as response:
            seen.append((await response.aread()).decode())
        llm.mode = "ok"
        index = len(llm.calls)
        reply = await client.post(
            f"{server.url}/api/v1/rooms/lobby/ai",
            json={"prompt": "z"},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        seen.append(reply.text)
        assert await wait_for((await arrival(llm, index)).completed)
        async with client.stream(
            "GET", f"{server.url}/api/v1/events", headers={"Last-Event-ID": "0"}
        ) as response:
            async for line in response.aiter_lines():
                seen.append(line)
                if line.startswith("id: "):
                    break
        seen.append((await client.get(f"{server.url}/healthz")).text)
    assert all(call.authorization == f"Bearer {KEY}" for call in llm.calls)  # it was in play
    assert any("The AI service rejected the request (401)" in text for text in seen)
    assert not [text for text in seen if KEY in text]
    server.stop()
    log = server.log()
    assert "AI service answered 401" in log  # the failure was logged ...
    assert KEY not in log  # ... without the key the stand-in echoed


async def test_limits_answer_429_with_retry_after(make_server):
    server: Server = make_server(
        DEMO_DELAY_S="0.2",  # demo chats stay running for seconds
        CHAT_MAX_PER_CLIENT="2",
        CHAT_MAX_TOTAL="3",
        CHAT_RATE_LIMIT="3",
        CHAT_RATE_WINDOW_S="60",
    )
    chat_url = f"{server.url}/api/v1/chat"
    other_address = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        httpx.AsyncClient(timeout=10) as alice,
        httpx.AsyncClient(timeout=10, transport=other_address) as bob,
    ):
        first = [(await alice.post(chat_url, json={"prompt": "a"})) for _ in range(2)]
        assert [reply.status_code for reply in first] == [202, 202]
        per_client = await alice.post(chat_url, json={"prompt": "a"})
        assert per_client.status_code == 429 and int(per_client.headers["retry-after"]) > 0
        assert per_client.json()["msg"].startswith("Too many chats at once (max 2)")
        assert (await bob.post(chat_url, json={"prompt": "b"})).status_code == 202
        total = await bob.post(f"{server.url}/api/v1/chat/stream", json={"prompt": "b"})
        assert total.status_code == 429 and int(total.headers["retry-after"]) > 0
        assert total.json() == {
            "success": False,
            "code": 429,
            "msg": "The server is busy with other chats",
            "retry_after": 5,
        }
        for reply in first:
            await alice.delete(f"{chat_url}/{reply.json()['uid']}")
        third = await alice.post(chat_url, json={"prompt": "a"})
        assert third.status_code == 202
        await alice.delete(f"{chat_url}/{third.json()['uid']}")
        rate = await alice.post(chat_url, json={"prompt": "a"})
        assert rate.status_code == 429
        assert rate.json()["msg"] == "Rate limited: at most 3 chats per 60 s"
        assert 0 < int(rate.headers["retry-after"]) <= 60


async def test_login_required_and_chats_expire(make_server):
    server: Server = make_server(CHAT_REQUIRE_LOGIN="true", DEMO_DELAY_S="0", CHAT_TTL_S="0.5")
    for path in ("/api/v1/chat", "/api/v1/chat/stream"):
        reply = await post(f"{server.url}{path}", {"prompt": "hi"})
        assert reply.status_code == 401 and reply.json()["success"] is False
        wrong = await post(f"{server.url}{path}", {"prompt": "hi", "token": "nope"})
        assert wrong.status_code == 401
    reply = await post(
        f"{server.url}/api/v1/chat", {"prompt": "hi"}, Authorization=f"Bearer {server.token}"
    )
    assert reply.status_code == 202
    url = f"{server.url}/api/v1/chat/{reply.json()['uid']}/events"
    events = await read_chat(url)
    assert events[-1].event == "done"
    async with httpx.AsyncClient() as client, asyncio.timeout(15):
        while (await client.get(url)).status_code != 404:  # freed CHAT_TTL_S after the end
            await asyncio.sleep(0.1)
        gone = await client.get(url)
    assert gone.json()["msg"] == f"Unknown or expired chat: {reply.json()['uid']}"


async def test_room_ai_speaker_streams_deltas_and_stores_one_message(
    relay_server: Server, llm: FakeLLM
):
    relay_server.create_room("stage")
    ai_url = f"{relay_server.url}/api/v1/rooms/stage/ai"
    auth = {"Authorization": f"Bearer {relay_server.token}"}
    assert (await post(ai_url, {"prompt": "hi"})).status_code == 401
    assert (
        await post(f"{relay_server.url}/api/v1/rooms/nope/ai", {"prompt": "hi"})
    ).status_code == 404
    async with subscribe(f"{relay_server.url}/api/v1/events/stage") as events:
        reply = await post(ai_url, {"prompt": "Tell the fox line", "speaker": "Narrator"}, **auth)
        assert reply.status_code == 202, reply.text
        uid = reply.json()["uid"]
        assert reply.json()["target"] == {"room": "stage"}
        deltas = []
        async with asyncio.timeout(15):
            async for event in events:
                if event.event == "delta":
                    deltas.append(json.loads(event.data))
                elif event.event == "message":
                    final = json.loads(event.data)
                    break
    assert {d["stream"] for d in deltas} == {uid} and {d["speaker"] for d in deltas} == {"Narrator"}
    assert "".join(d["content"] for d in deltas) == llm.answer()
    assert final["speaker"] == "Narrator" and final["meta"] == "ai" and final["id"] == int(event.id)
    assert final["data"] == {"message": llm.answer(), "stream": uid}
    controller = await read_chat(f"{relay_server.url}/api/v1/chat/{uid}/events", **auth)
    assert last_data(controller)["id"] == final["id"]

    async with subscribe(
        f"{relay_server.url}/api/v1/events/stage", **{"Last-Event-ID": "0"}
    ) as late:
        assert late.hello["last_id"] == final["id"] == 1  # exactly one message stored
        replayed = await anext(late)
    assert json.loads(replayed.data) == final

    llm.mode = "500"  # a failed answer: the live text is withdrawn, nothing is stored
    async with subscribe(f"{relay_server.url}/api/v1/events/stage") as events:
        reply = await post(ai_url, {"prompt": "fail"}, **auth)
        async with asyncio.timeout(15):
            async for event in events:  # (the room's presence may change first)
                if event.event != "presence":
                    break
        failure = json.loads(event.data)
    assert failure == {
        "stream": reply.json()["uid"],
        "speaker": "AI",
        "error": "The AI service failed (500)",
    }
    room = httpx.get(f"{relay_server.url}/api/v1/rooms/stage").json()["room"]
    assert room["last_id"] == 1


async def test_demo_model_without_a_key(server: Server):
    uid = await start_chat(server, prompt="Are you real?")
    events = await read_chat(f"{server.url}/api/v1/chat/{uid}/events")
    answer = answer_of(events)
    assert answer.startswith("[Demo model]") and "“Are you real?”" in answer
    assert len([e for e in events if e.event == "delta"]) > 10  # word by word
    assert last_data(events) == {"finish_reason": "stop", "usage": None, "model": "demo"}


async def test_bad_chat_requests(server: Server):
    url = f"{server.url}/api/v1/chat"
    cases = [
        ({}, 400, "Send either prompt (a string) or messages (a list)"),
        (
            {"prompt": "a", "messages": []},
            400,
            "Send either prompt (a string) or messages (a list)",
        ),
        ({"prompt": "  "}, 400, "prompt must be a non-empty string"),
        ({"messages": []}, 400, "messages must be a non-empty list"),
        ({"messages": [{"role": "system", "content": "obey"}]}, 400, None),
        ({"messages": [{"role": "user"}]}, 400, None),
        ({"messages": [{"role": "user", "content": "x"}] * 51}, 413, "Too many messages (max 50)"),
        ({"prompt": "x" * 16001}, 413, "Prompt too long (max 16000 characters)"),
        ({"prompt": "x", "uid": "no spaces"}, 400, "uid must be 1-64 letters, digits, '-' or '_'"),
    ]
    for body, status, msg in cases:
        reply = await post(url, body)
        assert reply.status_code == status, (body, reply.text)
        assert reply.json()["success"] is False
        if msg:
            assert reply.json()["msg"] == msg
    async with httpx.AsyncClient() as client:
        not_json = await client.post(url, content=b"{nope")
        assert not_json.status_code == 400
        unknown = await client.get(f"{url}/nosuchchat/events")
        assert unknown.status_code == 404 and unknown.json()["success"] is False
    uid = await start_chat(server, uid="taken", prompt="x")
    duplicate = await post(url, {"uid": uid, "prompt": "x"})
    assert duplicate.status_code == 409


async def test_clock_streams_the_time(relay_server: Server):
    async with (
        httpx.AsyncClient(timeout=10) as client,
        aconnect_sse(client, "GET", f"{relay_server.url}/api/v1/clock") as source,
    ):
        assert source.response.headers["content-type"] == SSE_TYPE
        ticks = []
        async with asyncio.timeout(15):
            async for event in source.aiter_sse():
                if not event.data:  # a keepalive: httpx-sse yields one once an id was seen
                    continue
                ticks.append(json.loads(event.data))
                if len(ticks) == 3:
                    break
    times = [tick["time"] for tick in ticks]
    assert times == sorted(times) and len(set(times)) == 3
    for tick in ticks:
        assert datetime.fromisoformat(tick["iso"]).timestamp() * 1000 == pytest.approx(
            tick["time"], abs=1
        )
