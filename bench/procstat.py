"""CPU time and resident memory of a process and all its descendants, read from /proc."""

import os
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(stat_path: int | str) -> list[str]:
    """Fields 3… of /proc/<stat_path>/stat (stat_path: a pid, or "pid/task/tid")."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    text = Path(f"/proc/{stat_path}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """The root pid and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError):
                continue  # gone while we looked
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def _cpu_ticks(stat_path: str) -> int:
    try:
        fields = _stat_fields(stat_path)
    except OSError:
        return 0  # gone
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes."""
    return sum(_cpu_ticks(f"{pid}") for pid in pids) / TICKS_PER_SECOND


def cpu_seconds_by_thread_kind(pids: list[int]) -> dict[str, float]:
    """CPU time of these processes split into their main threads (the event loops of the
    servers here) and all other threads (aiosqlite's worker, for one)."""
    ticks = {"main threads": 0, "other threads": 0}
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            kind = "main threads" if tid == str(pid) else "other threads"
            ticks[kind] += _cpu_ticks(f"{pid}/task/{tid}")
    return {kind: n / TICKS_PER_SECOND for kind, n in ticks.items()}


def rss_kb(pids: list[int]) -> int:
    """Resident set size of these processes, summed (shared pages count once per process)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_busy_seconds(cpu: int) -> float:
    """Time CPU `cpu` has spent on anything but idling, by whatever process (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name == f"cpu{cpu}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
            return (user + nice + system + irq + softirq + steal) / TICKS_PER_SECOND
    raise ValueError(f"no cpu{cpu} in /proc/stat")
