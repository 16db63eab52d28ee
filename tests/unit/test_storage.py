"""Storage: every SQL statement of the app, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from app import ApiToken, RoomRecord, ScheduledMessage, Storage, User, sha256_hex


def room(room_id: str, **fields) -> RoomRecord:
    values = dict(owner=None, title="", private=False, history_size=None, settings={})
    return RoomRecord(room_id, **(values | fields), last_id=0, created_at=1)


async def write(storage: Storage, rows: list[tuple]) -> None:
    """Store (room, id, payload[, expires_at]) rows."""
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


OLD_TABLES = """
CREATE TABLE rooms (
    id TEXT PRIMARY KEY, owner TEXT, title TEXT NOT NULL DEFAULT '',
    private INTEGER NOT NULL DEFAULT 0, history_size INTEGER,
    settings TEXT NOT NULL DEFAULT '{}', last_id INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE messages (
    room TEXT NOT NULL, id INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (room, id)
) WITHOUT ROWID;
INSERT INTO rooms (id, last_id, created_at) VALUES ('old', 1, 1);
INSERT INTO messages VALUES ('old', 1, '{"id":1}');
"""


async def test_a_database_of_an_earlier_release_gets_the_new_columns(settings):
    """schema.sql's CREATE TABLE IF NOT EXISTS leaves an existing table as it was: the
    columns added since (ADDED_COLUMNS) are added, and what was stored is kept."""
    settings.database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(settings.database) as db:
        db.executescript(OLD_TABLES)
    storage = Storage(settings.database, settings.history_size)
    await storage.open()
    try:
        (record,) = await storage.load_rooms()
        assert (record.id, record.last_id, record.max_age_s) == ("old", 1, None)
        await storage.update_room(room("old", max_age_s=60))
        await write(storage, [("old", 2, '{"id":2}', 5)])
        assert await storage.history("old", 0, now=5) == [(1, '{"id":1}'), (2, None)]
    finally:
        await storage.close()
    storage = Storage(settings.database, settings.history_size)
    await storage.open()  # again: nothing to add
    try:
        assert (await storage.load_rooms())[0].max_age_s == 60
        assert [i for i, _ in await storage.history("old", 0)] == [1, 2]
    finally:
        await storage.close()


async def test_expired_and_aged_messages_are_kept_but_not_served(storage: Storage):
    await storage.insert_room(room("a"))
    rows = [(i, f'{{"id":{i},"time":{i * 100}}}') for i in (1, 2, 3, 4)]
    expiries = {2: 250, 4: 1000}
    await write(storage, [("a", i, payload, expiries.get(i)) for i, payload in rows])
    served = dict(rows)
    # at 250, message 2 has expired: its id stays (a replay's gap check needs it)
    assert await storage.history("a", 0, now=250) == [(1, served[1]), (2, None), *rows[2:]]
    assert await storage.history("a", 0, newest_first=True, limit=3, now=250) == [
        (4, served[4]),
        (3, served[3]),
        (2, None),
    ]
    # published before 200 (a max age): not served either
    assert await storage.history("a", 0, now=250, born_after=200) == [
        (1, None),
        (2, None),
        (3, served[3]),
        (4, served[4]),
    ]
    # trimmed to a max age: up to the newest message published before it
    assert await storage.trim_aged({"a": 300}) == {"a": 2}
    assert [i for i, _ in await storage.history("a", 0)] == [3, 4]
    assert await storage.trim_aged({"a": 300}) == {}


async def test_a_scheduled_message_is_claimed_once(storage: Storage):
    await storage.insert_room(room("a"))
    soon = ScheduledMessage("s1", "a", {"speaker": "s", "data": {}, "meta": None}, 100, 1)
    later = ScheduledMessage("s2", "a", {"speaker": "s", "data": {}, "meta": None}, 200, 1)
    assert await storage.insert_scheduled(soon, max_per_room=2)
    assert await storage.insert_scheduled(later, max_per_room=2)
    assert not await storage.insert_scheduled(replace(later, id="s3"), max_per_room=2)
    assert await storage.scheduled("a") == [soon, later]
    assert await storage.due_scheduled(150, limit=10) == [soon] and await storage.next_due() == 100
    async with storage.transaction():
        assert await storage.claim_scheduled(["s1"]) == {"s1"}
    async with storage.transaction():  # claimed: no one claims it again
        assert await storage.claim_scheduled(["s1"]) == set()
    assert not await storage.cancel_scheduled("b", "s2")  # another room's id: no
    assert await storage.cancel_scheduled("a", "s2")
    assert await storage.scheduled("a") == [] and await storage.next_due() is None
    assert await storage.insert_scheduled(replace(later, id="s4"), max_per_room=2)
    await storage.delete_room("a")  # its scheduled messages go with it
    assert await storage.scheduled("a") == []
