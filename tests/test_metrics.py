"""GET /metrics: Prometheus text format (issue 10)."""

from __future__ import annotations

import os
import signal
import time
from contextlib import AsyncExitStack

import httpx
from conftest import Server, collect, subscribe
from prometheus_client.parser import text_string_to_metric_families


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    reply = httpx.get(f"{server.url}/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


async def test_metrics_count_what_the_hub_does(make_server):
    server: Server = make_server()
    before = scrape(server)
    for name in (
        "sm_messages_published_total",
        "sm_commits_total",
        "sm_deliveries_total",
        "sm_slow_consumer_disconnects_total",
        "sm_relay_streams_total",
        "sm_relay_upstream_errors_total",
        "sm_fallback_polls_total",
        "sm_publish_latency_seconds_count",
    ):
        assert before[(name, ())] == 0, name
    controller = f"{server.url}/api/v1/events?role=controller&token={server.token}"
    async with (
        subscribe(f"{server.url}/api/v1/events") as player,
        subscribe(f"{server.url}/api/v1/events"),
        subscribe(controller),
    ):
        server.publish(data={"n": 1})
        reply = httpx.post(
            f"{server.url}/api/v1/send",
            json=[{"speaker": "a", "data": {"n": 2}}, {"speaker": "a", "data": {"n": 3}}],
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert reply.status_code == 202
        await collect(player, 3)
        during = scrape(server)
    assert during[("sm_subscribers", (("role", "player"),))] == 2
    assert during[("sm_subscribers", (("role", "controller"),))] == 1
    assert during[("sm_messages_published_total", ())] == 3
    assert 1 <= during[("sm_commits_total", ())] <= 2
    assert during[("sm_publish_latency_seconds_count", ())] == 2  # two publish requests
    assert during[("sm_publish_latency_seconds_sum", ())] > 0
    assert during[("sm_publish_latency_seconds_bucket", (("le", "+Inf"),))] == 2
    assert during[("sm_deliveries_total", ())] >= 1
    health, later = server.health(), scrape(server)  # /healthz reads the same counters
    assert health["published"] == 3
    deliveries = ("sm_deliveries_total", ())
    assert during[deliveries] <= health["deliveries"] <= later[deliveries]
    deadline = time.monotonic() + 10  # the streams are gone once the server sees them close
    while scrape(server)[("sm_subscribers", (("role", "player"),))] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not (server.data_dir / "metrics").exists()  # one process counts in memory


def test_failed_publishes_are_not_counted(server: Server):
    before = scrape(server)[("sm_messages_published_total", ())]
    reply = httpx.post(f"{server.url}/api/v1/send", json={"speaker": "x", "data": {}})
    assert reply.status_code == 401
    assert scrape(server)[("sm_messages_published_total", ())] == before


PUBLISHED = ("sm_messages_published_total", ())
PLAYERS = ("sm_subscribers", (("role", "player"),))


async def test_every_worker_reports_the_whole_server(make_server, broker_url):
    server = make_server(workers=2, BROKER_URL=broker_url)
    async with AsyncExitStack() as streams:
        opened = 0  # streams (each on its connection) until both workers hold some
        while opened < 4 or not all(h["subscribers"] for h in server.worker_health().values()):
            await streams.enter_async_context(subscribe(f"{server.url}/api/v1/events"))
            opened += 1
            assert opened <= 20
        published = 0  # publishes (each on its connection) until both workers made some
        while not all(h["published"] for h in server.worker_health().values()):
            for _ in range(5):
                server.publish()
            published += 5
            assert published <= 100
        for _ in range(10):  # whichever worker answers
            metrics = scrape(server)
            assert metrics[PUBLISHED] == published
            assert metrics[("sm_publish_latency_seconds_count", ())] == published
            assert metrics[PLAYERS] == opened
    deadline = time.monotonic() + 10  # the streams are gone once their workers see them close
    while scrape(server)[PLAYERS] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_new_run_of_the_workers_counts_from_zero(make_server, broker_url):
    server = make_server(workers=2, BROKER_URL=broker_url)
    server.serving(2)
    stale = server.data_dir / "metrics" / "999999999-0123456789abcdef"  # a pid never given
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"stale")
    server.publish()
    server.stop()
    server.start()
    server.serving(4)
    assert scrape(server)[PUBLISHED] == 0
    (run,) = (server.data_dir / "metrics").iterdir()  # the earlier runs' are gone
    server.publish()
    assert scrape(server)[PUBLISHED] == 1
    assert list(run.glob("gauge_livesum_*.db"))
    os.kill(server.process.pid, signal.SIGTERM)  # as `docker stop`: Hypercorn stops its workers
    assert server.process.wait(15) == 0
    assert not list(run.glob("gauge_livesum_*.db"))  # stopping workers take their streams out
