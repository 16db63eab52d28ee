"""Storage: every SQL statement of the app, on a real SQLite file."""

from __future__ import annotations

import sqlite3

import pytest

from app import ApiToken, RoomRecord, Storage, User, sha256_hex


def room(room_id: str, **fields) -> RoomRecord:
    values = dict(owner=None, title="", private=False, history_size=None, settings={})
    return RoomRecord(room_id, **(values | fields), last_id=0, created_at=1)


async def write(storage: Storage, rows: list[tuple[str, int, str]]) -> None:
    async with storage.lock:
        await storage.write_messages(rows)


async def test_rooms_round_trip(storage: Storage):
    await storage.insert_room(room("a", title="A", private=True, settings={"theme": "dark"}))
    await storage.insert_room(room("b", history_size=5))
    with pytest.raises(sqlite3.IntegrityError):
        await storage.insert_room(room("a"))
    loaded = {record.id: record for record in await storage.load_rooms()}
    assert loaded["a"] == room("a", title="A", private=True, settings={"theme": "dark"})
    changed = room("a", title="B", private=False, history_size=3, settings={})
    await storage.update_room(changed)
    assert (await storage.load_rooms())[0] == changed
    await storage.delete_room("b")
    assert [record.id for record in await storage.load_rooms()] == ["a"]


async def test_messages_advance_the_room_and_are_trimmed_to_its_history(storage: Storage):
    await storage.insert_room(room("a", history_size=3))
    await write(storage, [("a", i, f'{{"id":{i}}}') for i in range(1, 6)])
    assert await storage.history("a", 0) == [(3, '{"id":3}'), (4, '{"id":4}'), (5, '{"id":5}')]
    assert await storage.history("a", 3, before=5) == [(4, '{"id":4}')]
    assert await storage.history("a", 3, limit=1) == [(4, '{"id":4}')]  # a replay's page
    assert await storage.last_ids({"a", "nope"}) == {"a": 5}
    with pytest.raises(sqlite3.IntegrityError):  # an id is never stored twice: all or none
        await write(storage, [("a", 6, "{}"), ("a", 5, "{}")])
    assert await storage.last_ids({"a"}) == {"a": 5}


async def test_users_and_their_deletion(storage: Storage):
    await storage.insert_room(room("mine", owner="u1"))
    user = User("u1", "Alice", "user", False, 1)
    await storage.insert_user(user, "hash-1")
    with pytest.raises(sqlite3.IntegrityError):  # usernames are unique ignoring case
        await storage.insert_user(User("u2", "ALICE", "user", False, 2), "hash-2")
    assert await storage.user_login("alice") == (user, "hash-1")
    assert await storage.find_user("u1") == user and await storage.find_user("zz") is None
    await storage.update_user(User("u1", "Alice", "admin", True, 1), None, end_sessions=False)
    assert (await storage.load_users())["u1"].role == "admin"
    assert (await storage.user_login("alice"))[1] == "hash-1"  # None keeps the hash
    await storage.delete_user("u1")
    assert await storage.load_users() == {}
    assert (await storage.load_rooms())[0].owner is None


async def test_refresh_tokens_rotate_once_and_reuse_revokes_the_session(storage: Storage):
    await storage.insert_user(User("u1", "alice", "user", False, 1), "hash")
    await storage.insert_session("s1", "u1", sha256_hex("r1"), expiry=10_000, now=1)
    assert await storage.live_sessions(now=2) == {"s1": ("u1", 10_000)}
    outcome, row = await storage.rotate_refresh_token(sha256_hex("r1"), sha256_hex("r2"), 20_000, 3)
    assert outcome == "rotated" and row["session_id"] == "s1"
    assert await storage.live_sessions(now=4) == {"s1": ("u1", 20_000)}
    outcome, _ = await storage.rotate_refresh_token(sha256_hex("r1"), sha256_hex("r3"), 30_000, 5)
    assert outcome == "reused"
    assert await storage.live_sessions(now=6) == {}
    outcome, _ = await storage.rotate_refresh_token(sha256_hex("r2"), sha256_hex("r4"), 30_000, 7)
    assert outcome == "ended"
    outcome, _ = await storage.rotate_refresh_token(sha256_hex("no"), sha256_hex("r5"), 30_000, 8)
    assert outcome == "unknown"


async def test_api_tokens_are_stored_by_hash(storage: Storage):
    await storage.insert_user(User("u1", "alice", "user", False, 1), "hash")
    token = ApiToken("t1", "u1", "obs", frozenset({"a"}), frozenset({"publish"}), None, 5)
    await storage.insert_api_token(sha256_hex("smt_secret"), token)
    assert await storage.load_api_tokens() == {sha256_hex("smt_secret"): token}
    await storage.delete_api_token("t1")
    assert await storage.load_api_tokens() == {}


async def test_a_room_made_again_goes_on_from_the_deleted_ones_last_id(storage: Storage):
    assert await storage.insert_room(room("a")) == 0
    await write(storage, [("a", 1, "{}"), ("a", 2, "{}")])
    async with storage.lock:
        await storage.raise_last_ids({"a": 7})  # ids delivered by a commit that failed
    await storage.delete_room("a")
    assert await storage.insert_room(room("a")) == 7
    assert await storage.history("a", 0) == []
