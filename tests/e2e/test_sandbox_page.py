"""The sandbox's web page in a real browser: Debian's chromium, driven by Playwright.

A mention written from the page's composer gets the bot's answer streamed into the page,
a slash command picked from the page's suggestions is answered, and a kill -9 from the
health panel is survived (the panel shows the new pid and the restart, the chat and the
timeline show the crash and the recovery, and the bot answers again).

Screenshots go to the test's temp dir; with UPDATE_SCREENSHOTS=1 they also replace
docs/screenshots/*.png, which the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.harness import ROOT, wait_for
from tests.support.sandbox import Sandbox

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements.txt"
)
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium (.ci/run does)"
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path_factory.mktemp("page"))  # the default services.toml
    try:
        sandbox.wait_all_running(30)
        sandbox.wait_connected()
        # Stream answers slowly enough to watch them grow.
        llm = sandbox.state["llm_url"].removesuffix("/v1")
        req = urllib.request.Request(
            f"{llm}/_control/settings", json.dumps({"token_delay_s": 0.03}).encode(), method="POST"
        )
        urllib.request.urlopen(req, timeout=5).close()
        yield sandbox
    finally:
        sandbox.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(box: Sandbox, browser: sync_api.Browser) -> Iterator[sync_api.Page]:
    """A fresh tab on the sandbox's page, as a person opens it."""
    tab = browser.new_page(viewport={"width": 1600, "height": 900})
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        tab.goto(f"http://127.0.0.1:{box.port}/")
        tab.wait_for_selector("#live.on", timeout=WAIT_MS)
        tab.wait_for_selector('.channel.active[data-name="general"]', timeout=WAIT_MS)
        yield tab
        assert errors == [], f"the page's script failed: {errors}"
    finally:
        tab.close()


def supervisor_says(box: Sandbox, name: str) -> dict:
    """The service's status from the supervisor's control socket (`run.py status`), asked
    on a thread of its own: Playwright's event loop runs on this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(box.service, name).result()


def shoot(page: sync_api.Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)


def mention_the_bot(page: sync_api.Page, text: str) -> None:
    """As a person would: type @, pick the bot from the suggestions, write, Enter."""
    page.click("#input")
    page.keyboard.type("@sand")
    page.wait_for_selector('.suggestion.selected[data-username="sandbox-bot"]', timeout=WAIT_MS)
    page.keyboard.press("Enter")
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def bot_answers(page: sync_api.Page) -> list[dict]:
    return page.eval_on_selector_all(
        '#messages .msg[data-bot="true"]',
        "ns => ns.map(n => ({id: n.dataset.id, updates: +n.dataset.updates,"
        " text: (n.querySelector('.content') || {}).textContent || ''}))",
    )


def test_a_mention_from_the_page_gets_its_answer_streamed_into_the_page(
    box: Sandbox, page: sync_api.Page, tmp_path: Path
) -> None:
    mention_the_bot(page, "what does a supervisor do? !long 800")
    bot = box.state["bot_user_id"]
    content = f"<@{bot}> what does a supervisor do? !long 800"  # the name became an id
    sent = wait_for(lambda: next((m for m in box.messages() if m["content"] == content), None), 10)
    assert sent["author_id"] == box.users["alice"]
    page.wait_for_selector('.msg[data-author="alice"] .mention >> text=@sandbox-bot')
    # The answer appears, then grows in place as the bot edits it (each edit reaches the
    # page as it happens), until it is complete.
    page.wait_for_function(
        """() => [...document.querySelectorAll('#messages .msg[data-bot="true"]')]
            .some(n => +n.dataset.updates >= 2 && n.querySelector('pre'))""",
        timeout=WAIT_MS,
    )
    final = wait_for(
        lambda: next(
            (
                m
                for m in box.bot_messages()
                if m["reply_to_id"] == sent["id"] and len(m["content"]) >= 750
            ),
            None,
        ),
        20,
        "the whole answer",
    )
    page.wait_for_function(
        f"""() => {{
            const n = document.querySelector('#messages .msg[data-id="{final["id"]}"] .content');
            return n && n.textContent.length >= 700;
        }}""",
        timeout=WAIT_MS,
    )
    (answer,) = [a for a in bot_answers(page) if a["id"] == final["id"]]
    assert answer["updates"] >= 2
    assert "Sentence 0 of the long sandbox answer" in answer["text"]
    page.wait_for_timeout(1700)  # the streaming cursor goes once the edits stop
    shoot(page, tmp_path, "sandbox-chat.png")

    # A slash command, picked from the suggestions the page offers as one types.
    page.click("#input")
    page.keyboard.type("/stat")
    page.wait_for_selector('.suggestion[data-command="status"]', timeout=WAIT_MS)
    page.click('.suggestion[data-command="status"]')
    page.wait_for_selector("#command-form .command-chip >> text=/status")
    page.click("#send")
    page.wait_for_selector(".msg .used >> text=/status", timeout=WAIT_MS)
    page.wait_for_selector('.msg.ephemeral .embed-title >> text="Healthy"', timeout=WAIT_MS)


def test_killing_llm_from_the_page_is_survived_and_shown(
    box: Sandbox, page: sync_api.Page, tmp_path: Path
) -> None:
    row = 'tr[data-service="llm"]'
    page.wait_for_selector(f"{row} .state >> text=RUNNING", timeout=WAIT_MS)
    old_pid = page.inner_text(f"{row} .pid")
    assert old_pid == str(supervisor_says(box, "llm")["pid"])
    restarts = int(page.inner_text(f"{row} .restarts"))
    assert restarts == supervisor_says(box, "llm")["restarts"]
    box.say("anyone around?", user="bob")
    page.click(f"{row} .kill")
    box.say("messages keep arriving while llm restarts", user="bob")  # and are shown
    page.wait_for_selector('.msg[data-author="bob"] >> text=keep arriving', timeout=WAIT_MS)
    # The panel shows the new process, the restart, and the crash and recovery.
    page.wait_for_function(
        f"""() => {{
            const row = document.querySelector('{row}');
            return row.querySelector('.pid').textContent !== '{old_pid}'
                && row.querySelector('.pid').textContent !== '\\u2013'  // not the dash of no pid
                && row.querySelector('.state').textContent === 'RUNNING'
                && row.querySelector('.restarts').textContent === '{restarts + 1}';
        }}""",
        timeout=WAIT_MS,
    )
    status = supervisor_says(box, "llm")
    assert page.inner_text(f"{row} .pid") == str(status["pid"]) != old_pid
    assert status["restarts"] == restarts + 1 and status["last_exit"] == "killed by SIGKILL"
    page.wait_for_selector('#event-log li.crash[data-service="llm"] >> text=killed by SIGKILL')
    page.wait_for_selector('#event-log li.back[data-service="llm"]')
    page.wait_for_selector('#messages .notice.back[data-service="llm"]')
    # And it answers again.
    mention_the_bot(page, "still there?")
    page.wait_for_function(
        """() => [...document.querySelectorAll('#messages .msg[data-bot="true"] .content')]
            .some(n => n.textContent.includes('still there?'))""",
        timeout=WAIT_MS,
    )
    page.wait_for_timeout(1700)
    shoot(page, tmp_path, "sandbox-kill.png")
    # The heartbeat's status embed in #admin, rendered.
    page.click('.channel[data-name="admin"]')
    page.wait_for_selector("#messages .embed .embed-title", timeout=WAIT_MS)
    shoot(page, tmp_path, "sandbox-admin.png")
