"""Accounts: passwords, sessions, API tokens and the rights they give, in this process."""

from __future__ import annotations

import pytest

from app import Accounts, ApiError, Metrics, Room, RoomRecord, Settings


def a_room(settings: Settings, owner: str | None, private: bool = False) -> Room:
    record = RoomRecord("stage", owner, "", private, None, {}, 0, 0)
    return Room(record, settings, Metrics())


async def test_login_session_refresh_and_reuse(accounts: Accounts):
    user = await accounts.create_user("alice", "correct horse", "user")
    assert await accounts.verify_login("alice", "wrong password", "1.2.3.4") is None
    assert await accounts.verify_login("ALICE", "correct horse", "5.6.7.8") == user
    access, refresh = await accounts.start_session(user)
    assert accounts.authenticate(access).user_id == user.id
    _, access2, refresh2 = await accounts.refresh_session(refresh)
    assert accounts.authenticate(access2).name == "alice"
    with pytest.raises(ApiError, match="reused"):
        await accounts.refresh_session(refresh)  # the old one again: the session ends
    with pytest.raises(ApiError, match="Session ended"):
        accounts.authenticate(access2)
    assert accounts.announced, "the other processes are told of every change"


async def test_failed_logins_wait_at_their_address_only(accounts: Accounts):
    # a wait longer than any argon2 verification, however loaded the machine
    accounts.settings = accounts.settings.model_copy(update={"login_delay_s": 20})
    user = await accounts.create_user("alice", "correct horse", "user")
    assert await accounts.verify_login("alice", "a guess", "203.0.113.66") is None
    for password in ("a guess", "correct horse"):
        with pytest.raises(ApiError) as refused:
            await accounts.verify_login("alice", password, "203.0.113.66")
        assert refused.value.status == 429 and 1 <= refused.value.extra["retry_after"] <= 20
    assert await accounts.verify_login("alice", "correct horse", "198.51.100.7") == user
    assert await accounts.verify_login("bob", "a guess", "203.0.113.66") is None  # another user


async def test_rights_of_the_root_token_users_and_api_tokens(accounts: Accounts, settings):
    owner = await accounts.create_user("owner", "owner password", "user")
    other = await accounts.create_user("other", "other password", "user")
    room = a_room(settings, owner.id, private=True)
    assert accounts.authorize("root-token-for-tests", room, "publish").kind == "root"
    owner_access, _ = await accounts.start_session(owner)
    other_access, _ = await accounts.start_session(other)
    assert accounts.authorize(owner_access, room, "manage").user_id == owner.id
    with pytest.raises(ApiError) as refused:
        accounts.authorize(other_access, room, "subscribe")
    assert refused.value.status == 403
    secret, _ = await accounts.create_api_token(
        owner.id, "obs", frozenset({"stage"}), frozenset({"subscribe"}), None
    )
    assert accounts.authorize(secret, room, "subscribe").kind == "token"
    with pytest.raises(ApiError, match="No publish right"):
        accounts.authorize(secret, room, "publish")
    with pytest.raises(ApiError) as missing:
        accounts.authorize(None, room, "subscribe")
    assert missing.value.status == 401


async def test_deleting_a_user_ends_their_sessions_and_tokens(accounts: Accounts):
    user = await accounts.create_user("gone", "gone password", "user")
    access, _ = await accounts.start_session(user)
    secret, _ = await accounts.create_api_token(user.id, "t", None, frozenset({"publish"}), None)
    await accounts.delete_user(user.id)
    for credential in (access, secret):
        with pytest.raises(ApiError) as refused:
            accounts.authenticate(credential)
        assert refused.value.status == 401
