"""The status page in a real browser: Debian's chromium driven by Playwright, the daemon a real
process (``run.py serve``) against the simulators.

Playwright's sync API runs the whole browser session in one worker thread (its objects belong
to the thread that made them); the session reaches back into trio with ``trio.from_thread.run``
to send notifications and inspect the simulators. Playwright cannot download a browser here, so
``/usr/bin/chromium`` must exist (``.ci/run`` installs it): its absence fails, never skips.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
from playwright.sync_api import expect, sync_playwright

from tests.procs import free_port, write_config
from tests.support import ANNA, CRM_KEY, SECRET, Sims, open_sims
from tracker.db import keys, sessions
from tracker.simulators import scenarios

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ANSWERED, LOST = 998677001, 998677002
T = TypeVar("T")


async def _create_key(config: Path) -> str:
    """A key for the page, made with the real ``keys create`` command (printed once)."""
    done = await trio.run_process(
        [sys.executable, "run.py", "keys", "create", "--name", "browser-test",
         "--rights", "calls:read,outbox:write", "--config", str(config)],
        cwd=ROOT, capture_stdout=True, capture_stderr=True)
    token = done.stdout.decode().strip()
    assert token.startswith(keys.PREFIX), done.stderr.decode()
    return token


async def _wait_healthy(client: httpx.AsyncClient, url: str) -> None:
    while True:
        try:
            if (await client.get(f"{url}/healthz")).status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        await trio.sleep(0.05)


class Bridge:
    """What the browser thread may do on the trio side."""

    def __init__(self, sims: Sims, client: httpx.AsyncClient, url: str) -> None:
        self.sims, self.client, self.url = sims, client, url

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args)

    def set_crm_key(self, key: str) -> None:
        self.run_sync(setattr, self.sims.crm, "api_key", key)

    def send(self, notification: scenarios.Sent) -> dict[str, Any]:
        response = self.run(self.sims.uis.send_notification, notification,
                            f"{self.url}/webhooks/uis/{SECRET}", self.client)
        assert response.status_code == 200, response.text
        return dict(response.json())


def _browser_session(bridge: Bridge, token: str, process_pid: int) -> dict[str, Any]:
    """The whole scenario in the browser; returns what the trio side checks afterwards."""
    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(10_000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            # Log in: the page sends us to the form first.
            page.goto(bridge.url + "/")
            expect(page).to_have_url(bridge.url + "/login?next=%2F")
            page.fill("input[name=key]", token)
            page.click("button[type=submit]")
            expect(page).to_have_url(bridge.url + "/")
            expect(page.locator("#live-status")).to_have_text("live")
            page.evaluate("window.__sameDocument = 'still here'")  # gone if the page reloads

            # Place a call; each notification moves it on the open page, without a reload.
            scenario = scenarios.answered(ANSWERED, start=bridge.sims.uis.now(), employee=ANNA,
                                          wait_seconds=7, talk_seconds=95)
            bridge.run_sync(lambda: bridge.sims.uis.register(scenario, finished=False))
            seen["notifications"] = len(scenario.notifications)
            seen["states"] = states = []
            for notification in scenario.notifications:
                if notification.event == "call_finished":
                    bridge.run_sync(bridge.sims.uis.mark_finished, ANSWERED)
                state = bridge.send(notification)["state"]
                if state in ("ended", "lost"):
                    row = page.locator(f'[data-part="recent"] tr[data-call="{ANSWERED}"] .badge')
                    expect(row).to_have_attribute("data-state", state)
                    expect(page.locator(f'[data-part="board"] [data-call="{ANSWERED}"]')) \
                        .to_have_count(0)
                else:
                    card = page.locator(f'[data-part="board"] [data-state="{state}"] '
                                        f'[data-call="{ANSWERED}"]')
                    expect(card).to_be_visible()
                    expect(card).to_contain_text("+7 999 123-45-67")  # as people write it
                if not states or states[-1] != state:
                    states.append(state)
            seen["same_document"] = page.evaluate("window.__sameDocument")
            seen["updates"] = int(page.evaluate("document.body.dataset.updates || '0'"))

            # A permanent refusal (the retailCRM key was rotated) makes a dead letter.
            bridge.set_crm_key("rotated-key")
            for notification in scenarios.lost_in_ivr(LOST, start=bridge.sims.uis.now(),
                                                       wait_seconds=12).notifications:
                bridge.send(notification)
            dead_row = page.locator('[data-part="outbox"] table.dead-letters tr',
                                    has_text=str(LOST))
            expect(dead_row).to_be_visible()
            expect(dead_row).to_contain_text("Wrong")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

            # Its timeline shows the notification, the transition and the refused request.
            page.click(f'[data-part="recent"] a[href="/calls/{LOST}"]')
            expect(page).to_have_url(f"{bridge.url}/calls/{LOST}")
            action = page.locator('li.action[data-kind="upload"]')
            expect(action.locator(".badge")).to_have_attribute("data-status", "dead")
            action.locator("summary", has_text="request sent").click()
            expect(action.locator("pre").first).to_contain_text("telephony/calls/upload")
            expect(page.locator('li.note[data-name="lost_call"]')).to_contain_text("ringing")
            page.screenshot(path=str(ARTIFACTS / "call-timeline.png"), full_page=True)

            # The operator fixes the key and retries from the timeline; it updates by itself.
            bridge.set_crm_key(CRM_KEY)
            action.locator("button.retry").click()
            expect(action.locator(".badge")).to_have_attribute("data-status", "delivered")
            page.goto(bridge.url + "/")
            expect(page.locator('[data-part="outbox"]')).to_contain_text("No dead letters.")

            # The answered call's timeline: every notification and every action with its answer.
            page.goto(f"{bridge.url}/calls/{ANSWERED}")
            seen["timeline_notes"] = page.locator("li.note").count()
            seen["timeline_actions"] = page.locator("li.action").evaluate_all(
                "items => items.map(li => [li.dataset.kind,"
                " li.querySelector('.badge').dataset.status])")

            # A phone-sized screen gets the same page, readable.
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True,
                                     has_touch=True, device_scale_factor=2)
            # The session the login opened (the cookie holds its id, never the key).
            phone.context.add_cookies(page.context.cookies())
            phone.goto(bridge.url + "/")
            expect(phone.locator("#live-status")).to_have_text("live")
            seen["phone_overflow"] = phone.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            phone.screenshot(path=str(ARTIFACTS / "status-page-phone.png"), full_page=True)
            phone.close()

            # SIGTERM with the page's stream open: the daemon still stops at once.
            page.goto(bridge.url + "/")
            expect(page.locator("#live-status")).to_have_text("live")
            seen["console_errors"] = list(errors)  # the reconnects after SIGTERM will fail
            sent_at = time.monotonic()
            os.kill(process_pid, signal.SIGTERM)
            seen["sigterm_at"] = sent_at
            expect(page.locator("#live-status")).not_to_have_text("live")
        finally:
            browser.close()
    return seen


async def test_status_page_in_chromium_follows_a_call_and_retries_a_dead_letter(tmp_path):
    assert await trio.Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    with trio.fail_after(120):
        async with open_sims() as sims:
            port = free_port()
            db = tmp_path / "tracker.db"
            config = tmp_path / "tracker.toml"
            write_config(config, db=db, uis_url=sims.uis_url, crm_url=sims.crm_url, port=port,
                         outbox={"retry_base_seconds": 0.05, "retry_max_seconds": 0.5})
            token = await _create_key(config)
            url = f"http://127.0.0.1:{port}"
            log_path = tmp_path / "daemon.log"
            daemon_log = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "run.py", "serve", "--config", str(config)], cwd=ROOT,
                    stdout=daemon_log, stderr=daemon_log)
            finally:
                os.close(daemon_log)
            exited_at: list[float] = []

            async def watch_exit() -> None:
                await process.wait()
                exited_at.append(time.monotonic())

            # No keep-alive from the test itself: only the browser's connections are open when
            # the daemon gets SIGTERM.
            no_keepalive = httpx.Limits(max_keepalive_connections=0)
            try:
                async with httpx.AsyncClient(timeout=5, limits=no_keepalive) as client, \
                        trio.open_nursery() as nursery:
                    nursery.start_soon(watch_exit)
                    with trio.fail_after(20):
                        await _wait_healthy(client, url)
                    bridge = Bridge(sims, client, url)
                    seen = await trio.to_thread.run_sync(_browser_session, bridge, token,
                                                         process.pid)
                    with trio.fail_after(10):
                        code = await process.wait()
                stopped_after = exited_at[0] - seen["sigterm_at"]
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                log_text = await trio.Path(log_path).read_text(encoding="utf-8", errors="replace")
                print(log_text[-4000:])  # shown by pytest when the test fails

    assert seen["states"] == ["ringing", "waiting_answer", "talking", "ended"]
    assert seen["same_document"] == "still here", "the page reloaded"
    assert seen["updates"] >= 4
    assert seen["console_errors"] == []
    assert seen["timeline_notes"] == seen["notifications"]
    assert seen["timeline_actions"] == [["popup", "delivered"], ["hangup", "delivered"],
                                        ["upload", "delivered"]]
    assert seen["phone_overflow"] <= 0, "the page scrolls sideways on a phone"
    assert code == 0
    assert stopped_after < 2.0, f"took {stopped_after:.2f}s to stop with a page open"
    # retailCRM got the retried upload exactly once, with the key that works.
    uploads = [item for r in sims.crm.requests if r.endpoint == "telephony/calls/upload"
               and r.status == 200 for item in r.data["calls"]]
    assert sorted(item["externalId"] for item in uploads) == [str(ANSWERED), str(LOST)]
    refused = [(r.status, item["externalId"]) for r in sims.crm.requests
               if r.endpoint == "telephony/calls/upload" and r.status != 200
               for item in r.data["calls"]]
    assert refused == [(403, str(LOST))]
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000


# -- the page in both languages, at desktop and phone size, with axe-core ---------------------

AXE = resources.files("axe_playwright_python") / "axe.min.js"  # axe-core, from PyPI
AXE_SOURCE = AXE.read_text(encoding="utf-8") + "\n;window.axe.version"
SIZES = {"desktop": {"viewport": {"width": 1280, "height": 900}},
         "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True,
                   "has_touch": True, "device_scale_factor": 2}}
WORDS = {"ru": {"/": ["Идут сейчас", "Сегодня", "Последние звонки", "Диаграмма состояний"],
                "call": ["Хронология", "запись", "разговаривал"]},
         "en": {"/": ["In progress", "Today", "Recent calls", "Statechart"],
                "call": ["Timeline", "recording", "talked"]}}


def _axe(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page, as ``rule: targets``. The page's
    CSP refuses an injected <script>; DevTools' evaluate is not subject to it."""
    page.evaluate(AXE_SOURCE)
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}"
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


def _pages_session(url: str, session: str) -> dict[str, Any]:
    """``/`` and a call's page in Russian and English (the browser's Accept-Language), at
    desktop and phone size: what each shows, axe-core's verdict, screenshots."""
    from tests.pagecalls import ANSWERED

    seen: dict[str, Any] = {}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            # The checker itself: an image without a text alternative is a critical violation.
            probe = browser.new_page()
            probe.set_content('<!doctype html><html lang="en"><title>t</title><main>'
                              '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="></main>')
            seen["axe_probe"] = _axe(probe)
            probe.close()
            for lang, locale in (("ru", "ru-RU"), ("en", "en-US")):
                for size, options in SIZES.items():
                    context = browser.new_context(locale=locale, **options)
                    context.add_cookies([{"name": "tracker_session", "value": session, "url": url}])
                    page = context.new_page()
                    page.set_default_timeout(10_000)
                    errors: list[str] = []
                    page.on("console",
                            lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
                    key = f"{lang}-{size}"
                    page.goto(url + "/")
                    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
                    for picture in ("hours", "answers", "people", "callbacks", "statechart"):
                        expect(page.locator(f'figure[data-picture="{picture}"] svg')) \
                            .to_be_visible()
                    seen[key] = {
                        "lang": page.evaluate("document.documentElement.lang"),
                        "text": page.locator("main").inner_text(),
                        "overflow": page.evaluate("document.documentElement.scrollWidth"
                                                  " - document.documentElement.clientWidth"),
                        "axe": _axe(page),
                        "h1": page.locator("h1").count(),
                        "audio_in_list": page.locator(
                            f'[data-part="recent"] tr[data-call="{ANSWERED}"] audio').count(),
                    }
                    page.screenshot(path=str(ARTIFACTS / f"status-{key}.png"), full_page=True)
                    page.goto(f"{url}/calls/{ANSWERED}")
                    expect(page.locator("li.note").first).to_be_visible()
                    audio = page.locator("table.fields audio")
                    as_served = [audio.get_attribute("controls") is not None,
                                 audio.get_attribute("preload")]
                    duration = audio.evaluate(
                        "a => new Promise((done, fail) => {"
                        " a.addEventListener('loadedmetadata', () => done(a.duration));"
                        " a.addEventListener('error', () => fail('audio: ' + a.error.code));"
                        " a.preload = 'metadata'; a.load(); })")
                    seen[key + "-call"] = {
                        "text": page.locator("main").inner_text(),
                        "overflow": page.evaluate("document.documentElement.scrollWidth"
                                                  " - document.documentElement.clientWidth"),
                        "axe": _axe(page),
                        "audio": as_served,
                        "duration": duration,
                        "customer_link": page.locator("a.customer").get_attribute("href"),
                    }
                    page.screenshot(path=str(ARTIFACTS / f"call-{key}.png"), full_page=True)
                    seen[key + "-errors"] = errors
                    context.close()
            # Switching on the page: the choice is remembered over the browser's language.
            context = browser.new_context(locale="ru-RU")
            context.add_cookies([{"name": "tracker_session", "value": session, "url": url}])
            page = context.new_page()
            page.goto(url + "/")
            page.click('nav.languages a[lang="en"]')
            expect(page.locator("html")).to_have_attribute("lang", "en")
            page.goto(url + "/")
            seen["switched"] = page.evaluate("document.documentElement.lang")
            context.close()
        finally:
            browser.close()
    return seen


async def test_the_page_in_russian_and_english_on_desktop_and_phone_passes_axe(tmp_path):
    from tests.pagecalls import CUSTOMER, populate
    from tests.support import open_daemon, settings_for

    assert await trio.Path(CHROMIUM).exists(), f"{CHROMIUM} is missing"
    with trio.fail_after(150):
        async with open_sims() as sims:
            media = f"{sims.uis_url}/system/media/talk"  # recordings from the simulator
            sims.uis.media_url = media
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url,
                                    uis={"media_url": media})
            async with open_daemon(sims, settings) as d:
                await populate(d, media_url=media)
                info, _ = keys.create(d.ctx.store, "browser", ["calls:read", "log:read"])
                session = sessions.open_session(d.ctx.store, info)  # what a login makes
                seen = await trio.to_thread.run_sync(_pages_session, d.url, session)
                crm_url = settings.crm.url.rstrip("/")

    def plain(text: str) -> str:
        return text.replace("\xa0", " ").replace("\u202f", " ")

    for lang in ("ru", "en"):
        for size in SIZES:
            key = f"{lang}-{size}"
            home, call = seen[key], seen[key + "-call"]
            assert home["lang"] == lang, key
            text = plain(home["text"])
            for word in WORDS[lang]["/"]:
                assert word in text, (key, word)
            assert "+7 902 079-08-76" in text, key  # formatted for the account's region
            assert "Анна Иванова · 101" in text and "Борис Петров · 102" in text, key
            assert "Соколова Ольга" in text, key
            assert home["h1"] == 1, key
            assert home["audio_in_list"] == 1, key
            assert home["overflow"] <= 0, f"{key}: the page scrolls sideways"
            assert home["axe"] == [], key
            call_text = plain(call["text"])
            for word in WORDS[lang]["call"]:
                assert word in call_text, (key, word)
            assert ("1 мин 35 с" if lang == "ru" else "1 min 35 sec") in call_text, key
            assert call["audio"] == [True, "none"], key
            assert 1.5 < call["duration"] < 2.5, key  # the simulator's two-second recording
            assert call["customer_link"] == f"{crm_url}/customers/77", key
            assert call["overflow"] <= 0, f"{key}: the call page scrolls sideways"
            assert call["axe"] == [], key
            assert seen[key + "-errors"] == [], key
    assert seen["switched"] == "en"
    assert [v.split(" ")[0] for v in seen["axe_probe"]] == ["image-alt"]
    assert CUSTOMER == "79020790876"
    for name in ("status-ru-phone.png", "call-en-desktop.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
