"""The API contract: /openapi.json is served, valid and accurate (schemathesis drives every
JSON operation with generated requests and checks each reply against it); bad requests
get the JSON envelope, never HTML."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from conftest import ROOT, Server
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
STREAMS = r"/events|/clock|/chat/stream"  # text/event-stream replies never end: not fuzzed
EXAMPLES = 15  # per operation and mode: bounded, the whole run takes a minute or two


def test_openapi_is_served_and_valid(server: Server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    validate(spec)  # OpenAPI 3.1, or it raises
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert {
        ("GET", "/api/v1/events"),  # the hot path's routes, not Quart's, are documented too
        ("GET", "/api/v1/events/{room}"),
        ("POST", "/api/v1/send"),
        ("GET", "/api/v1/send/{speaker}"),
        ("POST", "/api/v1/auth/login"),
        ("PATCH", "/api/v1/rooms/{room_id}"),
        ("POST", "/api/v1/chat"),
        ("GET", "/healthz"),
    } <= operations
    events = spec["paths"]["/api/v1/events/{room}"]["get"]
    assert list(events["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {p["name"] for p in events["parameters"]} >= {"room", "role", "lastEventId"}
    publish = spec["paths"]["/api/v1/send"]["post"]
    assert "requestBody" in publish and "202" in publish["responses"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert "default" in operation["responses"], (method, path)  # the error envelope


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("POST", "/api/v1/auth/login", {"content": b"{nope"}, 400, "Invalid JSON"),
        ("POST", "/api/v1/auth/login", {"json": [1]}, 400, "Body must be a JSON object"),
        ("POST", "/api/v1/auth/login", {"json": {"username": "x"}}, 400, "password is required"),
        ("POST", "/api/v1/auth/login", {"json": {"username": 1, "password": "x"}}, 400, "string"),
        ("POST", "/api/v1/rooms", {"json": {"id": "a b"}}, 400, "id must be 1-64 letters"),
        ("POST", "/api/v1/rooms", {"json": {"id": "ok", "x": 1}}, 400, "Unknown field: x"),
        ("GET", "/no/such/page", {}, 404, "not found"),
        ("DELETE", "/healthz", {}, 405, "not allowed"),
    ],
)
def test_bad_requests_get_the_json_envelope(server: Server, method, path, kwargs, status, fragment):
    reply = httpx.request(
        method, f"{server.url}{path}", headers={"Authorization": f"Bearer {server.token}"}, **kwargs
    )
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["success"] is False and body["code"] == status
    assert fragment.lower() in body["msg"].lower(), body
    if isinstance(body.get("detail"), list):  # a schema error: every problem
        assert all({"field", "msg", "type"} <= set(problem) for problem in body["detail"])
    if status == 405:
        assert "GET" in reply.headers["allow"]


def test_schema_errors_do_not_echo_the_input(server: Server):
    """Pydantic would put the offending value in its errors: a password must not come back."""
    secret = "hunter2-but-longer-than-allowed" * 100
    reply = httpx.post(
        f"{server.url}/api/v1/users",
        json={"username": "echo", "password": secret},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert reply.status_code == 400 and "password" in reply.json()["msg"]
    assert "hunter2" not in reply.text


def test_schemathesis_finds_no_server_error_and_no_contract_break(make_server):
    server: Server = make_server(CHAT_RATE_LIMIT="0", DEMO_DELAY_S="0")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json").exclude(path_regex=STREAMS)
    root = {"Authorization": f"Bearer {server.token}"}  # exercised beyond 401
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case) -> None:
                case.call_and_validate(base_url=server.url, headers=root, checks=CHECKS)

            try:
                conforms()
            except Unsatisfiable:  # nothing to make invalid: no parameters, no body
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert "Traceback" not in server.log()


def test_the_client_library_and_its_source_maps_are_served(server: Server):
    for prefix in ("/static/js/", "/"):
        for name, kind in [
            ("sse-client.js", "text/javascript"),
            ("sse-client.min.js", "text/javascript"),
            ("sse-client.js.map", "application/json"),
            ("sse-client.min.js.map", "application/json"),
        ]:
            reply = httpx.get(f"{server.url}{prefix}{name}")
            assert reply.status_code == 200, (prefix, name)
            assert reply.headers["content-type"].startswith(kind)
            assert reply.content == (ROOT / "frontend" / "dist" / name).read_bytes()
    assert httpx.get(f"{server.url}/static/js/app.py").status_code == 404
