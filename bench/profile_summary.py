"""Where a server's time goes, from a py-spy raw (collapsed stacks) profile.

A line of the profile is `process …;frame;frame;… count`, a frame `function (path:line)`,
the last frame being the one running when sampled. Idle samples are not recorded, so the
shares are shares of busy time. The event-loop thread is summarised on its own: it is the
one that saturates; other threads (aiosqlite's worker) are only counted.
"""

import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):\d+\)$")

# Components, by the path of the running frame; the first match wins.
COMPONENTS = [
    ("app.py", "app code (app.py)"),
    ("hypercorn/", "Hypercorn"),
    ("h11/", "h11 HTTP framing"),
    ("h2/", "h2"),
    ("quart/", "Quart"),
    ("werkzeug/", "Werkzeug"),
    ("quart_schema/", "validation (quart-schema/pydantic)"),
    ("pydantic", "validation (quart-schema/pydantic)"),
    ("aiosqlite/", "SQLite (aiosqlite thread + calls)"),
    ("sqlite3/", "SQLite (aiosqlite thread + calls)"),
    ("asyncio/selector_events.py", "socket reads/writes (asyncio transports)"),
    ("asyncio/", "asyncio event loop"),
    ("json/", "json"),
]


def component(path: str) -> str:
    for marker, name in COMPONENTS:
        if marker in path:
            return name
    return "other: " + Path(path).name


def parse(profile: Path):
    """Yield (frames, samples) per stack, frames as (function, path), outermost first."""
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = []
        for text in stack.split(";"):
            if match := FRAME.match(text):
                frames.append((match["function"], match["path"]))
        if frames:
            yield frames, int(count)


def summarise(profile: Path, top: int = 12) -> str:
    """Busy samples per thread kind, then the event-loop thread's time by component, by
    function, and inside each app.py function."""
    if not profile.exists():
        return f"(no profile at {profile})"
    threads, by_component, by_function, in_app_function = Counter(), Counter(), Counter(), Counter()
    for frames, samples in parse(profile):
        if any(f == "Thread._bootstrap" and p.endswith("threading.py") for f, p in frames):
            # aiosqlite's worker and the like; a busy sample may be one waiting for the GIL.
            threads["other threads"] += samples
            continue
        threads["event-loop thread"] += samples
        function, path = frames[-1]
        by_component[component(path)] += samples
        by_function[f"{function} ({path})"] += samples
        for app_function in {f for f, p in frames if p.endswith("app.py")}:
            in_app_function[app_function] += samples
    total = threads["event-loop thread"]
    if not total:
        return "(no event-loop samples)"

    def block(title: str, counts: Counter) -> list[str]:
        rows = [f"  {share / total:6.1%}  {name}" for name, share in counts.most_common(top)]
        return [title, *rows]

    return "\n".join(
        [
            f"busy samples: {total} on the event-loop thread, "
            f"{threads['other threads']} on other threads; shares below are of the former"
        ]
        + block("self time by component:", by_component)
        + block("self time by function:", by_function)
        + block("time inside each app.py function (inclusive):", in_app_function)
    )


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))
