"""Limits (issues 14, 17): a Limit's growing wait, client keys (IPv6 by /64), the relay's
per-client limits under them, and the token buckets of publish rate limits."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import pytest

from app import ApiError, Bucket, Limit, LocalBroker, Metrics, Relay, Settings, client_key


def test_a_limit_doubles_the_wait_after_each_event_up_to_its_cap_then_stops_them():
    limit = Limit(events=5, delay_s=1, max_delay_s=5)
    window: deque[float] = deque()
    waits = []
    for _ in range(5):
        waits.append(limit.wait(window, 900, 0.0))
        window.append(0.0)
    assert waits == [0, 1, 2, 4, 5]
    assert limit.wait(window, 900, 0.0) == 900  # the hard limit: until the window moves
    assert Limit(events=5).wait(deque([0.0] * 4), 900, 0.0) == 0  # no delay_s: no wait


def test_client_keys_are_addresses_and_ipv6_64s():
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:DB8:1:2:ffff:ffff:ffff:fffe") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"  # IPv4, as a v6 socket sees it
    assert client_key("") == "" and client_key("not an address") == "not an address"


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[Relay]:
    """A relay whose (demo) chats run until closed, one at a time per client."""
    changed = settings.model_copy(update={"demo_delay_s": 60, "chat_max_per_client": 1})
    relay = Relay(changed, Metrics(), None)
    await relay.start()
    yield relay
    await relay.close()


async def test_ipv6_addresses_of_one_64_are_one_client_of_the_relay(relay: Relay):
    prompt = [{"role": "user", "content": "hi"}]
    relay.start_chat("2001:db8:1:2::1", prompt)
    with pytest.raises(ApiError, match="Too many chats at once") as refused:
        relay.start_chat("2001:db8:1:2::2", prompt)
    assert refused.value.status == 429
    relay.start_chat("2001:db8:1:3::1", prompt)


async def test_buckets_are_taken_from_all_or_none():
    broker = LocalBroker(None)
    token, user = Bucket("token", "t", 3, 60), Bucket("user", "u", 2, 60)
    assert await broker.take({token: 1, user: 1}) is None
    assert await broker.take({token: 1, user: 1}) is None
    refused, wait = await broker.take({token: 1, user: 1})
    assert refused == user and 29 < wait <= 30  # a message comes back every 30 s
    assert await broker.take({token: 1}) is None  # the refusal took nothing from it
    refused, wait = await broker.take({token: 2})
    assert refused == token and 39 < wait <= 40


@pytest.mark.parametrize("now", [0.1, 5.3, 1234.567])  # (0.1 + 60) - 60 - 0.1 is 1.4e-15
async def test_a_bucket_taken_to_exactly_its_size_is_not_refused(monkeypatch, now):
    monkeypatch.setattr("app.time.monotonic", lambda: now)
    broker = LocalBroker(None)
    token, user = Bucket("token", "t", 3, 60), Bucket("user", "u", 4, 60)
    assert await broker.take({token: 3, user: 3}) is None
    assert await broker.take({user: 1}) is None  # the user's 4th
    refused, wait = await broker.take({user: 1})
    assert refused == user and wait == pytest.approx(15)
