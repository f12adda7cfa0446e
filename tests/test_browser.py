"""The browser side, in a real headless Chromium driven by selenium: the guest chat page
(examples/chat.html, served by the app), the client's SSE parser and reconnects, and
the status dashboard. Screenshots go to test-artifacts/ (kept out of git).

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver (.ci/run installs them);
selenium is given both paths, so it never tries to download a browser.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import urllib3
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from starlette.staticfiles import StaticFiles

from guestqueue import Chunk, Settings, WorkflowRequest, create_app
from guestqueue.errors import GuestQueueError, Rejected, UpstreamFailure
from guestqueue.web.pages import STATIC_DIR

from .conftest import FAST, free_port, guestqueue_process, serve_app, wait_for_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """guestqueue with its built-in demo upstream (a few seconds per answer), one guest at a time."""
    log_dir = tmp_path_factory.mktemp("browser-site")
    with guestqueue_process(log_dir, max_concurrent_requests=1, reconnect_grace_s=5.0) as base:
        yield base


GONE = (WebDriverException, urllib3.exceptions.HTTPError, OSError)  # a browser (or its driver) that died


class Chromium:
    """One headless Chromium for the module's tests, started again if it died: a crashed browser
    (seen once beside a CPU hog: "Unable to receive message from renderer") fails its own test,
    not every one after it. chromedriver's log goes to test-artifacts/ for the next diagnosis."""

    def __init__(self, profiles: pytest.TempPathFactory) -> None:
        self._profiles = profiles
        self._driver: WebDriver | None = None

    def alive(self) -> WebDriver:
        if self._driver is not None:
            try:
                self._driver.window_handles  # noqa: B018 (asks the browser)
                return self._driver
            except GONE:
                self.quit()
        self._driver = self._start()
        return self._driver

    def quit(self) -> None:
        if self._driver is not None:
            with contextlib.suppress(*GONE):
                self._driver.quit()
            self._driver = None

    def _start(self) -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=900,760",
            f"--user-data-dir={self._profiles.mktemp('chromium-profile')}",
        ):
            options.add_argument(argument)
        ARTIFACTS.mkdir(exist_ok=True)
        log = ARTIFACTS / f"chromedriver-{os.getpid()}.log"
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(log)), options=options)
        driver.set_script_timeout(30)
        return driver


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            pytest.fail(f"{path} is missing: apt-get install {package} (.ci/run does it)", pytrace=False)
    browsers = Chromium(tmp_path_factory)
    try:
        yield browsers
    finally:
        browsers.quit()


@pytest.fixture
def browser(chromium: Chromium) -> WebDriver:
    return chromium.alive()


def test_a_browser_that_died_is_started_again(chromium: Chromium, site: str) -> None:
    first = chromium.alive()
    first.quit()  # as a crash leaves it: the session is gone
    second = chromium.alive()
    assert second is not first
    open_page(second, f"{site}/static/chat.html")


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def wait(driver: WebDriver, timeout_s: float = 20.0) -> WebDriverWait[WebDriver]:
    # An element found just before the page navigates (a form posted, a redirect) goes stale: the
    # condition is asked again, as for an element not there yet.
    return WebDriverWait(
        driver,
        timeout_s,
        poll_frequency=0.05,
        ignored_exceptions=[NoSuchElementException, StaleElementReferenceException],
    )


def last_turn(driver: WebDriver, part: str) -> str:
    text: str = driver.execute_script(
        "const t = document.querySelector('.turn:last-child');"
        "return t ? t.querySelector(arguments[0]).textContent : ''",
        f".{part}",
    )
    return text


def ending_of_last_turn(driver: WebDriver) -> str | None:
    ending: str | None = driver.execute_script(
        "const t = document.querySelector('.turn:last-child'); return t ? (t.dataset.ending || null) : null"
    )
    return ending


def ask_on_page(driver: WebDriver, question: str) -> None:
    driver.find_element(By.ID, "question").send_keys(question)
    driver.find_element(By.ID, "ask").click()


def page_is_ready(driver: WebDriver) -> bool:
    """The chat page has its strings and has taken over its form: the Ask button turns on."""
    ready: bool = driver.execute_script(
        "return document.readyState === 'complete' && !document.getElementById('ask').disabled"
    )
    return ready


def open_chat(driver: WebDriver, site: str) -> None:
    driver.get(f"{site}/static/chat.html")
    wait(driver).until(page_is_ready)


def test_second_guest_sees_place_one_then_the_streamed_answer(browser: WebDriver, site: str) -> None:
    open_chat(browser, site)
    first_tab = browser.current_window_handle
    ask_on_page(browser, "What is this page?")
    wait(browser).until(lambda d: "Writing your answer" in last_turn(d, "status") or last_turn(d, "answer"))

    browser.switch_to.new_window("tab")
    open_chat(browser, site)
    ask_on_page(browser, "How long is the line today?")
    # Read in the page: the element is redrawn on each place update (a WebElement could go stale).
    position = wait(browser).until(
        lambda d: d.execute_script("const p = document.getElementById('position'); return p && p.textContent")
    )
    assert position == "1"
    status = last_turn(browser, "status")
    shown = re.search(
        r"You're 1 in line, next up · (about (\d+) s to go( \(likely \d+ s to \d+ (s|min)\))?|any moment now)", status
    )
    assert shown, status
    if shown.group(2) and int(shown.group(2)) >= 3:  # the wait's p10-p90 range beside the estimate
        assert shown.group(3), status
    screenshot(browser, "chat-waiting.png")

    # The answer arrives piece by piece: note each length seen until the stream ends.
    lengths: list[int] = []
    deadline = time.monotonic() + 30
    while ending_of_last_turn(browser) is None:
        assert time.monotonic() < deadline, "the answer did not finish"
        length = len(last_turn(browser, "answer"))
        if length and (not lengths or length != lengths[-1]):
            lengths.append(length)
        time.sleep(0.05)
    assert ending_of_last_turn(browser) == "workflow_complete"
    answer = last_turn(browser, "answer")
    assert "guestqueue" in answer and len(answer) > 200
    assert len(lengths) >= 5, f"the answer should stream in, not arrive at once: {lengths}"
    assert browser.find_elements(By.CSS_SELECTOR, ".turn:last-child .suggestions button")
    assert re.fullmatch(r"You waited \d+ s in line\.", last_turn(browser, "status"))
    screenshot(browser, "chat-answer.png")

    browser.switch_to.window(first_tab)
    wait(browser).until(lambda d: ending_of_last_turn(d) == "workflow_complete")
    browser.switch_to.window(browser.window_handles[-1])
    browser.close()
    browser.switch_to.window(first_tab)


def test_leaving_the_line_from_the_page(browser: WebDriver, site: str) -> None:
    open_chat(browser, site)
    first_tab = browser.current_window_handle
    ask_on_page(browser, "Tell me something long")
    wait(browser).until(lambda d: "Writing your answer" in last_turn(d, "status") or last_turn(d, "answer"))
    browser.switch_to.new_window("tab")
    open_chat(browser, site)
    ask_on_page(browser, "I cannot wait")
    wait(browser).until(lambda d: d.find_elements(By.ID, "position"))
    browser.find_element(By.ID, "cancel").click()
    wait(browser).until(lambda d: ending_of_last_turn(d) == "error")
    assert last_turn(browser, "error") == "You left the line."
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    browser.close()
    browser.switch_to.window(first_tab)
    wait(browser).until(lambda d: ending_of_last_turn(d) == "workflow_complete")


def test_dashboard_shows_live_numbers_and_a_chart(browser: WebDriver, site: str) -> None:
    browser.get(f"{site}/dashboard")
    wait(browser).until(lambda d: d.find_element(By.ID, "completed_requests").text.isdigit())
    before = int(browser.find_element(By.ID, "completed_requests").text)
    # Three guests (one answered at a time): the first is running before the other two join (on a
    # loaded machine all three once joined before the worker took the first), so the line grows
    # to two, then drains.
    ask = """
        for (const q of arguments[0]) {
          fetch("chat/simple", { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify({ query: "dashboard " + q }) });
        }
    """
    browser.execute_script(ask, ["one"])
    wait(browser).until(lambda d: d.find_element(By.ID, "active_requests").text == "1 / 1")
    browser.execute_script(ask, ["two", "three"])
    wait(browser).until(lambda d: d.find_element(By.ID, "queue_size").text == "2")
    wait(browser, 30).until(lambda d: int(d.find_element(By.ID, "completed_requests").text) == before + 3)
    wait(browser).until(lambda d: d.find_element(By.ID, "queue_size").text == "0")
    assert browser.find_element(By.ID, "max_y").text == "2"
    points = browser.find_element(By.ID, "line-queue").get_attribute("points") or ""
    heights = {float(point.split(",")[1]) for point in points.split()}
    assert len(heights) == 3, f"the queue line shows 0, 1 and 2 waiting: {heights}"
    assert re.fullmatch(r"\d+ / 1", browser.find_element(By.ID, "active_requests").text)
    assert browser.find_element(By.ID, "problem").text == ""
    screenshot(browser, "dashboard.png")


# -- the client's SSE parser, run in the page ------------------------------------------

PARSE = """
const [chunks, done] = [arguments[0], arguments[arguments.length - 1]];
import("./guestqueue.js").then(({ SSEParser }) => {
  const events = [], comments = [], retries = [];
  const parser = new SSEParser((m) => events.push([m.type, m.data, m.lastEventId]),
                               { onComment: (c) => comments.push(c), onRetry: (r) => retries.push(r) });
  for (const chunk of chunks) parser.feed(chunk);
  done({ events, comments, retries, lastEventId: parser.lastEventId });
}).catch((exc) => done({ error: String(exc) }));
"""

PARSER_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "lf": ('event: queued\nid: 1\ndata: {"a":1}\n\n', {"events": [["queued", '{"a":1}', "1"]]}),
    "crlf": ("event: queued\r\nid: 2\r\ndata: x\r\n\r\n", {"events": [["queued", "x", "2"]]}),
    "cr": ("event: queued\rid: 3\rdata: x\r\r", {"events": [["queued", "x", "3"]]}),
    "mixed line ends": ("data: a\r\ndata: b\rdata: c\n\r\n", {"events": [["message", "a\nb\nc", ""]]}),
    "multi-line data": (
        "data: one\ndata: two\ndata\ndata:  three\n\n",
        {"events": [["message", "one\ntwo\n\n three", ""]]},
    ),
    "comments": (
        ": ping\n\n:\ndata: y\n: inside\n\n",
        {"events": [["message", "y", ""]], "comments": [" ping", "", " inside"]},
    ),
    "no space after colon": ("event:x\ndata:y\n\n", {"events": [["x", "y", ""]]}),
    "event type resets": ("event: a\ndata: 1\n\ndata: 2\n\n", {"events": [["a", "1", ""], ["message", "2", ""]]}),
    "id without data": ("id: 7\n\n", {"events": [], "lastEventId": "7"}),
    "id persists": ("id: 1\ndata: a\n\ndata: b\n\n", {"events": [["message", "a", "1"], ["message", "b", "1"]]}),
    "id with NUL ignored": (
        "id: 1\ndata: a\n\nid: x\u0000y\ndata: b\n\n",
        {"events": [["message", "a", "1"], ["message", "b", "1"]]},
    ),
    "unfinished event dropped": ("data: a\n\ndata: b\n", {"events": [["message", "a", ""]]}),
    "bom": ("\ufeffdata: x\n\n", {"events": [["message", "x", ""]]}),
    "retry": ("retry: 3000\nretry: soon\ndata: x\n\n", {"events": [["message", "x", ""]], "retries": [3000]}),
    "unknown fields": ("foo: bar\ndata: x\n\n", {"events": [["message", "x", ""]]}),
}


def split(text: str, how: str) -> list[str]:
    if how == "whole":
        return [text]
    if how == "by character":
        return list(text)
    # Cut after every CR: a CRLF is then always split across two chunks.
    return [piece for piece in re.split(r"(?<=\r)", text) if piece]


@pytest.mark.parametrize("how", ["whole", "by character", "after each CR"])
@pytest.mark.parametrize("case", list(PARSER_CASES))
def test_sse_parser(browser: WebDriver, site: str, case: str, how: str) -> None:
    if not browser.current_url.endswith("/static/chat.html"):
        open_chat(browser, site)
    text, expected = PARSER_CASES[case]
    result = browser.execute_async_script(PARSE, split(text, how))
    assert "error" not in result, result["error"]
    assert result["events"] == expected["events"]
    assert result["comments"] == expected.get("comments", result["comments"])
    assert result["retries"] == expected.get("retries", [])
    if "lastEventId" in expected:
        assert result["lastEventId"] == expected["lastEventId"]


def test_sse_parser_joins_a_crlf_split_between_chunks(browser: WebDriver, site: str) -> None:
    """Were the LF after a chunk-final CR read as a second line end, this would be two events."""
    open_chat(browser, site)
    result = browser.execute_async_script(PARSE, ["data: a\r", "\ndata: b\r", "\n\r", "\n"])
    assert result["events"] == [["message", "a\nb", ""]]


# -- reconnect and cancel against the real server --------------------------------------

DROP_AND_RESUME = """
const [mode, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const { GuestQueueClient } = await import("./guestqueue.js");
  const calls = [];
  let dropped = false;
  // The real fetch, except that the first stream is cut in the middle of its third answer_chunk.
  async function flakyFetch(url, init = {}) {
    const headers = init.headers || {};
    calls.push({ url: String(url), method: init.method || "GET", lastEventId: headers["Last-Event-ID"] ?? null });
    const response = await fetch(url, init);
    if (dropped || init.method !== "POST") return response;
    dropped = true;
    const reader = response.body.getReader();
    const decoder = new TextDecoder(), encoder = new TextEncoder();
    let seen = "";
    const body = new ReadableStream({
      async pull(controller) {
        const { value, done: finished } = await reader.read();
        if (finished) { controller.close(); return; }
        const before = seen.length;
        seen += decoder.decode(value, { stream: true });
        const at = seen.split("event: answer_chunk").slice(0, 3).join("event: answer_chunk").length;
        if (at < seen.length) {
          controller.enqueue(encoder.encode(seen.slice(before, Math.max(before, at + 30))));
          await reader.cancel();
          if (mode === "error") controller.error(new TypeError("network error"));
          else controller.close();
          return;
        }
        controller.enqueue(value);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  }
  const client = new GuestQueueClient({ fetch: flakyFetch, reconnectDelayMs: 100 });
  const seen = [];
  const request = client.ask("Will you come back?", { on: {
    event: (name, data, id) => seen.push([name, id]),
    reconnecting: (info) => seen.push(["reconnecting", info.lastEventId]),
  }});
  const ending = await request.done;
  done({ ending, answer: request.answer, reconnects: request.reconnects, calls, seen,
         requestId: request.requestId });
})().catch((exc) => done({ error: String(exc) }));
"""


@pytest.mark.parametrize("mode", ["error", "close"])
def test_client_resumes_a_dropped_stream_with_last_event_id(browser: WebDriver, site: str, mode: str) -> None:
    open_chat(browser, site)
    result = browser.execute_async_script(DROP_AND_RESUME, mode)
    assert "error" not in result, result["error"]
    assert result["ending"]["event"] == "workflow_complete"
    assert result["reconnects"] == 1
    # The whole answer exactly once: nothing lost at the cut, nothing repeated after it.
    assert result["answer"] == result["ending"]["data"]["answer"]
    events = [(name, int(i)) for name, i in result["seen"] if name != "reconnecting"]
    ids = [i for _, i in events]
    assert ids == sorted(set(ids)), ids
    [resume] = [i for name, i in result["seen"] if name == "reconnecting"]
    chunk_ids = [i for name, i in events if name == "answer_chunk"]
    assert resume == str(chunk_ids[1]), "resumes after the second chunk, the last one fully received"
    post, get = result["calls"]
    assert post["method"] == "POST" and get["method"] == "GET"
    assert get["url"].endswith(f"/chat/{result['requestId']}/events")
    assert get["lastEventId"] == resume


CANCEL = """
const done = arguments[arguments.length - 1];
(async () => {
  const { GuestQueueClient } = await import("./guestqueue.js");
  const client = new GuestQueueClient();
  const first = client.ask("Keep the worker busy");
  const second = client.ask("Changed my mind", { on: { queued: () => second.cancel() } });
  const [a, b] = await Promise.all([first.done, second.done]);
  done({ first: a.event, second: b });
})().catch((exc) => done({ error: String(exc) }));
"""


def test_client_cancel_leaves_the_line(browser: WebDriver, site: str) -> None:
    open_chat(browser, site)
    result = browser.execute_async_script(CANCEL)
    assert "error" not in result, result
    assert result["first"] == "workflow_complete"
    assert result["second"]["event"] == "error"
    assert result["second"]["data"]["code"] == "cancelled"


# -- the pages' Content-Security-Policy, and the dashboard's live stream ----------------

CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
                          (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture
def watched(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser, recording every Content-Security-Policy violation of the pages it opens."""
    added = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_WATCH})
    try:
        yield browser
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]})


def test_the_pages_work_under_their_content_security_policy(watched: WebDriver, site: str) -> None:
    open_chat(watched, site)
    assert "your place in line" in watched.find_element(By.ID, "intro").text
    ask_on_page(watched, "does the policy let the page work?")
    wait(watched, 40).until(lambda d: ending_of_last_turn(d) == "workflow_complete")
    assert watched.execute_script("return window.__cspViolations") == []
    watched.get(f"{site}/dashboard")
    wait(watched).until(lambda d: d.find_element(By.ID, "mode").text == "Live")
    assert watched.execute_script("return window.__cspViolations") == []
    # The policy does bite: an injected inline script is refused.
    watched.execute_script("""
        const s = document.createElement("script"); s.textContent = "window.__injected = true";
        document.body.appendChild(s);""")
    assert watched.execute_script("return window.__injected === undefined")
    assert any("script-src" in v for v in watched.execute_script("return window.__cspViolations"))


def test_dashboard_starts_from_the_servers_samples_and_follows_the_stream(browser: WebDriver, site: str) -> None:
    time.sleep(3)  # the server has sampled a few seconds by now
    browser.get(f"{site}/dashboard")
    wait(browser, 5).until(lambda d: d.find_element(By.ID, "mode").text == "Live")
    shown_s = int(browser.find_element(By.ID, "window").text)
    assert shown_s >= 3, f"the chart starts with the server's history, not empty ({shown_s} s)"


STREAM_DOWN = """
const realFetch = window.fetch.bind(window);
window.fetch = (url, init) => String(url).includes("queue/status/stream")
  ? Promise.reject(new TypeError("stream blocked by the test")) : realFetch(url, init);
"""


def test_dashboard_falls_back_to_polling_when_the_stream_fails(browser: WebDriver, site: str) -> None:
    added = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": STREAM_DOWN})
    try:
        browser.get(f"{site}/dashboard")
        wait(browser).until(lambda d: d.find_element(By.ID, "mode").text == "Refreshed every second")
        wait(browser).until(lambda d: "questions so far" in d.find_element(By.ID, "updated").text)
        before = browser.find_element(By.ID, "updated").text
        wait(browser).until(lambda d: d.find_element(By.ID, "updated").text != before)  # uptime moves on
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]})


# -- the chat page's URL parameters: line, language, theme -------------------------------------

I18N = ROOT / "guestqueue" / "web" / "static" / "i18n"


def strings(lang: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8"))
    return loaded


def test_every_language_has_every_string() -> None:
    english = strings("en")
    for path in I18N.glob("*.json"):
        other = strings(path.stem)
        assert other.keys() == english.keys() and other["errors"].keys() == english["errors"].keys(), path.name


# Codes the chat page never meets: it always sends a JSON body and no Idempotency-Key, never calls
# the admin API, shows a `timeout` event's own fallback text, and does not read the answers of
# DELETE /chat/{id} (already_finished) or chat/simple (reconnect); client_disconnected answers a
# guest who has gone.
NOT_ON_THE_PAGE = {
    "invalid_json",
    "unsupported_media_type",
    "idempotency_mismatch",
    "conflict",
    "too_many_attempts",
    "timeout",
    "already_finished",
    "reconnect",
    "client_disconnected",
    "receipt_expired",
    "offset_mismatch",  # a pull worker's (web/jobs.py), never a guest's
    "quota_exceeded",
}  # the admin API's (an application's quotas), never a guest's
CODE = re.compile(r'(?:"code": |code=|code: )"(\w+)"')


def every_code() -> set[str]:
    """Every error code a caller can be sent: the error tree's, and those written out in the server,
    the browser client and nginx.conf."""
    codes = set()
    tree: list[type[GuestQueueError]] = [Rejected, UpstreamFailure]
    while tree:
        kind = tree.pop()
        codes.add(kind.code)
        tree.extend(kind.__subclasses__())
    for path in [*(ROOT / "guestqueue").rglob("*.py"), STATIC_DIR / "guestqueue.js", ROOT / "nginx.conf"]:
        codes.update(CODE.findall(path.read_text(encoding="utf-8")))
    return codes


def test_every_error_a_guest_can_meet_has_words_in_every_language() -> None:
    codes = every_code()
    assert NOT_ON_THE_PAGE <= codes, "a code the page was said not to meet is gone: drop it from the list"
    for path in I18N.glob("*.json"):
        missing = codes - NOT_ON_THE_PAGE - strings(path.stem)["errors"].keys()
        assert not missing, f"{path.name} has no words for {sorted(missing)}: the guest would read the server's"


def test_the_pages_own_text_is_en_json() -> None:
    """What the page shows before its script has run is en.json's text, not a drifting copy."""
    html = (STATIC_DIR / "chat.html").read_text(encoding="utf-8")
    english = strings("en")
    shown = re.findall(r'data-text="(\w+)"[^>]*>([^<]*)<', html)
    placeholders = re.findall(r'\splaceholder="([^"]*)"\s+data-placeholder="(\w+)"', html)
    assert len(shown) >= 4 and placeholders, (shown, placeholders)
    assert re.findall(r"<title>(.*?)</title>", html) == [english["title"]]
    for key, text in shown:
        assert " ".join(text.split()) == english[key], key
    for text, key in placeholders:
        assert text == english[key], key


def open_page(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait(driver).until(page_is_ready)


def _box(driver: WebDriver, selector: str) -> dict[str, float]:
    """Where an element is drawn, in screenshot pixels (the window's width with it)."""
    box: dict[str, float] = driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect(), k = devicePixelRatio;"
        "return {left: r.left * k, right: r.right * k, middle: (r.top + r.bottom) / 2 * k, width: innerWidth * k}",
        selector,
    )
    return box


SCREENSHOT_ROW = """
const [png, y, done] = arguments;
const image = new Image();
image.onload = () => {
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [image.width, 1];
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, -y);
  done([...context.getImageData(0, 0, image.width, 1).data]);
};
image.onerror = () => done(null);
image.src = "data:image/png;base64," + png;
"""


def screenshot_row(driver: WebDriver, shot: Path, y: float) -> list[tuple[int, ...]]:
    """One row of a saved screenshot's pixels (RGB), decoded by the browser: there is no imaging
    library here, and the page's policy lets it read data: images."""
    data = driver.execute_async_script(SCREENSHOT_ROW, base64.b64encode(shot.read_bytes()).decode(), int(y))
    assert data, f"{shot} is not an image"
    return [tuple(data[x : x + 3]) for x in range(0, len(data), 4)]


def accent_in_screenshot(driver: WebDriver, shot: Path, selector: str) -> tuple[int, int, int]:
    """On the screenshot's row through the element's middle, the first and last x drawn in the accent
    blue (either theme's, at full strength), and the row's width."""
    row = screenshot_row(driver, shot, _box(driver, selector)["middle"])
    blue = [x for x, (r, _, b) in enumerate(row) if b > 200 and r < 120]
    assert blue, f"no accent blue on {shot.name}'s row through {selector}"
    return blue[0], blue[-1], len(row)


def test_the_page_in_arabic_reads_right_to_left_and_answers(browser: WebDriver, site: str) -> None:
    arabic = strings("ar")
    open_page(browser, f"{site}/static/chat.html?lang=en")
    ltr = _box(browser, "#ask")
    first, last, width = accent_in_screenshot(browser, screenshot(browser, "chat-english.png"), "#ask")
    assert first > width / 2, "in English the Ask button is drawn on the right"
    open_page(browser, f"{site}/static/chat.html?lang=ar")
    assert browser.execute_script("return [document.documentElement.lang, document.documentElement.dir]") == [
        "ar",
        "rtl",
    ]
    assert browser.title == arabic["title"]
    assert browser.find_element(By.ID, "ask").text == arabic["ask"]
    assert browser.find_element(By.ID, "intro").text == arabic["intro"]
    assert browser.find_element(By.ID, "question").get_attribute("placeholder") == arabic["placeholder"]
    rtl = _box(browser, "#ask")
    # The send button sits at the line's end: the right in English, the left in Arabic, both where
    # the page puts it and where the screenshot shows it.
    assert ltr["left"] > ltr["width"] / 2 and rtl["right"] < rtl["width"] / 2, (ltr, rtl)
    first, last, width = accent_in_screenshot(browser, screenshot(browser, "chat-arabic.png"), "#ask")
    assert last < width / 2, "in Arabic the Ask button is drawn on the left"
    ask_on_page(browser, "ما هذا؟")
    wait(browser, 30).until(lambda d: ending_of_last_turn(d) is not None)
    assert ending_of_last_turn(browser) == "workflow_complete"
    waited = arabic["waited"].split("{seconds}")[0]
    status = last_turn(browser, "status")
    assert status == "" or status.startswith(waited), status
    # The guest's own question, a blue bubble at the line's end: on the left in Arabic.
    shot = screenshot(browser, "chat-arabic-answer.png")
    first, last, width = accent_in_screenshot(browser, shot, ".turn:last-child .question")
    assert last < width / 2, "the question's bubble is drawn on the left"


def test_the_dark_theme_is_dark_and_the_light_one_light(browser: WebDriver, site: str) -> None:
    open_page(browser, f"{site}/static/chat.html?theme=dark")
    dark = background(browser)
    [dark_corner, *_] = screenshot_row(browser, screenshot(browser, "chat-dark.png"), 2)
    open_page(browser, f"{site}/static/chat.html?theme=light")
    light = background(browser)
    [light_corner, *_] = screenshot_row(browser, screenshot(browser, "chat-light.png"), 2)
    assert sum(dark) < 120 < 600 < sum(light), (dark, light)
    assert sum(dark_corner) < 120 < 600 < sum(light_corner), (dark_corner, light_corner)


def background(driver: WebDriver) -> list[int]:
    color: str = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    return [int(part) for part in re.findall(r"\d+", color)[:3]]


@contextmanager
def system_colors(driver: WebDriver, scheme: str) -> Iterator[None]:
    """The browser as on a system set to ``scheme`` (light or dark)."""

    def emulate(value: str) -> None:
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": value}]}
        )

    emulate(scheme)
    try:
        yield
    finally:
        emulate("")


def test_without_a_theme_the_page_follows_the_system_while_open(browser: WebDriver, site: str) -> None:
    with system_colors(browser, "dark"):
        open_page(browser, f"{site}/static/chat.html")
        assert sum(background(browser)) < 120
        with system_colors(browser, "light"):  # the system switches while the page is open
            wait(browser, 5).until(lambda d: sum(background(d)) > 600)
        # ?theme= wins over the system's colours.
        open_page(browser, f"{site}/static/chat.html?theme=light")
        assert sum(background(browser)) > 600


def test_a_line_name_is_shown_as_given_and_an_unknown_one_gets_the_servers_404(browser: WebDriver, site: str) -> None:
    name = "no$&such$'line"  # String.replace would read $& and $' as patterns
    open_page(browser, f"{site}/static/chat.html?line={quote(name)}")
    assert browser.find_element(By.ID, "line-name").text == strings("en")["line"].replace("{line}", name)
    ask_on_page(browser, "anyone there?")
    wait(browser).until(lambda d: ending_of_last_turn(d) == "rejected")
    # What the server answers at the line's address is what the page shows, in the page's words.
    lines = site.removesuffix("/guest") + "/lines"
    answer = httpx.post(f"{lines}/{quote(name, safe='')}/chat", json={"query": "anyone there?"})
    assert answer.status_code == 404 and answer.json()["code"] == "unknown_line", answer.text
    assert last_turn(browser, "error") == strings("en")["errors"]["unknown_line"]
    assert browser.find_element(By.ID, "ask").is_enabled()  # and the page goes on working


def test_the_line_parameter_asks_that_line(browser: WebDriver, tmp_path_factory: pytest.TempPathFactory) -> None:
    log_dir = tmp_path_factory.mktemp("browser-lines")
    config = log_dir / "guestqueue.toml"
    config.write_text("[lines.guest]\n[lines.side]\nupstream_interval_sec = 0\n")
    with guestqueue_process(log_dir, config=str(config)) as base:
        open_page(browser, f"{base}/static/chat.html?line=side")
        assert browser.find_element(By.ID, "line-name").text == strings("en")["line"].replace("{line}", "side")
        ask_on_page(browser, "Which line am I on?")
        wait(browser, 30).until(lambda d: ending_of_last_turn(d) is not None)
        assert ending_of_last_turn(browser) == "workflow_complete"
        lines = base.removesuffix("/guest") + "/lines"
        totals = [httpx.get(f"{lines}/{name}/queue/status").json()["total_requests"] for name in ("guest", "side")]
        assert totals == [0, 1]
        # The dashboard's line picker lists both lines and opens the one picked.
        browser.get(f"{base}/dashboard")
        wait(browser).until(lambda d: d.find_element(By.ID, "line-picker").is_displayed())
        options = browser.execute_script("return [...document.getElementById('line').options].map(o => o.value)")
        assert options == ["guest", "side"]
        browser.execute_script(
            "const s = document.getElementById('line'); s.value = 'side';s.dispatchEvent(new Event('change'))"
        )
        wait(browser).until(lambda d: d.current_url.endswith("/api/v1/lines/side/dashboard"))
        wait(browser).until(lambda d: d.find_element(By.ID, "completed_requests").text == "1")
        open_page(browser, f"{base}/static/chat.html?line=nosuch&lang=ar")
        ask_on_page(browser, "?")
        wait(browser).until(lambda d: last_turn(d, "error") != "")
        assert last_turn(browser, "error") == strings("ar")["errors"]["unknown_line"]


async def echo(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
    yield f"you asked: {request.query}"


async def test_a_copy_of_the_page_on_another_path_of_the_site(browser: WebDriver, tmp_path: Path) -> None:
    """The page copied into a site's own folders (with guestqueue.js and i18n/ next to it), on the
    origin that also serves the API: line= finds /api/v1/lines/NAME at the site's root; a missing
    language file falls back to English; with no strings at all the page says so and takes nothing."""
    help_dir, bare_dir = tmp_path / "help", tmp_path / "bare"
    for folder in (help_dir / "i18n", bare_dir):
        folder.mkdir(parents=True)
    for folder in (help_dir, bare_dir):
        for name in ("chat.html", "guestqueue.js"):
            shutil.copy(STATIC_DIR / name, folder / name)
    shutil.copy(STATIC_DIR / "i18n" / "en.json", help_dir / "i18n" / "en.json")  # no ar.json
    fast: dict[str, Any] = FAST
    app = create_app(Settings(**fast), workflow=echo)
    app.mount("/help", StaticFiles(directory=help_dir))
    app.mount("/bare", StaticFiles(directory=bare_dir))
    english = strings("en")

    def check(site: str) -> None:
        open_page(browser, f"{site}/help/chat.html?line=guest")
        ask_on_page(browser, "where am I?")
        wait(browser).until(lambda d: ending_of_last_turn(d) is not None)
        assert (ending_of_last_turn(browser), last_turn(browser, "answer")) == (
            "workflow_complete",
            "you asked: where am I?",
        )
        open_page(browser, f"{site}/help/chat.html?line=nosuch&lang=ar")
        assert browser.execute_script("return document.documentElement.dir") == "ltr"
        assert browser.find_element(By.ID, "ask").text == english["ask"]
        ask_on_page(browser, "?")
        wait(browser).until(lambda d: ending_of_last_turn(d) == "rejected")
        assert last_turn(browser, "error") == english["errors"]["unknown_line"]
        browser.get(f"{site}/bare/chat.html")
        wait(browser).until(lambda d: "could not load its text" in d.find_element(By.ID, "intro").text)
        assert "i18n/en.json: HTTP 404" in browser.find_element(By.ID, "intro").text
        assert not browser.find_element(By.ID, "ask").is_enabled()

    async with serve_app(app) as site:
        await asyncio.to_thread(check, site)


def test_the_checkout_examples_waiting_room_in_a_browser(browser: WebDriver, tmp_path: Path) -> None:
    """examples/checkout.py's page, in Chromium: it joins the line across origins (CORS), polls,
    is sent to the checkout with its token when admitted, and paying frees the place."""
    secret = "change-me-to-32-or-more-random-characters"
    shop_port = free_port()
    shop_origin = f"http://127.0.0.1:{shop_port}"
    config = tmp_path / "room.toml"
    config.write_text(
        '[lines.shop]\nmode = "admission"\nmax_active = 1\nbatch_size = 1\n'
        "process_interval_sec = 0.1\nsession_ttl_sec = 60\n"
    )
    with guestqueue_process(tmp_path, config=str(config), token_secret=secret, cors_origins=shop_origin) as base:
        queue = base.removesuffix("/api/v1/guest")
        env = {**os.environ, "GUEST_TOKEN_SECRET": secret, "GUESTQUEUE_URL": queue}
        shop = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.checkout:app",
                "--port",
                str(shop_port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            wait_for_http(f"{shop_origin}/")
            first = httpx.post(f"{queue}/api/v1/lines/shop/join").json()  # holds the one place for now
            browser.get(f"{shop_origin}/")
            wait(browser).until(lambda d: "Place 1" in d.find_element(By.ID, "place").text)
            httpx.post(f"{queue}/api/v1/lines/shop/sessions/{first['request_id']}/complete")
            wait(browser).until(lambda d: "/checkout" in d.current_url)
            assert browser.find_element(By.TAG_NAME, "h1").text == "Checkout"
            browser.find_element(By.TAG_NAME, "button").click()
            wait(browser).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Thank you!")
            status = httpx.get(f"{queue}/api/v1/lines/shop/queue/status").json()
            assert status["sessions"]["completed"] == 2 and status["sessions"]["sessions_active"] == 0
        finally:
            shop.terminate()
            shop.wait(10)


# --- Answers in Markdown (issue 22 point 1) -----------------------------------------------------

MARKDOWN = """## Opening hours

We are open **every day**; see [the map](https://example.com/map).

- Monday to Friday: 9 to 18
- Weekends: 10 to 16

| day | opens |
|---|---|
| Monday | 9 |
| Sunday | 10 |

```python
print("hello")
```
"""
HOSTILE = """<script>window.pwned = 1</script>

<img src=x onerror="window.pwned = 1"> and inline <b onmouseover="window.pwned = 1">html</b>

[click me](javascript:window.pwned=1) and <a href="javascript:window.pwned=1">raw</a>
"""
ANSWERS = {
    "markdown": MARKDOWN,
    "held": MARKDOWN,  # stops after its bold words until HELD is set
    "hostile": HOSTILE,
    "arabic": "## ساعات العمل\n\nنفتح **كل يوم**.\n\n- الاثنين: 9\n- الأحد: 10\n\n"
    '| اليوم | نفتح |\n|---|---|\n| الاثنين | 9 |\n\n```python\nprint("hello")\n```\n',
}


async def markdown_answers(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
    """The chosen answer, in small pieces a little apart: the page renders it while it streams."""
    text = ANSWERS[request.query]
    held = request.query == "held"
    for start in range(0, len(text), 12):
        await asyncio.sleep(0.04)
        yield text[start : start + 12]
        if held and "**every day**" in text[: start + 12]:
            held = False
            await asyncio.to_thread(HELD.wait, 30)


HELD = threading.Event()  # lets the "held" answer go on (a test's page checks it mid-stream first)


@contextmanager
def served_in_thread(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on an event loop in a thread of its own (for the synchronous browser
    tests); yields its guest API's base URL."""
    bases: list[str] = []
    stopped = threading.Event()

    async def run() -> None:
        async with serve_app(app) as base:
            bases.append(base)
            await asyncio.to_thread(stopped.wait)

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not bases:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.02)
    try:
        yield f"{bases[0]}/api/v1/guest"
    finally:
        stopped.set()
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def markdown_site() -> Iterator[str]:
    """An app answering with ANSWERS[question]."""
    fast: dict[str, Any] = FAST
    with served_in_thread(create_app(Settings(**fast), workflow=markdown_answers)) as base:
        yield base


def answer_html(driver: WebDriver, selector: str) -> int:
    count: int = driver.execute_script(
        "return document.querySelectorAll('.turn:last-child .answer ' + arguments[0]).length", selector
    )
    return count


def test_markdown_answer_renders_while_it_streams(browser: WebDriver, markdown_site: str) -> None:
    open_page(browser, f"{markdown_site}/static/chat.html?theme=light")
    HELD.clear()
    ask_on_page(browser, "held")
    # Bold shows as bold before the answer has finished.
    wait(browser).until(lambda d: answer_html(d, "strong") == 1)
    assert ending_of_last_turn(browser) is None, "the answer should still be streaming"
    HELD.set()
    wait(browser).until(lambda d: ending_of_last_turn(d) == "workflow_complete")
    assert answer_html(browser, "h2") == 1
    assert answer_html(browser, "ul > li") == 2
    assert answer_html(browser, "table th") == 2 and answer_html(browser, "table td") == 4
    assert (
        browser.execute_script("return document.querySelector('.turn:last-child .answer pre code').textContent")
        == 'print("hello")\n'
    )
    assert "**" not in last_turn(browser, "answer") and "```" not in last_turn(browser, "answer")
    link = browser.find_element(By.CSS_SELECTOR, ".turn:last-child .answer a")
    assert (link.get_attribute("href"), link.get_attribute("target"), link.get_attribute("rel")) == (
        "https://example.com/map",
        "_blank",
        "noopener noreferrer",
    )
    # The code block's copy button puts the code on the clipboard.
    origin = re.match(r"https?://[^/]+", markdown_site)
    assert origin
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": origin[0], "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    copy = browser.find_element(By.CSS_SELECTOR, ".turn:last-child .answer .code button.copy")
    assert copy.text == strings("en")["copy"]
    copy.click()
    wait(browser, 5).until(lambda d: copy.text == strings("en")["copied"])
    copied = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('failed: ' + e))"
    )
    assert copied == 'print("hello")\n'
    screenshot(browser, "chat-markdown-light.png")


def test_a_hostile_markdown_answer_runs_nothing(watched: WebDriver, markdown_site: str) -> None:
    open_page(watched, f"{markdown_site}/static/chat.html")
    ask_on_page(watched, "hostile")
    wait(watched).until(lambda d: ending_of_last_turn(d) == "workflow_complete")
    # Raw HTML is shown as the text it is, never made into elements.
    text = last_turn(watched, "answer")
    assert "<script>window.pwned = 1</script>" in text and '<img src=x onerror="window.pwned = 1">' in text
    for tag in ("script", "img", "b", "[onerror]", "[onmouseover]"):
        assert answer_html(watched, tag) == 0, tag
    links = watched.find_elements(By.CSS_SELECTOR, ".turn:last-child .answer a")
    assert [link.text for link in links] == ["click me"]
    assert links[0].get_attribute("href") is None
    links[0].click()
    time.sleep(0.3)
    assert watched.execute_script("return window.pwned") is None
    assert len(watched.window_handles) == 1
    assert watched.execute_script("return window.__cspViolations") == []


def test_markdown_in_arabic_and_in_the_dark_theme(browser: WebDriver, markdown_site: str) -> None:
    open_page(browser, f"{markdown_site}/static/chat.html?lang=ar&theme=light")
    ask_on_page(browser, "arabic")
    wait(browser).until(lambda d: ending_of_last_turn(d) == "workflow_complete")
    assert answer_html(browser, "strong") == 1 and answer_html(browser, "table td") == 2
    answer_dir, code_dir = browser.execute_script(
        "const a = document.querySelector('.turn:last-child .answer');"
        "return [getComputedStyle(a).direction, getComputedStyle(a.querySelector('pre')).direction]"
    )
    assert (answer_dir, code_dir) == ("rtl", "ltr"), "the answer reads right to left, its code left to right"
    assert browser.find_element(By.CSS_SELECTOR, ".answer button.copy").text == strings("ar")["copy"]
    screenshot(browser, "chat-markdown-arabic.png")

    open_page(browser, f"{markdown_site}/static/chat.html?theme=dark")
    ask_on_page(browser, "markdown")
    wait(browser).until(lambda d: ending_of_last_turn(d) == "workflow_complete")
    assert sum(background(browser)) < 120
    assert answer_html(browser, "pre code") == 1 and answer_html(browser, "table") == 1
    # The code block and the table are drawn in the dark theme's colours, not the light one's.
    code_background = browser.execute_script(
        "return getComputedStyle(document.querySelector('.turn:last-child .answer pre')).backgroundColor"
    )
    assert sum(int(part) for part in re.findall(r"\d+", code_background)[:3]) < 120, code_background
    screenshot(browser, "chat-markdown-dark.png")


# --- The favicon and the dark theme's Ask button (issue 22 point 2) ------------------------------


def relative_luminance(color: str) -> float:
    channels = [int(part) / 255 for part in re.findall(r"\d+", color)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    light, dark = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_pages_name_an_icon_that_exists(browser: WebDriver, site: str) -> None:
    """Without a <link rel=icon> the browser asks for /favicon.ico, and got a 404."""
    for url in (f"{site}/static/chat.html", f"{site}/dashboard"):
        browser.get(url)
        href = browser.execute_script("const l = document.querySelector('link[rel~=icon]'); return l && l.href")
        assert href, f"{url} names no icon"
        response = httpx.get(href)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/"), href


def test_the_dark_themes_ask_button_looks_enabled(browser: WebDriver, site: str) -> None:
    """White on the dark theme's light blue was 3.2:1, and read as a button turned off."""
    for theme in ("dark", "light"):
        open_page(browser, f"{site}/static/chat.html?theme={theme}")
        text, fill, opacity = browser.execute_script(
            "const s = getComputedStyle(document.getElementById('ask'));return [s.color, s.backgroundColor, s.opacity]"
        )
        assert float(opacity) == 1
        assert contrast(text, fill) >= 4.5, (theme, text, fill)


# --- The dashboard's chart axes, uptime and pacing (issue 22 point 3) ----------------------------

LONG_UP = """
const realFetch = window.fetch.bind(window);
window.fetch = async (url, init) => {
  if (String(url).includes("queue/status/stream")) throw new TypeError("stream blocked by the test");
  const response = await realFetch(url, init);
  if (!String(url).endsWith("queue/status")) return response;
  const body = { ...(await response.json()), uptime_sec: 1831 };
  return new Response(JSON.stringify(body), { status: response.status, headers: response.headers });
};
"""


def test_the_dashboard_labels_its_axes_says_uptime_in_minutes_and_explains_pacing(browser: WebDriver) -> None:
    """Once "up 1831 s", a chart without scales, and "Being answered 0 / 3" beside "Waiting 5" unexplained."""
    fast: dict[str, Any] = FAST
    settings = Settings(**{**fast, "upstream_interval_s": 2.0, "max_concurrent_requests": 3})
    with served_in_thread(create_app(settings, workflow=markdown_answers)) as site:
        try:
            browser.get(f"{site}/dashboard")
            wait(browser).until(lambda d: d.find_element(By.ID, "mode").text == "Live")
            browser.execute_script("""
                for (let i = 0; i < 3; i++) {
                  fetch("chat/simple", { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify({ query: "markdown" }) });
                }
            """)
            # One call started, two held back by the 2 s between starts, with two slots free. (A view
            # taken just as a start was due says no "next start": the next view, a second later, does.)
            explained = (
                r"\d waiting while \d of 3 slots are free: calls to the upstream are started a set time "
                r"apart .*: next start in [12] s\.$"
            )
            try:
                wait(browser, 10).until(lambda d: re.match(explained, d.find_element(By.ID, "pacing").text))
            except TimeoutException:
                raise AssertionError(browser.find_element(By.ID, "pacing").text) from None
            wait(browser, 15).until(lambda d: d.find_element(By.ID, "queue_size").text == "0")
            wait(browser, 5).until(lambda d: d.find_element(By.ID, "pacing").text == "")
            wait(browser, 5).until(lambda d: int(d.find_element(By.ID, "window").text) >= 4)
            # Counts on the left, time below.
            assert browser.find_element(By.ID, "y-zero").text == "0"
            assert browser.find_element(By.ID, "y-max").text == browser.find_element(By.ID, "max_y").text
            assert re.fullmatch(r"\u2212\d+ s", browser.find_element(By.ID, "x-start").text)
            assert browser.find_element(By.ID, "x-now").text == "now"
            screenshot(browser, "dashboard-axes.png")
            added = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": LONG_UP})
            try:
                browser.get(f"{site}/dashboard")
                wait(browser).until(lambda d: "questions so far" in d.find_element(By.ID, "updated").text)
                assert browser.find_element(By.ID, "updated").text.startswith("up 30 min, 3 questions so far")
            finally:
                browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]})
        finally:
            browser.get("about:blank")  # the status stream closed before the server stops
