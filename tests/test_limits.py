"""Limits that must hold against an attacker without shutting out the people they protect
(issue 14, items 10-13): login failures per username at an address, the room AI's own
capacity, rooms per user and paged room lists, the request line within MAX_HEADER_BYTES,
and only the known usage fields from the AI service."""

from __future__ import annotations

import httpx
from conftest import Server, assert_envelope

ADMIN = {"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin password 1"}


def from_address(address: str) -> dict[str, str]:
    """The client address a proxy reports (the server trusts one proxy: TRUST_PROXY=1)."""
    return {"X-Forwarded-For": address}


# Logins (10)


def test_failed_logins_at_one_address_do_not_lock_the_user_out_at_another(make_server):
    server: Server = make_server(
        TRUST_PROXY="1", LOGIN_DELAY_S="30", LOGIN_MAX_FAILURES="3", **ADMIN
    )
    url = f"{server.url}/api/v1/auth/login"
    guess = {"username": "admin", "password": "a guess"}
    right = {"username": "admin", "password": ADMIN["ADMIN_PASSWORD"]}
    attacker, admin = from_address("203.0.113.66"), from_address("198.51.100.7")
    guesses = [httpx.post(url, json=guess, headers=attacker) for _ in range(6)]
    assert guesses[-1].status_code == 429
    assert httpx.post(url, json=right, headers=admin).status_code == 200
    assert httpx.post(url, json=guess, headers=admin).status_code == 401  # counted apart
    # at the attacker's address, each failure makes the next attempt wait: 429, and the
    # right password waits too
    assert [reply.status_code for reply in guesses] == [401] + [429] * 5
    for refused in [*guesses[1:], httpx.post(url, json=right, headers=attacker)]:
        assert_envelope(refused, 429, "Too many failed logins")
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert refused.json()["retry_after"] == int(refused.headers["retry-after"])
