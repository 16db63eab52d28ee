"""The server adaptations against the installed h11 and Hypercorn, and the app as built by
create_app served in this process (Quart's test client)."""

from __future__ import annotations

import re

import h11
import hypercorn.asyncio.run
import hypercorn.asyncio.tcp_server
import pytest

from app import (
    AdaptationError,
    KeepAliveTimer,
    Settings,
    StreamsEndingContext,
    create_app,
    install,
)


async def test_the_adaptations_apply_to_the_installed_versions():
    ended: list[bool] = []

    async def end_streams() -> None:
        ended.append(True)

    install(end_streams)  # raises AdaptationError if h11 or Hypercorn changed under them
    install(end_streams)  # and again: nothing stacks
    parser = h11.Connection(h11.SERVER)
    parser.receive_data("GET /send/otto?msg=冲！冲刺！ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    request = parser.next_event()
    assert request.target == b"/send/otto?msg=%E5%86%B2%EF%BC%81%E5%86%B2%E5%88%BA%EF%BC%81"
    assert hypercorn.asyncio.tcp_server.AsyncioSingleTask is KeepAliveTimer
    assert hypercorn.asyncio.tcp_server.TCPServer._close.aborts
    context = hypercorn.asyncio.run.WorkerContext(None)
    assert isinstance(context, StreamsEndingContext)
    await context.terminated.set()
    await context.terminated.set()
    assert ended == [True]  # the streams end once, before the worker stops


async def test_the_app_serves_in_process(tmp_path):
    app = create_app(Settings(_env_file=None, data_dir=tmp_path, sse_token="t" * 20))
    async with app.test_app():
        client = app.test_client()
        health = await client.get("/healthz")
        assert (await health.get_json())["rooms"] == 1  # the default room
        created = await client.post(
            "/api/v1/rooms", json={"id": "Stage"}, headers={"Authorization": "Bearer " + "t" * 20}
        )
        assert created.status_code == 201
        assert (await created.get_json())["room"]["id"] == "stage"
        missing = await client.get("/api/v1/rooms/nope")
        body = await missing.get_json()
        assert missing.status_code == 404 and body == {
            "success": False,
            "code": 404,
            "msg": "Unknown room: nope",
            "room": "nope",
        }


def test_an_adaptation_refuses_to_start_when_its_dependency_changed(monkeypatch):
    async def end_streams() -> None:
        pass

    class ChangedTCPServer:  # a Hypercorn whose connections keep their idle timer otherwise
        pass

    monkeypatch.setattr(h11._readers, "request_line_re", re.compile(rb"(?P<target>\S+)"))
    with pytest.raises(AdaptationError, match="request_line_re"):
        install(end_streams)
    monkeypatch.undo()
    monkeypatch.setattr(hypercorn.asyncio.tcp_server, "AsyncioSingleTask", object)
    monkeypatch.setattr(hypercorn.asyncio.tcp_server, "TCPServer", ChangedTCPServer)
    with pytest.raises(AdaptationError, match="TCPServer"):
        install(end_streams)

    class TCPServerClosingOtherwise(hypercorn.asyncio.tcp_server.TCPServer):
        async def _close(self) -> None:  # a Hypercorn that closes its connections otherwise
            self.writer.close()

    monkeypatch.undo()
    install(end_streams)
    monkeypatch.setattr(hypercorn.asyncio.tcp_server, "TCPServer", TCPServerClosingOtherwise)
    with pytest.raises(AdaptationError, match="closes its writer"):
        install(end_streams)
