"""The pages (issue 7) in Chromium against the real app: the player, the chat page and the admin
page, one browser context per simulated user. Every page must run without a console error, a
failed request or a Content-Security-Policy violation; screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import json
import math
import re
import signal
import struct
import subprocess
import threading
import wave
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from browser_support import NewContext, chromium, new_context  # noqa: F401
from conftest import ROOT, Server, collect, free_port, subscribe
from fake_llm import FakeLLM, relay_env
from playwright.async_api import ConsoleMessage, Page
from test_uploads import png

ARTIFACTS = ROOT / "test-artifacts"
DIST = ROOT / "frontend" / "dist"
FAST = 1000  # data.speed: characters per second, the fastest

# Every page reports CSP violations as console errors, which fail the test.
REPORT_CSP_VIOLATIONS = """
document.addEventListener('securitypolicyviolation', (event) => {
  console.error(`CSP violation: ${event.violatedDirective} ${event.blockedURI}`);
});
"""


class Browser:
    """Opens pages, each in its own context (a user), and keeps what went wrong on them."""

    def __init__(self, new_context: NewContext) -> None:  # noqa: F811
        self.new_context = new_context
        self.problems: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        """A problem the test provokes on purpose (e.g. a 413 the page shows)."""
        self.allowed.append(re.compile(pattern))

    async def open(self, url: str, **context_options) -> Page:
        context = await self.new_context(**context_options)
        await context.add_init_script(REPORT_CSP_VIOLATIONS)
        page = await context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self._problem(f"page error: {error}"))
        page.on("requestfailed", self._request_failed)
        await page.goto(url)
        return page

    def _problem(self, problem: str) -> None:
        if not any(pattern.search(problem) for pattern in self.allowed):
            self.problems.append(problem)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self._problem(f"console error: {message.text} ({message.location['url']})")

    def _request_failed(self, request) -> None:
        if request.failure != "net::ERR_ABORTED":  # a stream closed by the page or the test
            self._problem(f"request failed: {request.url} {request.failure}")


@pytest_asyncio.fixture(loop_scope="session")
async def browser(new_context: NewContext) -> AsyncIterator[Browser]:  # noqa: F811
    watcher = Browser(new_context)
    yield watcher
    assert watcher.problems == []


async def screenshot(page: Page, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=full_page)


# --- The player ------------------------------------------------------------------------------


async def line_shown(page: Page, message_id: int) -> str:
    """Waits until the player has typed the whole message `message_id`; its text."""
    await page.wait_for_function(
        """id => {
          const box = document.getElementById('dialog');
          return box.dataset.id === String(id) && box.dataset.state === 'done';
        }""",
        arg=message_id,
    )
    return await page.text_content("#text")


async def player(browser: Browser, server: Server, path: str = "/lobby") -> Page:
    page = await browser.open(server.url + path)
    await page.wait_for_selector("#connection[data-state=live]")
    return page


async def test_player_types_out_a_message_exactly(browser: Browser, server: Server):
    page = await player(browser, server)
    text = "Hello, 世界！ A typewriter, ☕ and emoji 🎉 with CJK: 你好こんにちは안녕"
    sent = server.publish("小明", {"message": text, "speed": 40})
    # The text grows: always a prefix of the message, until it is all there.
    await page.wait_for_function("() => document.getElementById('text').textContent.length >= 3")
    partial = await page.text_content("#text")
    assert text.startswith(partial) and len(partial) < len(text)
    assert await line_shown(page, sent["id"]) == text
    assert await page.text_content("#speaker") == "小明"
    await screenshot(page, "player-typing")


async def test_formatting_codes_render_and_the_rest_is_text(browser: Browser, server: Server):
    page = await player(browser, server)
    source = (
        "@bbold@r @iitalic@r @u@sboth@r @[#FF8800]orange@b and bold@r plain "
        r"\@b @x @[red] @[#12345g] @ a\b"
    )
    sent = server.publish("codes", {"message": source, "speed": FAST})
    assert await line_shown(page, sent["id"]) == (
        r"bold italic both orange and bold plain @b @x @[red] @[#12345g] @ a\b"
    )
    spans = await page.eval_on_selector_all(
        "#text span",
        "spans => spans.map(s => [s.textContent, s.className, s.style.color])",
    )
    assert [span for span in spans if span[1] or span[2]] == [
        ["bold", "fmt-b", ""],
        ["italic", "fmt-i", ""],
        ["both", "fmt-u fmt-s", ""],
        ["orange", "", "rgb(255, 136, 0)"],
        [" and bold", "fmt-b", "rgb(255, 136, 0)"],
    ]
    weight = await page.eval_on_selector(".fmt-b", "node => getComputedStyle(node).fontWeight")
    assert weight == "700"


async def test_markup_is_shown_as_text(browser: Browser, server: Server):
    page = await player(browser, server)
    markup = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    sent = server.publish("<b>name</b>", {"message": markup, "speed": FAST})
    assert await line_shown(page, sent["id"]) == markup
    assert await page.text_content("#speaker") == "<b>name</b>"
    elements = "#dialog img:not(#avatar), #dialog script, #dialog b"
    assert await page.eval_on_selector_all(elements, "nodes => nodes.length") == 0
    assert await page.evaluate("window.pwned") is None


async def test_click_or_space_finishes_the_line_and_a_burst_is_queued(
    browser: Browser, server: Server
):
    page = await player(browser, server)
    await page.evaluate(RECORD_LINES)
    texts = ["one, slowly typed out", "two, also slow", "three"]
    ids = [server.publish("q", {"message": text, "speed": 2})["id"] for text in texts]
    await page.wait_for_function("() => document.getElementById('text').textContent.length >= 1")
    await page.keyboard.press("Space")  # finishes the first line at once
    assert await page.text_content("#text") == texts[0]
    await page.keyboard.press("Space")  # on to the next
    await page.wait_for_function(
        "id => document.getElementById('dialog').dataset.id === id", arg=str(ids[1])
    )
    await page.mouse.click(10, 10)  # a click finishes it too
    assert await page.text_content("#text") == texts[1]
    assert await line_shown(page, ids[2]) == texts[2]  # after a pause, without a click
    assert await page.evaluate("window.lines") == [
        [str(i), text] for i, text in zip(ids, texts, strict=True)
    ]


# Records each line when it is complete, as [id, text].
RECORD_LINES = """
window.lines = [];
new MutationObserver(() => {
  const box = document.getElementById('dialog');
  const last = window.lines[window.lines.length - 1];
  if (box.dataset.state === 'done' && (!last || last[0] !== box.dataset.id)) {
    window.lines.push([box.dataset.id, document.getElementById('text').textContent]);
  }
}).observe(document.getElementById('dialog'), {attributes: true});
"""


async def test_theme_and_transparent_background_for_obs(browser: Browser, server: Server):
    page = await player(browser, server, "/lobby?bg=transparent&theme=light")
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgba(0, 0, 0, 0)"
    box = await page.eval_on_selector("#dialog", "n => getComputedStyle(n).backgroundColor")
    sent = server.publish("theme", {"message": "light", "speed": FAST})
    await line_shown(page, sent["id"])
    dark = await player(browser, server, "/lobby?theme=dark")
    assert box != await dark.eval_on_selector("#dialog", "n => getComputedStyle(n).backgroundColor")
    assert await dark.evaluate("getComputedStyle(document.body).backgroundImage") != "none"


async def test_player_resumes_by_id_after_a_drop(browser: Browser, make_server):
    server: Server = make_server(RETRY_MS="300")
    browser.allow("ERR_CONNECTION_REFUSED")  # reconnection attempts while the hub is down
    page = await player(browser, server)
    await page.evaluate(RECORD_LINES)
    first = server.publish("r", {"message": "before", "speed": FAST})["id"]
    await line_shown(page, first)
    server.stop()
    await page.wait_for_selector("#connection[data-state=reconnecting]")
    server.start()
    later = [server.publish("r", {"message": f"after {i}", "speed": FAST})["id"] for i in (1, 2)]
    await line_shown(page, later[-1])
    assert await page.evaluate("window.lines") == [
        [str(first), "before"],
        [str(later[0]), "after 1"],
        [str(later[1]), "after 2"],
    ]


async def test_page_headers_forbid_inline_code(server: Server):
    for path in ("/", "/lobby", "/lobby/history", "/admin", "/chat"):
        reply = httpx.get(server.url + path)
        assert reply.status_code == 200, path
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "style-src 'self';" in policy
        assert "unsafe-inline" not in policy
        html = reply.text
        assert "<script>" not in html and "style=" not in html and "<style" not in html
        assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    for path in ("/lobby", "/lobby/history"):  # OBS and stream sites frame both
        player_policy = httpx.get(server.url + path).headers["content-security-policy"]
        assert player_policy.endswith("frame-ancestors *")
    admin_policy = httpx.get(server.url + "/admin").headers["content-security-policy"]
    assert admin_policy.endswith("frame-ancestors 'self'")


async def test_controller_indicator_goes_offline_after_three_missed_heartbeats(
    browser: Browser, make_server
):
    server: Server = make_server(HEARTBEAT_S="0.3")
    page = await player(browser, server)
    controller_url = f"{server.url}/api/v1/events/lobby?role=controller&token={server.token}"
    async with subscribe(controller_url):
        await page.wait_for_selector("#controller[data-state=online]")
        await asyncio.sleep(6 * 0.3)  # heartbeats keep it online
        assert await page.get_attribute("#controller", "data-state") == "online"
        server.process.send_signal(signal.SIGSTOP)  # heartbeats stop, without a goodbye
        try:
            await page.wait_for_selector("#controller[data-state=offline]")
        finally:
            server.process.send_signal(signal.SIGCONT)
        await page.wait_for_selector("#controller[data-state=online]")  # they come again
    await page.wait_for_selector("#controller[data-state=offline]")  # the controller left


async def test_unknown_room_shows_quotes_as_such(browser: Browser, make_server):
    server: Server = make_server(FALLBACK_POLL_S="0.5")
    page = await browser.open(f"{server.url}/nosuchroom")
    await page.wait_for_selector("#connection[data-state=fallback]")
    assert "unknown room" in await page.text_content("#connection")
    await page.wait_for_selector("#dialog[data-state=done]")
    assert (await page.text_content("#quote")).startswith("quote")
    assert await page.is_visible("#quote")
    assert await page.text_content("#text")


async def test_ai_answer_is_typed_as_it_streams(browser: Browser, make_server):
    server: Server = make_server(DEMO_DELAY_S="0.05")
    page = await player(browser, server)
    async with subscribe(f"{server.url}/api/v1/events/lobby") as room:
        reply = httpx.post(
            f"{server.url}/api/v1/rooms/lobby/ai",
            json={"prompt": "Say hello", "speaker": "Bot"},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert reply.status_code == 202, reply.text
        uid = reply.json()["uid"]
        # The live answer: keyed by its stream until the stored message replaces it.
        await page.wait_for_function(
            """uid => document.getElementById('dialog').dataset.id === uid
                && document.getElementById('text').textContent.length > 0""",
            arg=uid,
        )
        assert await page.text_content("#speaker") == "Bot"
        live = await page.text_content("#text")
        (stored,) = [json.loads(event.data) for event in await collect(room, 1)]
    answer = stored["data"]["message"]
    assert stored["data"]["stream"] == uid and answer.startswith(live)
    await page.keyboard.press("Space")  # no need to wait for the typewriter
    assert await line_shown(page, stored["id"]) == answer


async def test_a_failed_ai_answer_is_withdrawn(browser: Browser, make_server):
    server: Server = make_server(DEMO_DELAY_S="0.3")
    page = await player(browser, server)
    auth = {"Authorization": f"Bearer {server.token}"}
    reply = httpx.post(f"{server.url}/api/v1/rooms/lobby/ai", json={"prompt": "Hi"}, headers=auth)
    uid = reply.json()["uid"]
    await page.wait_for_selector(f"#dialog[data-id='{uid}']:not(.hidden)")
    assert httpx.delete(f"{server.url}/api/v1/chat/{uid}", headers=auth).status_code == 200
    await page.wait_for_selector("#dialog.hidden[data-state=idle]")  # nothing is stored


def change(server: Server, method: str, message_id: int, body: dict | None = None) -> None:
    """Edit (PATCH, with `body`) or retract (DELETE) a message of the lobby."""
    reply = httpx.request(
        method,
        f"{server.url}/api/v1/rooms/lobby/messages/{message_id}",
        json=body,
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert reply.status_code == 200, reply.text


async def test_edit_and_retract_change_a_player_on_screen_and_in_replay(
    browser: Browser, make_server
):
    server: Server = make_server()
    page = await player(browser, server)
    shown = server.publish("typo", {"message": "Helo, wrold", "speed": FAST})["id"]
    await line_shown(page, shown)
    change(server, "PATCH", shown, {"speaker": "Fixed", "data": {"message": "@bHello@r, world"}})
    await page.wait_for_function(
        "() => document.getElementById('text').textContent === 'Hello, world'"
    )
    assert await page.text_content("#speaker") == "Fixed"
    assert await page.text_content("#text .fmt-b") == "Hello"
    assert await page.get_attribute("#dialog", "data-state") == "done"  # at once, not retyped

    waiting = [server.publish("q", {"message": f"line {i}", "speed": 2})["id"] for i in (1, 2)]
    await page.wait_for_function(
        "id => document.getElementById('dialog').dataset.id === id", arg=str(waiting[0])
    )
    change(server, "DELETE", waiting[1])  # queued: it is never shown
    change(server, "DELETE", waiting[0])  # being typed: it goes at once
    await page.wait_for_selector("#dialog.hidden[data-state=idle]")

    later = server.publish("q", {"message": "later", "speed": FAST})["id"]
    resumed = await player(browser, server, "/lobby?lastEventId=0")  # the replay of it all
    assert await line_shown(resumed, shown) == "Hello, world"
    assert await resumed.text_content("#speaker") == "Fixed"
    await resumed.evaluate(RECORD_LINES)
    await line_shown(resumed, later)
    assert await resumed.evaluate("window.lines") == [[str(later), "later"]]  # none between
    await screenshot(page, "player-edited")


class StaticSite:
    """frontend/dist served by Python's http.server on another loopback origin."""

    def __init__(self) -> None:
        handler = functools.partial(QuietHandler, directory=str(DIST))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def static_site() -> Iterator[StaticSite]:
    site = StaticSite()
    yield site
    site.close()


async def test_static_player_site_uses_the_hub_of_its_query(
    browser: Browser, make_server, static_site: StaticSite
):
    hub: Server = make_server(CORS_ORIGINS=static_site.url)
    hub.create_room("stage")
    page = await browser.open(f"{static_site.url}/player.html?hub={hub.url}&room=stage")
    await page.wait_for_selector("#connection[data-state=live]")
    sent = hub.publish("far", {"message": "from another origin", "speed": FAST}, room="stage")
    assert await line_shown(page, sent["id"]) == "from another origin"


# --- Issue 16: profiles, sound, more codes, pages, history, idle ------------------------------


def set_profiles(server: Server, profiles: dict, room: str = "lobby") -> None:
    reply = httpx.patch(
        f"{server.url}/api/v1/rooms/{room}",
        json={"settings": {"profiles": profiles}},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert reply.status_code == 200, reply.text


def upload(server: Server, name: str, data: bytes, room: str = "lobby") -> None:
    reply = httpx.put(
        f"{server.url}/api/v1/rooms/{room}/uploads/{name}",
        content=data,
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert reply.status_code == 201, reply.text


def face_png(size: int = 64) -> bytes:
    """A round, shaded face for an avatar (a flat square would show less of the frame)."""
    pixels = []
    for y in range(size):
        for x in range(size):
            dx, dy = (x - size / 2) / (size / 2), (y - size / 2) / (size / 2)
            inside = dx * dx + dy * dy < 0.8
            eye = abs(abs(dx) - 0.3) < 0.09 and abs(dy + 0.15) < 0.12
            smile = abs(dx * dx + (dy - 0.05) ** 2 - 0.2) < 0.03 and dy > 0.2
            if not inside:
                pixels.append((42, 100 + y, 143))
            elif eye or smile:
                pixels.append((40, 40, 60))
            else:
                pixels.append((255, 214 - y // 2, 170))
    return png(size, size, pixels=pixels)


PLATE_COLOR = "getComputedStyle(document.getElementById('speaker')).backgroundColor"


async def test_a_speaker_profile_gives_the_plate_its_colour_and_the_avatar(
    browser: Browser, make_server
):
    server: Server = make_server()
    upload(server, "alice", face_png())
    set_profiles(server, {"Alice": {"color": "#2a9d8f", "avatar": "alice"}})
    page = await browser.open(f"{server.url}/lobby", viewport={"width": 1280, "height": 720})
    await page.wait_for_selector("#connection[data-state=live]")
    theme_plate = await page.evaluate(PLATE_COLOR)
    sent = server.publish(
        "Alice", {"message": "@bHello@r, I have a @(顔|かお) now.", "speed": FAST}
    )
    await line_shown(page, sent["id"])
    assert await page.evaluate(PLATE_COLOR) == "rgb(42, 157, 143)"
    await page.wait_for_function("() => document.getElementById('avatar').naturalWidth === 64")
    assert await page.is_visible("#avatar")
    src = await page.get_attribute("#avatar", "src")
    assert src == "/api/v1/rooms/lobby/uploads/alice"  # from the hub's origin
    await page.wait_for_timeout(500)  # the box's fade-in, for the screenshot
    await screenshot(page, "player")

    # data.profile names a profile for another speaker name; no profile: the theme's plate
    masked = server.publish("???", {"message": "Guess who", "speed": FAST, "profile": "Alice"})
    await line_shown(page, masked["id"])
    assert await page.evaluate(PLATE_COLOR) == "rgb(42, 157, 143)"
    plain = server.publish("Bob", {"message": "No profile", "speed": FAST})
    await line_shown(page, plain["id"])
    assert await page.evaluate(PLATE_COLOR) == theme_plate
    assert await page.is_hidden("#avatar")

    set_profiles(server, {"Alice": {"color": "#ff0000"}})  # reaches the open player at once
    await page.wait_for_timeout(0)
    changed = server.publish("Alice", {"message": "Red now", "speed": FAST})
    await line_shown(page, changed["id"])
    assert await page.evaluate(PLATE_COLOR) == "rgb(255, 0, 0)"
    assert await page.is_hidden("#avatar")


def wav(seconds: float = 0.03, rate: int = 8000) -> bytes:
    """A short WAV tone, as a room's own typing sound."""
    samples = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
        for n in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        sound.writeframes(samples)
    return out.getvalue()


# Counts what the page plays: each buffer source started, with its playback rate.
RECORD_SOUNDS = """
window.played = [];
const start = AudioBufferSourceNode.prototype.start;
AudioBufferSourceNode.prototype.start = function (...args) {
  window.played.push(this.playbackRate.value);
  return start.apply(this, args);
};
"""


async def test_sounds_play_when_enabled_and_are_not_even_loaded_with_sound_0(
    browser: Browser, make_server
):
    server: Server = make_server()
    upload(server, "beep", wav())
    profiles = {
        "Robot": {"sound": "soft", "pitch": 2},
        "Mime": {"sound": "none"},
        "Beeper": {"sound": "beep", "pitch": 0.5},  # a sound of the room's uploads
    }
    set_profiles(server, profiles)
    pages = {}
    for query in ("", "?sound=0"):
        context = await browser.new_context()
        await context.add_init_script(RECORD_SOUNDS)
        page = await context.new_page()
        page.on("console", browser._console)
        page.on("pageerror", lambda error: browser._problem(f"page error: {error}"))
        requested: list[str] = []
        page.on("request", lambda request, into=requested: into.append(request.url))
        await page.goto(f"{server.url}/lobby{query}")
        await page.wait_for_selector("#connection[data-state=live]")
        pages[query] = page, requested

    page, requested = pages[""]
    for name in ("blip", "soft", "next"):
        await page.wait_for_function(
            "url => performance.getEntriesByType('resource').some(e => e.name === url)",
            arg=f"{server.url}/assets/sounds/{name}.wav",
        )
    # A page opened by hand may not play before a click (OBS may): one click enables it.
    if await page.is_visible("#enable-sound"):
        await page.click("#enable-sound")
        await page.wait_for_selector("#enable-sound", state="hidden")
    assert await page.evaluate("window.played") == []
    sent = server.publish("Robot", {"message": "beep boop", "speed": 10})
    await line_shown(page, sent["id"])
    played = await page.evaluate("window.played")
    assert played[0] == 1  # the next line's chime
    assert len(played) >= 2 and all(1.9 <= rate <= 2.1 for rate in played[1:])  # its voice
    assert len(played) <= 1 + len("beepboop")  # no blip for a space
    silent = server.publish("Mime", {"message": "…", "speed": 10})
    await line_shown(page, silent["id"])
    assert len(await page.evaluate("window.played")) == len(played) + 1  # the chime only
    before = len(await page.evaluate("window.played"))
    own = server.publish("Beeper", {"message": "beep", "speed": 10})
    await line_shown(page, own["id"])
    assert f"{server.url}/api/v1/rooms/lobby/uploads/beep" in requested
    beeps = (await page.evaluate("window.played"))[before + 1 :]
    assert beeps and all(0.45 <= rate <= 0.55 for rate in beeps)

    muted, muted_requests = pages["?sound=0"]
    sent = server.publish("Robot", {"message": "quiet", "speed": FAST})
    await line_shown(muted, sent["id"])
    assert await muted.evaluate("window.played") == []
    assert [url for url in muted_requests if "/sounds/" in url] == []
    assert await muted.is_hidden("#enable-sound")


# Records what the page plays: each buffer source started, with its length (s) and the text
# typed out so far, to tell a sound code's sound from the chime and to see when it played.
RECORD_PLAYED = """
window.played = [];
const start = AudioBufferSourceNode.prototype.start;
AudioBufferSourceNode.prototype.start = function (...args) {
  window.played.push([this.buffer.duration, document.getElementById('text').textContent]);
  return start.apply(this, args);
};
"""

BROKEN_IMAGES = "nodes => nodes.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"


async def test_an_upload_code_naming_a_sound_plays_it_where_typed_and_shows_no_image(
    browser: Browser, hub: Server
):
    upload(hub, "gong", wav(seconds=0.25))
    upload(hub, "smile", png(8, 8))
    set_profiles(hub, {"Narrator": {"sound": "none"}})  # no blips: the chime and the gong play
    context = await browser.new_context()
    await context.add_init_script(RECORD_PLAYED)
    page = await context.new_page()
    page.on("console", browser._console)
    page.on("pageerror", lambda error: browser._problem(f"page error: {error}"))
    page.on("requestfailed", browser._request_failed)
    await page.goto(f"{hub.url}/lobby")
    await page.wait_for_selector("#connection[data-state=live]")
    if await page.is_visible("#enable-sound"):  # a page opened by hand plays after a click
        await page.click("#enable-sound")
        await page.wait_for_selector("#enable-sound", state="hidden")

    source = "Listen @{Gong} and look @{smile}"
    sent = hub.publish("Narrator", {"message": source, "speed": 10})
    assert await line_shown(page, sent["id"]) == "Listen  and look "
    await page.wait_for_function(
        "() => document.querySelector('#text img.emote')?.naturalWidth === 8"
    )
    images = await page.eval_on_selector_all(
        "#dialog img.emote", "images => images.map(i => [i.alt, i.getAttribute('src')])"
    )
    assert images == [["smile", "/api/v1/rooms/lobby/uploads/smile"]]  # the sound: no image
    assert await page.eval_on_selector_all("#text img", BROKEN_IMAGES) == []
    assert await page.get_attribute("#text .upload[data-kind=sound]", "data-url") == (
        "/api/v1/rooms/lobby/uploads/gong"
    )
    gongs = [
        typed for length, typed in await page.evaluate("window.played") if abs(length - 0.25) < 0.01
    ]
    assert len(gongs) == 1  # once, when the typewriter reached it: before what follows it
    assert gongs[0].startswith("Listen ") and "look" not in gongs[0]

    # Where nothing plays (the history page, the admin's recent messages): a "♪ name" text.
    history = await browser.open(f"{hub.url}/lobby/history")
    marker = ".log-line .upload[data-kind=sound]"
    await history.wait_for_selector(f"{marker}:text-is('♪ Gong')")
    await history.wait_for_function(
        "() => document.querySelector('.log-line img.emote')?.naturalWidth === 8"
    )
    assert await history.eval_on_selector_all(".log-line img", BROKEN_IMAGES) == []
    admin = await admin_page(browser, hub)
    await admin.wait_for_selector("#history .upload[data-kind=sound]:text-is('♪ Gong')")
    await admin.wait_for_function(
        "() => document.querySelector('#history img.emote')?.naturalWidth === 8"
    )
    assert await admin.eval_on_selector_all("#history img", BROKEN_IMAGES) == []


async def test_new_formatting_codes_render_as_elements_and_never_as_html(
    browser: Browser, make_server
):
    server: Server = make_server()
    browser.allow("uploads/nosuchimage")  # an image the room does not have: not shown
    upload(server, "smile", png(8, 8))
    page = await player(browser, server)
    source = (
        "@+big@+ger@r @-small@r @{Smile} @(漢字|かんじ) @~shake@r @!pop@r @p[0.2]end"
        " @{<img src=x onerror=window.pwned=1>} @(<b>x</b>|<script>window.pwned=2</script>)"
        " @{nosuchimage}"
    )
    sent = server.publish("codes", {"message": source, "speed": FAST})
    text = await line_shown(page, sent["id"])
    assert text == (
        "bigger small  漢字かんじ shake pop end @{<img src=x onerror=window.pwned=1>} "
        "<b>x</b><script>window.pwned=2</script> "
    )
    sizes = await page.eval_on_selector_all(
        "#text > span", "spans => spans.map(s => [s.textContent, s.style.fontSize])"
    )
    assert ["big", "1.25em"] in sizes and ["ger", "1.5625em"] in sizes
    assert ["small", "0.8em"] in sizes
    emotes = await page.eval_on_selector_all(
        "#text img.emote", "images => images.map(i => [i.alt, i.getAttribute('src')])"
    )
    assert emotes == [
        ["Smile", "/api/v1/rooms/lobby/uploads/smile"],
        ["nosuchimage", "/api/v1/rooms/lobby/uploads/nosuchimage"],
    ]
    await page.wait_for_function(
        "() => document.querySelector('#text img.emote').naturalWidth === 8"
    )
    rubies = await page.eval_on_selector_all(
        "#text ruby",
        "nodes => nodes.map(r => [r.firstChild.textContent, r.querySelector('rt').textContent])",
    )
    assert rubies == [["漢字", "かんじ"], ["<b>x</b>", "<script>window.pwned=2</script>"]]
    assert await page.eval_on_selector_all(".fmt-shake .letter", "n => n.length") == 5
    assert await page.eval_on_selector_all(".fmt-pop .letter", "n => n.length") == 3
    animation = await page.eval_on_selector(
        ".fmt-shake .letter", "n => getComputedStyle(n).animationName"
    )
    assert animation == "shake"
    assert await page.eval_on_selector_all("#dialog script, #dialog b", "n => n.length") == 0
    assert await page.evaluate("window.pwned") is None


# The characters of #text that are wholly inside the page's window: what a viewer can read.
VISIBLE_TEXT = """
() => {
  const window_ = document.getElementById('page').getBoundingClientRect();
  const walker = document.createTreeWalker(document.getElementById('text'), NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  let seen = '';
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rect = range.getBoundingClientRect();
      if (rect.top >= window_.top - 1 && rect.bottom <= window_.bottom + 1) seen += node.data[i];
    }
  }
  return seen;
}
"""


async def test_a_long_message_is_paged_and_every_character_is_shown(browser: Browser, make_server):
    server: Server = make_server()
    page = await browser.open(f"{server.url}/lobby", viewport={"width": 1920, "height": 1080})
    await page.wait_for_selector("#connection[data-state=live]")
    message = "".join(f"第{i:02d}句：這是一段很長的中文訊息，" for i in range(40))[:600]
    assert len(message) == 600
    sent = server.publish("長文", {"message": message, "speed": FAST})
    pages = []
    while True:
        await page.wait_for_function(
            """id => {
              const box = document.getElementById('dialog');
              return box.dataset.id === String(id) && ['page', 'done'].includes(box.dataset.state);
            }""",
            arg=sent["id"],
        )
        pages.append(await page.evaluate(VISIBLE_TEXT))
        if await page.get_attribute("#dialog", "data-state") == "done":
            break
        assert await page.is_visible(".next")  # ▼: there is more
        await page.keyboard.press("Space")
    assert len(pages) >= 2
    assert "".join(pages) == message  # every character, once, in order


async def test_history_page_shows_the_last_lines_then_new_ones(browser: Browser, make_server):
    server: Server = make_server()
    set_profiles(server, {"Alice": {"color": "#2a9d8f"}})
    for i in range(25):
        server.publish("Alice" if i % 2 else "Bob", {"message": f"@bline@r {i}"})
    page = await browser.open(f"{server.url}/lobby/history?lines=20")
    await page.wait_for_selector("#connection[data-state=live]")
    lines = page.locator(".log-line")
    assert await lines.count() == 20
    assert await lines.nth(0).text_content() == "Aliceline 5"
    assert await lines.nth(19).text_content() == "Bobline 24"
    assert await lines.nth(18).locator(".fmt-b").text_content() == "line"
    plate = "n => getComputedStyle(n).backgroundColor"
    assert await lines.nth(18).locator(".log-speaker").evaluate(plate) == "rgb(42, 157, 143)"
    server.publish("Alice", {"message": "<i>live</i> line"})
    await page.wait_for_selector(".log-line:last-child:has-text('<i>live</i> line')")
    assert await lines.count() == 20
    assert await lines.nth(0).text_content() == "Bobline 6"
    texts = await lines.all_text_contents()
    assert len(set(texts)) == 20  # the stream went on after the history: no line twice
    # an edited line is fixed in place, a retracted one taken out
    messages = f"{server.url}/api/v1/rooms/lobby/messages"
    auth = {"Authorization": f"Bearer {server.token}"}
    edited = httpx.patch(f"{messages}/20", json={"data": {"message": "@ifixed"}}, headers=auth)
    assert edited.status_code == 200, edited.text
    await page.wait_for_selector(".log-line[data-id='20'] .fmt-i:text-is('fixed')")
    assert httpx.delete(f"{messages}/21", headers=auth).status_code == 200
    await page.wait_for_selector(".log-line[data-id='21']", state="detached")
    assert await lines.count() == 19
    await page.wait_for_timeout(400)  # the new line's entrance, for the screenshot
    await screenshot(page, "history")


async def test_idle_state_odd_room_ids_and_a_static_player_without_a_hub(
    browser: Browser, make_server, static_site: StaticSite
):
    server: Server = make_server()
    page = await player(browser, server)
    await page.wait_for_selector("#idle:not([hidden]) #idle-title:text-is('lobby')")
    sent = server.publish("first", {"message": "at last", "speed": FAST})
    await line_shown(page, sent["id"])
    assert await page.is_hidden("#idle")
    hidden = await player(browser, server, "/lobby?idle=5")
    assert await hidden.is_hidden("#idle")

    for path in ("/my-stream", "/My_Stream/history"):
        reply = httpx.get(server.url + path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    odd = await browser.open(f"{server.url}/my-stream")
    await odd.wait_for_selector("#connection[data-state=fallback]")
    assert "invalid room id" in await odd.text_content("#connection")
    assert httpx.get(f"{server.url}/favicon.ico").status_code == 404

    static = await browser.open(f"{static_site.url}/player.html")
    await static.wait_for_selector("#connection[data-state=closed]")
    assert "set ?hub=" in await static.text_content("#connection")
    assert "?hub=" in await static.text_content("#idle")


# --- The chat page ---------------------------------------------------------------------------


async def ask(page: Page, prompt: str) -> None:
    await page.fill("#prompt", prompt)
    await page.press("#prompt", "Enter")


LAST_BUBBLE = "#log .chat:last-child .chat-bubble"


async def answer_begins(page: Page, start: str) -> None:
    """Waits until the answer coming in begins with `start`."""
    await page.wait_for_function(
        "([selector, start]) => document.querySelector(selector).textContent.startsWith(start)",
        arg=[LAST_BUBBLE, start],
    )


async def test_chat_streams_a_demo_answer_and_keeps_the_conversation(browser: Browser, make_server):
    server: Server = make_server(DEMO_DELAY_S="0.01")
    page = await browser.open(f"{server.url}/chat")
    assert await page.is_hidden("#demo")
    await ask(page, "Hello <b>there</b>")
    await page.wait_for_selector("text=Regenerate")
    answer = await page.text_content(LAST_BUBBLE)
    assert answer.startswith("[Demo model]") and "You wrote: “Hello <b>there</b>”" in answer
    assert await page.is_visible("#demo")
    await screenshot(page, "chat")

    await page.reload()  # the conversation is kept in localStorage
    await page.wait_for_selector("text=Regenerate")
    bubbles = await page.eval_on_selector_all(
        ".chat-bubble", "nodes => nodes.map(n => n.textContent)"
    )
    assert bubbles == ["Hello <b>there</b>", answer]

    await page.click("text=Regenerate")  # the last answer again, in its place
    await page.wait_for_selector("#stop", state="hidden")
    await page.wait_for_selector("text=Regenerate")
    assert await page.eval_on_selector_all(".chat-bubble", "nodes => nodes.length") == 2
    assert await page.text_content(LAST_BUBBLE) == answer


async def test_chat_stop_ends_the_answer_on_the_server_too(browser: Browser, make_server):
    server: Server = make_server(DEMO_DELAY_S="0.3")
    page = await browser.open(f"{server.url}/chat")
    async with page.expect_response("**/api/v1/chat") as started:
        await ask(page, "Tell me a long story")
    uid = (await (await started.value).json())["uid"]
    await answer_begins(page, "[Demo")
    await page.click("#stop")
    await page.wait_for_selector("text=stopped")
    partial = await page.text_content(LAST_BUBBLE)
    # The answer was cancelled upstream: its stream (over, so it ends) closes with an error.
    events = httpx.get(f"{server.url}/api/v1/chat/{uid}/events").text.strip().split("\n\n")
    assert events[-1].split("\n")[1:] == [
        "event: error",
        'data: {"success":false,"code":499,"msg":"Chat cancelled"}',
    ]
    assert await page.text_content(LAST_BUBBLE) == partial  # nothing came after the stop
    assert await page.is_visible("#send")


CUT_NOTE = "\n\n[This answer was cut off before its end.]"


async def test_chat_reload_during_an_answer_resumes_it(browser: Browser, make_server, llm: FakeLLM):
    llm.delay = 0.3  # a word every 0.3 s: the reload comes in the middle
    server: Server = make_server(**relay_env(llm))
    page = await browser.open(f"{server.url}/chat")
    await ask(page, "Tell me about the fox")
    await answer_begins(page, "The quick")
    requests = []
    page.on("request", lambda request: requests.append(request))
    await page.reload()
    await page.wait_for_selector("#stop")  # still coming in
    await page.wait_for_selector("text=Regenerate")
    assert await page.text_content(LAST_BUBBLE) == llm.answer()  # all of it, once
    assert len(llm.calls) == 1  # followed again, not asked again
    (resumed,) = [r for r in requests if r.url.endswith("/events")]
    assert int((await resumed.all_headers())["last-event-id"]) >= 2
    assert await page.locator(".chat-footer .note").count() == 0
    assert await page.is_visible("a#admin-link[href=admin]")


async def test_chat_marks_a_cut_off_answer_so_in_the_next_question(
    browser: Browser, make_server, llm: FakeLLM
):
    llm.delay = 0.3
    server: Server = make_server(**relay_env(llm))
    page = await browser.open(f"{server.url}/chat")
    await ask(page, "First")
    await answer_begins(page, "The quick")
    await page.click("#stop")
    await page.wait_for_selector("text=stopped")
    partial = await page.text_content(LAST_BUBBLE)
    llm.delay = 0.01
    async with page.expect_request("**/api/v1/chat") as started:
        await ask(page, "Second")
    sent = json.loads((await started.value).post_data)["messages"]
    assert sent[1] == {"role": "assistant", "content": partial + CUT_NOTE}
    await page.wait_for_selector("text=Regenerate")

    # An answer left coming in by a tab that was closed: marked interrupted in a new one.
    pending = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hel", "pending": True},
    ]
    await page.evaluate(
        "messages => localStorage.setItem('streaming-message.chat', JSON.stringify(messages))",
        pending,
    )
    other = await page.context.new_page()  # its own sessionStorage
    await other.goto(f"{server.url}/chat")
    await other.wait_for_selector(".chat-footer .note:text('interrupted')")
    assert await other.text_content(LAST_BUBBLE) == "Hel"
    assert await other.is_visible("text=Regenerate")


async def test_chat_shows_errors(browser: Browser, make_server):
    server: Server = make_server(MAX_PROMPT_CHARS="10")
    browser.allow("status of 413")
    page = await browser.open(f"{server.url}/chat")
    await ask(page, "This prompt is far too long")
    await page.wait_for_selector(".chat-bubble-error")
    assert await page.text_content(".chat-footer .note") == "Prompt too long (max 10 characters)"


# --- The admin page --------------------------------------------------------------------------

ADMIN_PASSWORD = "admin password 1"


@pytest.fixture
def hub(make_server) -> Server:
    # no wait after a failed login: a test tries a wrong password, then the right one
    return make_server(ADMIN_USERNAME="admin", ADMIN_PASSWORD=ADMIN_PASSWORD, LOGIN_DELAY_S="0")


async def log_in(page: Page, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    await page.fill("#login [name=username]", username)
    await page.fill("#login [name=password]", password)
    await page.click("#login button[type=submit]")


async def admin_page(browser: Browser, hub: Server, **context_options) -> Page:
    page = await browser.open(f"{hub.url}/admin", **context_options)
    await log_in(page)
    await page.wait_for_selector("#app-view:not([hidden]) #rooms button")
    return page


async def test_admin_login_create_room_send_and_a_player_shows_it(browser: Browser, hub: Server):
    page = await browser.open(f"{hub.url}/admin")
    browser.allow("status of 401")  # the wrong password, on purpose
    await log_in(page, password="wrong password")
    await page.wait_for_selector("#login-error:not([hidden])")
    assert await page.text_content("#login-error") == "Invalid username or password"
    await log_in(page)
    await page.wait_for_selector("#app-view:not([hidden])")
    assert await page.text_content("#who") == "admin · admin"

    await page.fill("#create-room [name=id]", "Stage")
    await page.fill("#create-room [name=title]", "Main stage")
    await page.click("#create-room button")
    await page.wait_for_selector("#rooms button[data-room=stage].menu-active")
    await page.wait_for_selector("#controller-state[data-state=live]")

    viewer = await player(browser, hub, "/stage")  # another user
    await viewer.wait_for_selector("#controller[data-state=online]")  # the admin page
    # the preview is no player
    await page.wait_for_selector("#presence:text('1 player · 1 controller')")

    await page.fill("#send [name=speaker]", "Narrator")
    await page.fill("#send [name=speed]", "500")
    await page.fill("#send [name=message]", "@bHello@r from the <i>admin</i>")
    await page.press("#send [name=message]", "Enter")
    await viewer.wait_for_selector("#dialog[data-state=done]")
    assert await viewer.text_content("#text") == "Hello from the <i>admin</i>"
    assert await viewer.text_content("#speaker") == "Narrator"
    entry = page.locator("#history li:has-text('Hello from the <i>admin</i>')")
    assert await entry.locator(".fmt-b").text_content() == "Hello"  # as the player shows it
    assert await page.input_value("#send [name=message]") == ""  # ready for the next line
    preview = page.frame_locator("#preview")
    await preview.locator("#dialog[data-state=done]").wait_for()
    assert await preview.locator("#text").text_content() == "Hello from the <i>admin</i>"
    await page.wait_for_selector("#toasts .alert", state="detached")  # "Room stage created"
    await screenshot(page, "admin", full_page=True)

    await page.reload()  # the session survives (refresh cookie), the history is replayed
    await page.wait_for_selector("#history li:has-text('from the')")
    await page.click("#logout")
    await page.wait_for_selector("#login-view:not([hidden])")
    await page.reload()
    await page.wait_for_selector("#login-view:not([hidden])")


async def test_admin_shows_recent_messages_from_the_history_api(browser: Browser, hub: Server):
    """The admin's recent messages come from the JSON history API (the newest 50, newest
    first); its controller stream resumes after the newest of them, replaying nothing."""
    for i in range(60):
        hub.publish(data={"message": f"line {i}"})
    page = await browser.open(f"{hub.url}/admin")
    requests = []
    page.on("request", lambda request: requests.append(request))
    await log_in(page)
    await page.wait_for_selector("#controller-state[data-state=live]")
    (read,) = [r for r in requests if "/messages" in r.url]
    assert read.url == f"{hub.url}/api/v1/rooms/lobby/messages?limit=50"
    (stream,) = [r for r in requests if "role=controller" in r.url]
    assert (await stream.all_headers())["last-event-id"] == "60"
    items = page.locator("#history li")
    assert await items.count() == 50
    assert "line 59" in await items.nth(0).text_content()
    assert "line 10" in await items.nth(49).text_content()
    hub.publish(data={"message": "live line"})
    await page.wait_for_selector("#history li:first-child:has-text('live line')")
    assert await items.count() == 50 and "line 58" in await items.nth(2).text_content()


async def test_admin_preview_shows_the_last_message_at_once_and_is_no_player(
    browser: Browser, hub: Server
):
    for i in range(3):
        hub.publish(data={"message": f"line {i}", "speed": FAST})
    page = await admin_page(browser, hub)
    preview = page.frame_locator("#preview")
    await preview.locator("#dialog[data-id='3'][data-state=done]").wait_for()
    assert await preview.locator("#text").text_content() == "line 2"
    await page.wait_for_selector("#controller-state[data-state=live]")
    await preview.locator("#connection[data-state=live]").wait_for()
    presence = httpx.get(f"{hub.url}/api/v1/rooms/lobby/presence").json()
    assert (presence["players"], presence["controllers"]) == (0, 1)
    assert await page.text_content("#presence") == "0 players · 1 controller"


async def test_admin_edits_and_retracts_recent_messages(browser: Browser, hub: Server):
    sent = [hub.publish("Narrator", {"message": f"line {i}", "speed": FAST})["id"] for i in (1, 2)]
    page = await admin_page(browser, hub)
    viewer = await player(browser, hub)
    await page.wait_for_selector("#controller-state[data-state=live]")
    last = page.locator(f"#history li[data-id='{sent[1]}']")
    await last.locator("button:text('Edit')").click()
    await page.fill(f"#history li[data-id='{sent[1]}'] input[name=message]", "@iline two@r")
    await page.press(f"#history li[data-id='{sent[1]}'] input[name=message]", "Enter")
    await last.locator(".fmt-i:text('line two')").wait_for()
    assert "(edited)" in await last.text_content()
    reply = httpx.get(f"{hub.url}/api/v1/rooms/lobby/messages").json()
    assert reply["messages"][0]["data"] == {"message": "@iline two@r", "speed": FAST}

    hub.publish("Narrator", {"message": "line 3", "speed": FAST})
    await line_shown(viewer, sent[1] + 1)
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.locator(f"#history li[data-id='{sent[1] + 1}'] button:text('Retract')").click()
    await page.wait_for_selector(f"#history li[data-id='{sent[1] + 1}']", state="detached")
    await viewer.wait_for_selector("#dialog.hidden[data-state=idle]")  # off the screen
    ids = [m["id"] for m in httpx.get(f"{hub.url}/api/v1/rooms/lobby/messages").json()["messages"]]
    assert ids == sent[::-1]


async def test_admin_lists_every_room_past_one_page(browser: Browser, hub: Server):
    made = [f"r{n:04d}" for n in range(1001)]  # the page asks for 1000 at a time
    root = {"Authorization": f"Bearer {hub.token}"}
    async with httpx.AsyncClient(base_url=hub.url, headers=root) as client:
        for start in range(0, len(made), 50):
            replies = await asyncio.gather(
                *(
                    client.post("/api/v1/rooms", json={"id": room})
                    for room in made[start : start + 50]
                )
            )
            assert all(reply.status_code == 201 for reply in replies)
    page = await admin_page(browser, hub)
    await page.wait_for_selector("#rooms button[data-room=r1000]")
    assert await page.locator("#rooms button").count() == len(made) + 1  # and the lobby


async def test_admin_api_token_is_shown_once_and_works_from_curl(browser: Browser, hub: Server):
    page = await admin_page(browser, hub, permissions=["clipboard-read", "clipboard-write"])
    await page.fill("#create-token [name=name]", "obs")
    await page.select_option("#create-token [name=rooms]", "lobby")
    await page.click("#create-token button")
    await page.wait_for_selector("#secret-box:not([hidden])")
    secret = await page.text_content("#secret")
    await page.click("#copy")
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await page.wait_for_selector("#tokens td:text('obs')")
    assert secret not in await page.inner_text("#tokens")

    viewer = await player(browser, hub)

    def curl_send(message: str) -> dict:
        body = json.dumps({"room": "lobby", "speaker": "curl", "data": {"message": message}})
        done = subprocess.run(
            [
                "curl",
                "-s",
                f"{hub.url}/api/v1/send",
                "-H",
                f"Authorization: Bearer {secret}",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return json.loads(done.stdout)

    sent = curl_send("sent with an API token")
    assert sent["code"] == 202
    assert await line_shown(viewer, sent["id"]) == "sent with an API token"

    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#tokens button:text('Revoke')")
    await page.wait_for_selector("#tokens td:text('obs')", state="detached")
    assert curl_send("after the revocation")["code"] == 401


async def test_admin_room_settings_reach_the_player_and_delete_ends_it(
    browser: Browser, hub: Server
):
    page = await admin_page(browser, hub)
    await page.click("#room-panel summary")
    await page.fill("#settings [name=title]", "The lobby")
    await page.select_option("#settings [name=theme]", "light")
    await page.fill("#settings [name=typewriter_speed]", "200")
    await page.click("#settings button[type=submit]")
    await page.wait_for_selector("#room-title:text('lobby · The lobby')")
    viewer = await player(browser, hub)
    await viewer.wait_for_selector("html[data-theme=light]")

    browser.allow("status of 409")  # the default room cannot be deleted: the page says so
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#delete-room")
    await page.wait_for_selector(".toast .alert-error:text('The default room cannot be deleted')")

    await page.fill("#create-room [name=id]", "gone")
    await page.click("#create-room button")
    await page.wait_for_selector("#rooms button[data-room=gone].menu-active")
    doomed = await player(browser, hub, "/gone")
    await page.click("#delete-room")
    await page.wait_for_selector("#rooms button[data-room=gone]", state="detached")
    await doomed.wait_for_selector("#connection[data-state=fallback]")  # quotes from now on


async def test_admin_manages_users_and_a_user_sees_no_user_admin(browser: Browser, hub: Server):
    page = await admin_page(browser, hub)
    await page.wait_for_selector("#users-panel:not([hidden]) #users li")
    await page.fill("#create-user [name=username]", "bob")
    await page.fill("#create-user [name=password]", "bob's password")
    await page.click("#create-user button")
    await page.wait_for_selector("#users li:has-text('bob')")

    bob = await browser.open(f"{hub.url}/admin")
    await log_in(bob, "bob", "bob's password")
    await bob.wait_for_selector("#app-view:not([hidden])")
    assert await bob.is_hidden("#users-panel")
    await bob.fill("#create-room [name=id]", "bobs")
    await bob.click("#create-room button")
    await bob.wait_for_selector("#controller-state[data-state=live]")  # bob's own room

    await page.click("#users li:has-text('bob') button:text('Disable')")
    await page.wait_for_selector("#users li:has-text('bob') .badge:text('disabled')")


async def test_admin_renews_its_session_before_the_access_token_expires(
    browser: Browser, make_server
):
    hub = make_server(ADMIN_USERNAME="admin", ADMIN_PASSWORD=ADMIN_PASSWORD, ACCESS_TOKEN_TTL_S="2")
    page = await browser.open(f"{hub.url}/admin")
    await log_in(page)
    await page.wait_for_selector("#app-view:not([hidden]) #rooms button")
    for _ in range(2):  # renewed at 80% of each token's life, silently
        async with page.expect_response("**/api/v1/auth/refresh") as renewal:
            pass
        assert (await renewal.value).ok
    await asyncio.sleep(2)  # past the first tokens' expiry: the page still works
    await page.fill("#send [name=speaker]", "later")
    await page.fill("#send [name=message]", "still logged in")
    await page.click("#send button")
    await page.wait_for_selector("#history li:has-text('still logged in')")


async def test_admin_works_on_a_phone(browser: Browser, hub: Server):
    hub.publish("Narrator", {"message": "@bA long line with a long word: " + "x" * 80})
    page = await admin_page(browser, hub, viewport={"width": 360, "height": 740}, is_mobile=True)
    await page.wait_for_selector("#history li")
    await page.click("#profiles-panel summary")  # a speaker's row of fields fits too
    await page.click("#add-profile")
    # A mobile browser widens the layout viewport to fit wider content (innerWidth grows
    # with it), and a card's overflow may be clipped rather than scroll: neither may happen.
    assert await page.evaluate("[innerWidth, document.documentElement.scrollWidth]") == [360, 360]
    clipped = await page.evaluate(
        """() => [...document.querySelectorAll('#app-view *')]
            .filter(node => node.getBoundingClientRect().right > innerWidth + 0.5)
            .filter(node => !node.closest('.overflow-x-auto'))
            .map(node => node.outerHTML.slice(0, 80))"""
    )
    assert clipped == []
    await screenshot(page, "admin-phone", full_page=True)


async def test_admin_edits_speaker_profiles_and_uploads_images(browser: Browser, hub: Server):
    page = await admin_page(browser, hub)
    await page.click("#profiles-panel summary")
    browser.allow("status of 415")  # an SVG, refused on purpose: the page says why
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    await page.fill("#upload [name=name]", "evil")
    await page.set_input_files(
        "#upload [name=file]", {"name": "evil.svg", "mimeType": "image/svg+xml", "buffer": svg}
    )
    await page.click("#upload button")
    await page.wait_for_selector(".toast .alert-error:has-text('PNG, JPEG, WebP or GIF')")

    await page.fill("#upload [name=name]", "Alice")
    await page.set_input_files(
        "#upload [name=file]", {"name": "a.png", "mimeType": "image/png", "buffer": face_png()}
    )
    await page.click("#upload button")
    await page.wait_for_selector("#uploads li:has-text('alice') img")
    await page.click("#add-profile")
    row = page.locator("#profile-rows li.profile").last
    await row.locator("[name=speaker]").fill("Alice")
    await row.locator("[name=color]").fill("#2a9d8f")  # picking a colour ticks its box
    await row.locator("[name=avatar]").select_option("alice")
    await page.click("#profiles button[type=submit]")
    await page.wait_for_selector(".toast .alert-success:has-text('Profiles saved')")

    viewer = await player(browser, hub)
    sent = hub.publish("Alice", {"message": "Set up from the admin", "speed": FAST})
    await line_shown(viewer, sent["id"])
    assert await viewer.evaluate(PLATE_COLOR) == "rgb(42, 157, 143)"
    await viewer.wait_for_function("() => document.getElementById('avatar').naturalWidth === 64")


def room_settings(server: Server, room: str = "lobby") -> dict:
    reply = httpx.get(
        f"{server.url}/api/v1/rooms/{room}", headers={"Authorization": f"Bearer {server.token}"}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["room"]["settings"]


async def fill_profile(page: Page, fields: dict) -> None:
    """Adds a speaker's row to the profiles form and fills it in (`colour`: ticks its box)."""
    await page.click("#add-profile")
    row = page.locator("#profile-rows li.profile").last
    for name, value in fields.items():
        control = row.locator(f"[name={name}]")
        if name in ("avatar", "sound"):
            await control.select_option(value)
        else:
            await control.fill(str(value))


async def profile_rows(page: Page) -> list[dict]:
    """The profiles form's rows as they are: each field's value (colour: None when unticked)."""
    return await page.eval_on_selector_all(
        "#profile-rows li.profile",
        """rows => rows.map(row => {
          const value = name => row.querySelector(`[name=${name}]`).value;
          const colored = row.querySelector('[name=colored]').checked;
          return {speaker: value('speaker'), color: colored ? value('color') : null,
                  avatar: value('avatar'), speed: value('speed'), sound: value('sound'),
                  pitch: value('pitch')};
        })""",
    )


async def test_admin_edits_speaker_profiles_with_a_form(browser: Browser, hub: Server):
    upload(hub, "face", face_png())
    upload(hub, "beep", wav())
    page = await admin_page(browser, hub)
    await page.click("#profiles-panel summary")
    await page.wait_for_selector("#uploads li:has-text('beep')")
    assert await page.locator("#profile-rows li").count() == 0  # no profiles yet
    alice = {"speaker": "Alice", "color": "#2a9d8f", "avatar": "face", "speed": 40}
    await fill_profile(page, alice | {"sound": "soft", "pitch": 1.3})
    await fill_profile(page, {"speaker": "Bob 🎩", "sound": "beep", "pitch": 0.5})
    # the choices: none or the room's images; the bundled sounds, none or the room's sounds
    avatars = (
        await page.locator("#profile-rows li.profile")
        .last.locator("[name=avatar] option")
        .all_text_contents()
    )
    assert avatars == ["none", "face"]
    sound_choices = (
        await page.locator("#profile-rows li.profile")
        .last.locator("[name=sound] option")
        .all_text_contents()
    )
    assert sound_choices == ["default (blip)", "blip", "soft", "none (silent)", "♪ beep"]
    await page.click("#profiles button[type=submit]")
    await page.wait_for_selector(".toast .alert-success:has-text('Profiles saved')")
    entered = {
        "Alice": {"color": "#2a9d8f", "avatar": "face", "speed": 40, "sound": "soft", "pitch": 1.3},
        "Bob 🎩": {"sound": "beep", "pitch": 0.5},
    }
    assert room_settings(hub)["profiles"] == entered

    await page.reload()  # the session goes on (its refresh cookie); the form shows them
    await page.wait_for_selector("#profile-rows li.profile", state="attached")
    assert await profile_rows(page) == [
        {"speaker": "Alice", "color": "#2a9d8f", "avatar": "face", "speed": "40",
         "sound": "soft", "pitch": "1.3"},
        {"speaker": "Bob 🎩", "color": None, "avatar": "", "speed": "", "sound": "beep",
         "pitch": "0.5"},
    ]  # fmt: skip

    # Edit Bob, remove Alice. What the server refuses, the page says as any error.
    await page.click("#profiles-panel summary")
    rows = page.locator("#profile-rows li.profile")
    await rows.nth(0).locator("button:has-text('Remove')").click()
    bob = rows.nth(0)
    await bob.locator("[name=sound]").select_option("none")
    await bob.locator("[name=pitch]").evaluate("input => input.removeAttribute('max')")
    await bob.locator("[name=pitch]").fill("9")  # past 4: only the server says no
    browser.allow("status of 400")
    await page.click("#profiles button[type=submit]")
    await page.wait_for_selector(".toast .alert-error:has-text('pitch')")
    await bob.locator("[name=pitch]").fill("2")
    await bob.locator("[name=color]").fill("#e2587f")
    await page.click("#profiles button[type=submit]")
    await page.wait_for_selector(".toast .alert-success:has-text('Profiles saved')")
    assert room_settings(hub)["profiles"] == {
        "Bob 🎩": {"color": "#e2587f", "sound": "none", "pitch": 2}
    }
