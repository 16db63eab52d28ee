"""The benchmark suite: every workload on every hub, interleaved, repeated, then a table of medians.

Usage: bench/run [--quick] [--reps N] [--hubs this,peer,nchan,hypercorn] [--workloads W1,W4]
                 [--profile]

Each run starts a fresh server pinned to CPU 0 and measures it from CPU 1 (this process
publishes, a subscriber process reads). Results go to bench/results/*.json.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import subscribers
import uvloop
from hubs import (
    BENCH_DIR,
    HOST,
    VENV_BIN,
    BareHypercorn,
    Hub,
    Nchan,
    PythonPeer,
    ThisApp,
    ThisAppNoCoalescing,
    ThisAppOnUvicorn,
    ThisAppRedis,
)
from procstat import cpu_busy_seconds, cpu_seconds, cpu_seconds_by_thread_kind, process_tree, rss_kb
from profile_summary import summarise
from publish import publish

SERVER_CPU, LOAD_CPU = 0, 1
SATURATED = 0.9  # load generator CPU share above which a figure measures the generator
HOST_BUSY = 0.15  # CPU share taken from the server's or generator's CPU by anything else
PUBLISH_WITHIN_S = 30  # a hub too slow to take a workload's messages in this is cut short
HANDSHAKES_IN_FLIGHT = 64  # below every hub's listen backlog, so no SYN is ever dropped


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    rooms: int
    subscribers_per_room: int
    messages: int
    publishers: int
    batch: int = 1  # messages per publish request
    interval_ms: float = 0  # paced: one request every interval_ms; 0: as fast as answered
    rooms_per_subscriber: int = 1  # >1: each subscriber has one stream of that many rooms

    @property
    def subscribers(self) -> int:
        return self.rooms * self.subscribers_per_room // self.rooms_per_subscriber

    def subscriber_rooms(self, rooms: list[str]) -> list[list[str]]:
        """The rooms of each subscriber: the rooms in groups of rooms_per_subscriber,
        subscribers_per_room subscribers for each group."""
        step = self.rooms_per_subscriber
        groups = [rooms[i : i + step] for i in range(0, len(rooms), step)]
        return [group for group in groups for _ in range(self.subscribers_per_room)]

    def describe(self) -> str:
        batches = f" in batches of {self.batch}" if self.batch > 1 else ""
        pace = f", one every {self.interval_ms:g} ms" if self.interval_ms else ""
        shape = f"{self.rooms} room(s) × {self.subscribers_per_room} subscriber(s)"
        if self.rooms_per_subscriber > 1:
            shape = f"{self.subscribers} subscribers × {self.rooms_per_subscriber} rooms each"
        return (
            f"{self.name} {self.title}: {shape}, {self.messages} messages{batches}, "
            f"{self.publishers} publisher(s){pace}"
        )


WORKLOADS = [
    Workload("W1", "fan-out", rooms=1, subscribers_per_room=1000, messages=200, publishers=4),
    Workload("W2", "many rooms", rooms=500, subscribers_per_room=2, messages=2000, publishers=4),
    Workload("W3", "idle crowd", rooms=1, subscribers_per_room=5000, messages=20, publishers=4),
    Workload("W4", "publish", rooms=1, subscribers_per_room=1, messages=20000, publishers=32),
    Workload(
        "W4b", "batch publish", rooms=1, subscribers_per_room=1, messages=20000, publishers=32,
        batch=50,
    ),
    Workload(
        "W5", "low load", rooms=1, subscribers_per_room=10, messages=200, publishers=1,
        interval_ms=10,
    ),
    Workload(
        "W6", "several rooms per stream", rooms=5, subscribers_per_room=1000, messages=500,
        publishers=4, rooms_per_subscriber=5,
    ),
]  # fmt: skip
QUICK_SIZES = {
    "W1": {"subscribers_per_room": 300, "messages": 100},
    "W2": {"rooms": 100, "messages": 400},
    "W3": {"subscribers_per_room": 1000},
    "W4": {"messages": 4000},
    "W4b": {"messages": 4000},
    "W5": {"messages": 100},
    "W6": {"subscribers_per_room": 300, "messages": 200},
}


class RunError(Exception):
    """A run that could not measure what it set out to (the hub failed or misbehaved)."""


class SubscriberProcess:
    """The subscriber side of the load generator, in its own process, driven over a pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, not a forked loop
        self.pipe, child_end = context.Pipe()
        self.process = context.Process(target=subscribers.main, args=(child_end,), daemon=True)
        self.process.start()
        child_end.close()

    async def ask(self, command: str, answer_within: float, **arguments):
        self.pipe.send((command, arguments))
        try:
            await asyncio.wait_for(subscribers.readable(self.pipe), answer_within)
        except TimeoutError:
            raise RunError(f"subscribers did not answer {command!r} in {answer_within} s") from None
        return self.pipe.recv()

    async def close(self) -> None:
        if self.process.is_alive():
            try:
                await self.ask("close", 5)
            except (RunError, OSError):
                self.process.kill()
        self.process.join(5)


def per_second(count: int, start_us: int, end_us: int) -> float | None:
    return count * 1e6 / (end_us - start_us) if end_us > start_us else None


async def measure(hub: Hub, workload: Workload, workdir: Path, profile_to: Path | None) -> dict:
    """Start the hub, run the workload once against it, stop it; return the figures."""
    rooms = [f"bench{i}" for i in range(workload.rooms)]
    hub.start(workdir)
    readers = SubscriberProcess()
    profiler = None
    try:
        await hub.wait_ready()
        await hub.create_rooms(rooms)
        server = process_tree(hub.process.pid)
        rss_before = rss_kb(server)

        subscriptions = [
            (group, hub.subscribe_path(group)) for group in workload.subscriber_rooms(rooms)
        ]
        connect_profiler = start_profiler(hub, connect_profile(profile_to)) if profile_to else None
        connect_cpu_before = cpu_seconds(server)
        connected = await readers.ask(
            "connect", 40, host=HOST, port=hub.port, subscriptions=subscriptions,
            concurrency=HANDSHAKES_IN_FLIGHT, subscribed_after=hub.subscribed_after,
        )  # fmt: skip
        connect_cpu = cpu_seconds(server) - connect_cpu_before
        if connect_profiler:
            stop_profiler(connect_profiler)
        if connected["failed"]:
            raise RunError(
                f"{connected['failed']} subscribers failed: {connected['failure_sample']}"
            )

        # Barrier: one probe per room, awaited by every subscriber, proves all are subscribed.
        probes = [(room, 1) for room in rooms]
        probe = await asyncio.wait_for(
            publish(hub, HOST, hub.port, probes, workload.publishers, within_s=15), 20
        )
        if probe.accepted != len(rooms):
            raise RunError(f"probe publishes answered {dict(probe.statuses)} {probe.errors[:3]}")
        ready = await readers.ask(
            "await", 15, expected_per_room=probe.accepted_per_room, timeout=10
        )
        if ready["lost"]:
            raise RunError(f"{ready['lost']} subscribers never got the probe message")
        server = process_tree(hub.process.pid)
        rss_connected = rss_kb(server)
        await readers.ask("reset", 5)

        load_generator = [os.getpid(), readers.process.pid]
        profiler = start_profiler(hub, profile_to) if profile_to else None
        jobs = [
            (rooms[i % len(rooms)], workload.batch)
            for i in range(workload.messages // workload.batch)
        ]
        threads_before = cpu_seconds_by_thread_kind(server)
        cpu_before = cpu_seconds(server), cpu_seconds(load_generator), time.monotonic()
        busy_before = cpu_busy_seconds(SERVER_CPU), cpu_busy_seconds(LOAD_CPU)
        published = await asyncio.wait_for(
            publish(
                hub, HOST, hub.port, jobs, workload.publishers, within_s=PUBLISH_WITHIN_S,
                interval_s=workload.interval_ms / 1000,
            ),
            40,
        )  # fmt: skip
        delivered = await readers.ask(
            "await", 15, expected_per_room=published.accepted_per_room, timeout=10
        )
        cpu_after = cpu_seconds(server), cpu_seconds(load_generator), time.monotonic()
        busy_after = cpu_busy_seconds(SERVER_CPU), cpu_busy_seconds(LOAD_CPU)
        threads_after = cpu_seconds_by_thread_kind(server)
        rss_after = rss_kb(server)
    finally:
        if profiler:
            stop_profiler(profiler)
        await readers.close()
        hub.stop()

    elapsed = cpu_after[2] - cpu_before[2]
    server_cpu = cpu_after[0] - cpu_before[0]
    load_cpu = cpu_after[1] - cpu_before[1]
    # What else ran on the two CPUs meanwhile: other processes, and kernel work no process
    # is charged for (interrupts, part of loopback networking).
    others_on_server_cpu = (busy_after[0] - busy_before[0] - server_cpu) / elapsed
    others_on_load_cpu = (busy_after[1] - busy_before[1] - load_cpu) / elapsed
    return {
        "connect_s": connected["connect_s"],
        "server_us_per_connection": connect_cpu / len(subscriptions) * 1e6,
        "rss_kb_per_subscriber": (rss_connected - rss_before) / workload.subscribers,
        "rss_kb": rss_after,
        "publish_requests": published.requests,
        "cut_short": published.requests < len(jobs),
        "published": published.accepted,
        "publishes_per_s": per_second(
            published.requests, published.first_send_us, published.last_answer_us
        ),
        "messages_per_s": per_second(
            published.accepted, published.first_send_us, published.last_answer_us
        ),
        "deliveries_per_s": per_second(
            delivered["received"], published.first_send_us, delivered["last_delivery_us"]
        ),
        "p50_ms": delivered["latency_ms"]["p50"],
        "p99_ms": delivered["latency_ms"]["p99"],
        "max_ms": delivered["latency_ms"]["max"],
        "server_cpu_share": server_cpu / elapsed,
        "server_us_per_delivery": server_cpu * 1e6 / max(1, delivered["received"]),
        "server_us_per_message": server_cpu * 1e6 / max(1, published.accepted),
        "server_us_per_message_by_thread": {
            kind: (threads_after[kind] - threads_before[kind]) * 1e6 / max(1, published.accepted)
            for kind in threads_after
        },
        "load_cpu_share": load_cpu / elapsed,
        "load_saturated": load_cpu / elapsed >= SATURATED,
        "others_cpu_share": max(0, others_on_server_cpu, others_on_load_cpu),
        "host_busy": max(others_on_server_cpu, others_on_load_cpu) >= HOST_BUSY,
        "expected": delivered["expected"],
        "received": delivered["received"],
        "lost": delivered["lost"],
        "extra": delivered["extra"],
        "dropped": delivered["dropped"],
        "rejected": published.rejected_requests + len(published.errors),
        "statuses": {str(status): n for status, n in published.statuses.items()},
        "publish_errors": published.errors[:3],
    }


def start_profiler(hub: Hub, output: Path) -> subprocess.Popen:
    """py-spy on the server and its workers, sampling without pausing them (--nonblocking)."""
    profiler = subprocess.Popen(
        [str(VENV_BIN / "py-spy"), "record", "--pid", str(hub.process.pid), "--subprocesses",
         "--nonblocking", "--rate", "250", "--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)  # attaching takes a moment
    return profiler


def connect_profile(profile: Path) -> Path:
    """Where the profile of a workload's connect phase goes, beside its measured window's."""
    return profile.with_name(f"{profile.stem}-connect{profile.suffix}")


def stop_profiler(profiler: subprocess.Popen) -> None:
    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    profiler.wait(20)


async def run_suite(hubs: list[Hub], workloads: list[Workload], reps: int, profile_dir) -> list:
    """Run every (rep, workload, hub), rotating the hubs' order each rep so drift hits all."""
    runs = []
    for rep in range(reps):
        for workload in workloads:
            for hub in hubs[rep % len(hubs) :] + hubs[: rep % len(hubs)]:
                run = {"rep": rep, "workload": workload.name, "hub": hub.name}
                if reason := hub.skips(workload):
                    run["skipped"] = reason
                else:
                    run.update(await measure_or_explain(hub, workload, profile_dir))
                runs.append(run)
                print(progress_line(run), file=sys.stderr, flush=True)
    return runs


async def measure_or_explain(hub: Hub, workload: Workload, profile_dir: Path | None) -> dict:
    """The run's figures, or what went wrong with the end of the server's log."""
    profile_to = profile_dir / f"profile-{workload.name}.txt" if profile_dir else None
    with tempfile.TemporaryDirectory(prefix=f"bench-{hub.name}-") as workdir:
        try:
            return await measure(hub, workload, Path(workdir), profile_to)
        except (RunError, OSError, TimeoutError, RuntimeError) as error:
            hub.stop()
            log = Path(workdir) / "server.log"
            tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
            return {"error": f"{type(error).__name__}: {error}", "server_log_tail": tail}


def progress_line(run: dict) -> str:
    head = f"rep {run['rep'] + 1} {run['workload']:<4} {run['hub']:<6}"
    if "error" in run or "skipped" in run:
        return f"{head} {run.get('error') or 'skipped: ' + run['skipped']}"
    return (
        f"{head} deliveries/s {fmt(run['deliveries_per_s'])}  publishes/s "
        f"{fmt(run['publishes_per_s'])}  p99 {fmt(run['p99_ms'])} ms  lost {run['lost']}  "
        f"dropped {run['dropped']}  server CPU {run['server_cpu_share']:.0%}  "
        f"load CPU {run['load_cpu_share']:.0%}  others {run['others_cpu_share']:.0%}"
    )


# The table: per workload, the columns that say most about it.
COLUMNS = {
    "W1": ["deliveries_per_s", "p50_ms", "p99_ms", "server_us_per_delivery"],
    "W2": ["deliveries_per_s", "messages_per_s", "p50_ms", "p99_ms", "server_us_per_message"],
    "W3": [
        "connect_s",
        "server_us_per_connection",
        "rss_kb_per_subscriber",
        "deliveries_per_s",
        "p99_ms",
    ],
    "W4": ["publishes_per_s", "p50_ms", "p99_ms", "server_us_per_message"],
    "W4b": ["messages_per_s", "publishes_per_s", "p99_ms", "server_us_per_message"],
    "W5": ["p50_ms", "p99_ms", "max_ms", "server_us_per_message"],
    "W6": ["deliveries_per_s", "p50_ms", "p99_ms", "server_us_per_delivery"],
}
LABELS = {
    "deliveries_per_s": "deliveries/s",
    "messages_per_s": "messages/s",
    "publishes_per_s": "requests/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "max_ms": "max ms",
    "server_us_per_delivery": "srv µs/deliv",
    "server_us_per_message": "srv µs/msg",
    "connect_s": "connect s",
    "server_us_per_connection": "srv µs/conn",
    "rss_kb_per_subscriber": "KB/sub",
    "server_cpu_share": "srv CPU",
    "load_cpu_share": "gen CPU",
    "others_cpu_share": "other CPU",
}
SHARES = ["server_cpu_share", "load_cpu_share", "others_cpu_share"]


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def summarise_runs(runs: list[dict]) -> dict:
    """{workload: {hub: cell}}, a cell holding the medians of the repetitions' figures."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(run["workload"], {}).setdefault(run["hub"], []).append(run)
    return {
        workload: {hub: summarise_cell(hub_runs) for hub, hub_runs in hubs.items()}
        for workload, hubs in groups.items()
    }


def summarise_cell(runs: list[dict]) -> dict:
    """Medians of the figures; losses and the like summed, since any one of them matters."""
    measured = [run for run in runs if "error" not in run and "skipped" not in run]
    cell = {
        "measured": len(measured),
        "errors": [run["error"] for run in runs if "error" in run],
        "skipped": next((run["skipped"] for run in runs if "skipped" in run), None),
        "load_saturated_runs": sum(run["load_saturated"] for run in measured),
        "host_busy_runs": sum(run["host_busy"] for run in measured),
        "cut_short_runs": sum(run["cut_short"] for run in measured),
    }
    for key in LABELS:
        values = [run[key] for run in measured if run.get(key) is not None]
        cell[key] = statistics.median(values) if values else None
    for key in ["lost", "extra", "dropped", "rejected"]:
        cell[key] = sum(run[key] for run in measured)
    return cell


def ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


NAME_WIDTH = 18  # "this/this-uvicorn"


def table(summary: dict, workloads: list[Workload], hub_names: list[str]) -> str:
    """Per workload: one line per hub (medians), then the ratios of this to each other hub."""
    lines = []
    for workload in workloads:
        cells = summary.get(workload.name, {})
        keys = COLUMNS[workload.name] + SHARES
        header = [f"{'':<{NAME_WIDTH}}"] + [f"{LABELS[key]:>13}" for key in keys]
        header += [f"{'lost':>6}", f"{'dropped':>8}", f"{'bad':>5}", "  flags"]
        lines += ["", workload.describe(), "".join(header)]
        for hub in hub_names:
            cell = cells.get(hub)
            if cell is None:
                continue
            row = [f"{hub:<{NAME_WIDTH}}"]
            if cell["skipped"]:
                lines.append(f"{hub:<{NAME_WIDTH}}  n/a: {cell['skipped']}")
                continue
            for key in keys:
                value = cell[key]
                shown = f"{value:.0%}" if key in SHARES and value is not None else fmt(value)
                row.append(f"{shown:>13}")
            row += [
                f"{cell['lost']:>6}",
                f"{cell['dropped']:>8}",
                f"{cell['rejected'] + cell['extra']:>5}",
            ]
            flags = []
            if cell["load_saturated_runs"]:
                flags.append(f"GEN-SATURATED {cell['load_saturated_runs']}/{cell['measured']}")
            if cell["host_busy_runs"]:
                flags.append(f"HOST-BUSY {cell['host_busy_runs']}/{cell['measured']}")
            if cell["cut_short_runs"]:
                flags.append(f"CUT-SHORT {cell['cut_short_runs']}/{cell['measured']}")
            if cell["errors"]:
                flags.append(f"FAILED {len(cell['errors'])}: {cell['errors'][0]}")
            lines.append("".join(row) + "  " + " ".join(flags))
        this = cells.get("this")
        for peer in ("peer", "nchan", "hypercorn", "this-uvicorn"):
            other = cells.get(peer)
            if this and other and not this["skipped"] and not other["skipped"]:
                row = [f"{'this/' + peer:<{NAME_WIDTH}}"]
                row += [
                    f"{fmt(ratio(this[key], other[key])) + '×':>13}"
                    for key in COLUMNS[workload.name]
                ]
                lines.append("".join(row))
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One target of issue 8: this project's figure, the one it is compared with, verdict."""

    name: str
    this: float | None
    compared: float | None
    met: bool | None  # None: not measured
    # For throughput targets, (the compared hub's CPU per unit) ÷ (this project's): the
    # throughput ratio two CPU-bound servers would show on idle CPUs. Steadier than the
    # measured ratio when the host is busy, since CPU time is not taken by other processes.
    per_cpu: float | None = None
    # The same figure of the reference hubs (name, figure): how far the server this project
    # runs on goes with no app at all, and how far this app goes on another server.
    references: tuple[tuple[str, float | None], ...] = ()


def targets(summary: dict) -> list[Target]:
    """The targets of issue 8, checked against the medians."""

    def figure(workload: str, hub: str, key: str):
        return summary.get(workload, {}).get(hub, {}).get(key)

    def check(name, this_at, peer_at, test, cpu_key=None, references=()) -> Target:
        """this_at, peer_at: (workload, figure) of this project and of the peer; peer_at
        may be a plain number instead. references: hubs whose same figure is shown too."""
        this = figure(this_at[0], "this", this_at[1])
        peer = figure(peer_at[0], "peer", peer_at[1]) if isinstance(peer_at, tuple) else peer_at
        met = test(this, peer) if this is not None and peer is not None else None
        per_cpu = cpu_key and ratio(
            figure(peer_at[0], "peer", cpu_key), figure(this_at[0], "this", cpu_key)
        )
        shown = tuple((hub, figure(this_at[0], hub, this_at[1])) for hub in references)
        return Target(name, this, peer, met, per_cpu, shown)

    servers = ("hypercorn", "this-uvicorn")

    this_cells = [cells["this"] for cells in summary.values() if "this" in cells]
    coalesced, uncoalesced = (figure("W5", hub, "p50_ms") for hub in ("this", "this-nocoalesce"))
    coalescing_ms = None
    if coalesced is not None and uncoalesced is not None:
        coalescing_ms = coalesced - uncoalesced
    flawless = all(
        c["lost"] == c["extra"] == c["dropped"] == c["rejected"] == 0 and not c["errors"]
        for c in this_cells
    )
    return [
        check("W1 deliveries/s >= 4x peer", ("W1", "deliveries_per_s"), ("W1", "deliveries_per_s"),
              lambda a, b: a >= 4 * b, "server_us_per_delivery"),
        check("W1 p99 ms below peer", ("W1", "p99_ms"), ("W1", "p99_ms"), lambda a, b: a < b),
        check("W3 KB per idle subscriber <= 20", ("W3", "rss_kb_per_subscriber"), 20,
              lambda a, b: a <= b),
        check("W3 connect s below peer", ("W3", "connect_s"), ("W3", "connect_s"),
              lambda a, b: a < b),
        check("W4 publishes/s >= 0.3x peer", ("W4", "publishes_per_s"), ("W4", "publishes_per_s"),
              lambda a, b: a >= 0.3 * b, "server_us_per_message", servers),
        check("W2 deliveries/s >= 0.5x peer", ("W2", "deliveries_per_s"),
              ("W2", "deliveries_per_s"), lambda a, b: a >= 0.5 * b, "server_us_per_message",
              servers),
        check("W4b messages/s >= 1x peer W4 publishes/s", ("W4b", "messages_per_s"),
              ("W4", "publishes_per_s"), lambda a, b: a >= b, "server_us_per_message"),
        Target("W5 p50 ms added by coalescing <= 2", coalescing_ms, 2,
               coalescing_ms <= 2 if coalescing_ms is not None else None),
        Target("no loss, drop, duplicate or rejection (this, every run)", None, None,
               flawless if this_cells else None),
    ]  # fmt: skip


def targets_table(summary: dict) -> str:
    lines = ["", f"{'target':<50}{'this':>10}{'peer':>10}{'ratio':>9}{'per CPU':>9}  met"]
    for target in targets(summary):
        verdict = {True: "yes", False: "NO", None: "-"}[target.met]
        value = ratio(target.this, target.compared)
        # Three decimals, so that 3.996 (short of 4×) does not print as 4.00.
        shown_ratio = f"{value:.3f}×" if value is not None else ""
        per_cpu = f"{target.per_cpu:.2f}×" if target.per_cpu is not None else ""
        lines.append(
            f"{target.name:<50}{fmt(target.this):>10}{fmt(target.compared):>10}"
            f"{shown_ratio:>9}{per_cpu:>9}  {verdict}"
        )
        for hub, value in target.references:
            if value is not None:
                shown_ratio = f"{ratio(value, target.compared):.3f}×"
                name = f"  the same, {hub}"
                lines.append(
                    f"{name:<50}{fmt(value):>10}{fmt(target.compared):>10}{shown_ratio:>9}"
                )
    return "\n".join(lines)


def profile_report(runs: list[dict], workloads: list[Workload], results_dir: Path) -> str:
    """The app's CPU per message (event loop vs other threads) and py-spy's breakdown."""
    lines = []
    for workload in workloads:
        lines += ["", f"{workload.describe()}: where the app's time goes (py-spy)"]
        run = next(run for run in runs if run["workload"] == workload.name)
        if "error" not in run:
            by_thread = run["server_us_per_message_by_thread"]
            split = ", ".join(f"{kind} {us:.0f}" for kind, us in by_thread.items())
            lines.append(
                f"server CPU µs per published message {run['server_us_per_message']:.0f} "
                f"({split}); per delivery {run['server_us_per_delivery']:.1f}"
            )
        profile = results_dir / f"profile-{workload.name}.txt"
        lines.append(summarise(profile))
        if workload.subscribers >= 1000:  # a connect phase worth reading
            lines += ["", f"{workload.describe()}: the connect phase (py-spy)"]
            lines.append(summarise(connect_profile(profile)))
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one rep, smaller workloads")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument(
        "--hubs",
        default="this,this-nocoalesce,peer,nchan,hypercorn,this-uvicorn",
        help="comma-separated subset",
    )
    parser.add_argument(
        "--workloads", help="comma-separated subset (default all; with --profile, W1,W4)"
    )
    parser.add_argument("--app-dir", type=Path, default=BENCH_DIR.parent, help="where app.py is")
    parser.add_argument(
        "--profile", action="store_true",
        help="py-spy the app (only) under each workload and summarise where its time goes",
    )  # fmt: skip
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    os.sched_setaffinity(0, {LOAD_CPU})  # the subscriber process inherits it
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it too

    all_hubs = {
        "this": ThisApp(SERVER_CPU, arguments.app_dir.resolve()),
        "this-redis": ThisAppRedis(SERVER_CPU, arguments.app_dir.resolve()),
        "this-nocoalesce": ThisAppNoCoalescing(SERVER_CPU, arguments.app_dir.resolve()),
        "peer": PythonPeer(SERVER_CPU),
        "nchan": Nchan(SERVER_CPU),
        "hypercorn": BareHypercorn(SERVER_CPU),
        "this-uvicorn": ThisAppOnUvicorn(SERVER_CPU, arguments.app_dir.resolve()),
    }
    hub_names = ["this"] if arguments.profile else arguments.hubs.split(",")
    hubs = [all_hubs[name] for name in hub_names]
    default_workloads = "W1,W4" if arguments.profile else "W1,W2,W3,W4,W4b,W5,W6"
    names = (arguments.workloads or default_workloads).split(",")
    workloads = [w for w in WORKLOADS if w.name in names]
    if arguments.quick:
        workloads = [replace(w, **QUICK_SIZES[w.name]) for w in workloads]
    reps = arguments.reps or (1 if arguments.quick or arguments.profile else 3)

    started = datetime.now(UTC)
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    profile_dir = results_dir if arguments.profile else None
    runs = uvloop.run(run_suite(hubs, workloads, reps, profile_dir))

    summary = summarise_runs(runs)
    command = "bench/run " + " ".join(sys.argv[1:])
    revision = app_revision(arguments.app_dir)
    print(f"\n{command}  ({started:%Y-%m-%d %H:%M} UTC, app.py at {revision})")
    print(f"medians of {reps} repetition(s)")
    print(table(summary, workloads, hub_names))
    print(targets_table(summary))
    if arguments.profile:
        print(profile_report(runs, workloads, results_dir))

    output = results_dir / f"bench-{started:%Y%m%d-%H%M%S}.json"
    output.write_text(
        json.dumps(
            {
                "command": command,
                "started": started.isoformat(),
                "app_revision": revision,
                "workloads": [w.__dict__ for w in workloads],
                "runs": runs,
                "summary": summary,
            },
            indent=1,
        )
    )
    print(f"\nresults: {output}")


def app_revision(app_dir: Path) -> str:
    """The last commit of app.py, and whether the measured file differs from it."""

    def git(*arguments: str) -> subprocess.CompletedProcess:
        command = ["git", "-C", str(app_dir), *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    commit = git("log", "-1", "--format=%h", "--", "app.py").stdout.strip() or "unknown"
    modified = git("diff", "--quiet", "HEAD", "--", "app.py").returncode != 0
    return commit + (" + uncommitted changes" if modified else "")


if __name__ == "__main__":
    main()
