"""What a publish and a request must be, before anything is stored."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter, ValidationError

from app import (
    ROOM_ID,
    ApiError,
    RoomCreate,
    Settings,
    envelope,
    json_depth,
    matching,
    parse_json,
    parse_last_event_id,
    validate_message,
)


def test_a_message_is_validated_and_bounded(settings: Settings):
    message, room, token, due_at = validate_message(
        {"speaker": "otto", "data": {"message": "冲！"}, "room": "Lobby", "token": "t"}, settings
    )
    assert message == {"speaker": "otto", "data": {"message": "冲！"}, "meta": None}
    assert (room, token, due_at) == ("Lobby", "t", None)
    for bad, status, says in [
        ({"speaker": " ", "data": {}}, 400, "speaker must be a non-blank string"),
        ({"speaker": "s", "data": "text"}, 400, "data must be a JSON object"),
        ({"speaker": "s" * 65, "data": {}}, 400, "speaker"),
        ({"speaker": "s", "data": {"x": "y" * 70_000}}, 413, "Message too large"),
        ({"speaker": "s", "data": {}, "meta": json.loads("[" * 40 + "]" * 40)}, 400, "deeper"),
        ("not an object", 400, "must be a JSON object"),
    ]:
        with pytest.raises(ApiError) as refused:
            validate_message(bad, settings)
        assert refused.value.status == status and says in refused.value.msg


def test_ids_must_match_whole():
    room_id = TypeAdapter(matching(ROOM_ID.pattern, "1-64 letters or digits"))
    assert room_id.validate_python("Lobby1") == "Lobby1"
    for bad in ("lobby\n", "a-b", "", "x" * 65):
        with pytest.raises(ValidationError):
            room_id.validate_python(bad)
    with pytest.raises(ValidationError):
        RoomCreate.model_validate({"id": "room\n"})


def test_json_from_outside_is_strict():
    assert parse_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    for bad in (b"NaN", b"1e400", b'"\\ud800"', b"[" * 100_000):
        with pytest.raises(ValueError):
            parse_json(bad)
    assert json_depth({"a": [{"b": 1}]}) == 3 and json_depth(5) == 0


def test_last_event_id_and_the_envelope():
    assert parse_last_event_id({b"last-event-id": b"42"}, {}) == 42
    assert parse_last_event_id({}, {"lastEventId": "7"}) == 7
    assert parse_last_event_id({b"last-event-id": b"4x"}, {}) is None
    assert parse_last_event_id({}, {"lastEventId": "١٢"}) is None  # ASCII digits only
    assert envelope(202, "Sent", id=3) == {"success": True, "code": 202, "msg": "Sent", "id": 3}
    assert ApiError(429, "Slow down", retry_after=3).headers() == [("Retry-After", "3")]
