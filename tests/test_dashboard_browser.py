"""The dashboard in real headless Chromium (Debian's, installed by the project's setup)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from anamnesis.storage.config import StorageConfig
from tests.processes import environment, free_port, running, wait_for
from tests.service_fixtures import installation, train_version

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Browser:
    """Headless Chromium driven through the DevTools protocol (what a person does: open, type, click)."""

    def __init__(self, profile: Path, *flags: str) -> None:
        self.port = free_port()
        self.events: list[dict[str, object]] = []
        """The DevTools events received so far (those of a domain enabled with `call("X.enable")`)."""
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                *FLAGS,
                *flags,
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        page = wait_for(self._page_target, 30, message="Chromium's DevTools endpoint")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.calls = 0

    def _page_target(self) -> dict[str, str] | None:
        try:
            targets = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
        except httpx.HTTPError:
            return None
        return next((t for t in targets if t.get("type") == "page"), None)

    def call(self, method: str, **params: object) -> dict[str, object]:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if "method" in message and "id" not in message:
                self.events.append(message)
            if message.get("id") == self.calls:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, *, until: str) -> str:
        """Navigates to `url` and waits until the page's text contains `until`; returns the text."""
        self.call("Page.navigate", url=url)
        return self.wait_for_text(until)

    def wait_for_text(self, until: str) -> str:
        return wait_for(
            lambda: (
                (text := str(self.evaluate("document.body ? document.body.innerText : ''"))) and until in text and text
            ),
            30,
            message=f"a page showing {until!r}",
        )

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def test_signing_in_to_the_dashboard_in_chromium(sqlite_config: StorageConfig, tmp_path: Path) -> None:
    engine, keys = installation(sqlite_config)
    train_version(engine, sqlite_config, period="2", seed=2)  # a second version: promoted or rejected
    engine.dispose()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running(
        ["serve", "--api-only", "--port", str(port)], environment(sqlite_config), tmp_path / "serve.log", port=port
    ):
        browser = Browser(tmp_path / "profile")
        try:
            login = browser.open(url, until="Sign in with an API key")
            assert "Version history" not in login
            browser.evaluate(f"document.getElementById('key').value = {json.dumps(keys.predict)}")
            browser.evaluate("document.getElementById('sign-in').click()")
            page = browser.wait_for_text("Version history")
            cookies = browser.call("Network.getCookies", urls=[url])["cookies"]
            dom = str(browser.evaluate("document.documentElement.outerHTML"))
            script_visible = browser.evaluate("document.cookie")
            shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        finally:
            browser.close()
    session = next(c for c in cookies if c["name"] == "anamnesis_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and not session["session"]
    assert script_visible == ""  # no script on the page can read the session
    assert "Current model" in page and "v1" in page and "v2" in page and "Recent jobs" in page
    assert 'id="current-version"' in dom and dom.count("data:image/png;base64,") >= 1
    assert "<script src=" not in dom and 'href="http' not in dom.replace(f'href="{url}', "")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.write_bytes(base64.b64decode(shot))
    assert screenshot.stat().st_size > 20_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_public_dashboard_in_chromium_shows_aggregates_and_no_reports(
    sqlite_config: StorageConfig, tmp_path: Path
) -> None:
    engine, _ = installation(sqlite_config)
    engine.dispose()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = environment(sqlite_config, dashboard_public="true")
    with running(["serve", "--api-only", "--port", str(port)], env, tmp_path / "serve.log", port=port):
        dom = wait_for(
            lambda: (
                (r := chromium("--dump-dom", url, profile=tmp_path / "p1")).returncode == 0
                and "Version history" in r.stdout
                and r.stdout
            ),
            60,
            message="the public dashboard",
        )
        report = chromium("--dump-dom", f"{url}reports/1", profile=tmp_path / "p2")
    assert 'id="public-view"' in dom and 'id="current-version"' in dom
    assert "/reports/" not in dom and "Sign in" in dom
    assert "Sign in with an API key" in report.stdout  # a report page asks to sign in first


CHECKED_NOTE = "Resectable early tumour in the left lobe;\nfollow-up in 4 weeks."


def test_checking_a_prediction_in_chromium(sqlite_config: StorageConfig, tmp_path: Path) -> None:
    """Sign in, paste a record, see the plan, its highlighted words and fields, the similar past patients
    and the version's calibration; a predict key's page shows no past patient's note; a bad field is named."""
    engine, keys = installation(sqlite_config)
    engine.dispose()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = environment(sqlite_config, explain_steps=8)
    with running(["serve", "--api-only", "--port", str(port)], env, tmp_path / "serve.log", port=port):
        browser = Browser(tmp_path / "profile")
        try:
            browser.open(f"{url}check", until="Sign in with an API key")
            browser.evaluate(f"document.getElementById('key').value = {json.dumps(keys.admin)}")
            browser.evaluate("document.getElementById('sign-in').click()")
            form = browser.wait_for_text("Clinical note")
            browser.evaluate(f"document.getElementById('note').value = {json.dumps(CHECKED_NOTE)}")
            browser.evaluate("document.getElementById('field.age').value = '67'")
            browser.evaluate("document.getElementById('field.sex').value = 'F'")
            browser.evaluate("document.getElementById('check').click()")
            page = browser.wait_for_text("Similar past patients")
            shown_note = browser.evaluate("document.getElementById('note-explained').innerText")
            words = browser.evaluate(
                "[...document.querySelectorAll('#note-explained span.w')]"
                ".map(s => [s.textContent, Number(s.dataset.attribution), s.style.backgroundColor])"
            )
            fields = browser.evaluate(
                "[...document.querySelectorAll('#field-attributions tr')].slice(1).map(r => r.cells[0].textContent)"
            )
            neighbours = browser.evaluate(
                "[...document.querySelectorAll('#neighbours-table tr')].slice(1).map(r => r.cells.length)"
            )
            shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        finally:
            browser.close()

        # The same page for a predict key (cookie from the sign-in form), and a field the form cannot take.
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/login", data={"key": keys.predict, "next": "/check"})
            predict_page = client.post("/check", data={"note": CHECKED_NOTE, "field.age": "67", "neighbours": "3"})
            bad = client.post("/check", data={"note": CHECKED_NOTE, "field.age": "two hundred", "neighbours": "3"})
            signed_out = httpx.post(f"{url}check", data={"note": CHECKED_NOTE}, follow_redirects=False)

    assert "Clinical note" in form and "age" in form and "sex" in form
    assert "Predicted plan" in page and any(label in page for label in ("surgery", "radiotherapy", "targeted_therapy"))
    assert "Calibration: T=" in page and "within tolerance" in page
    assert shown_note == CHECKED_NOTE  # the whole note, in order, with the words it read highlighted
    assert [w[0] for w in words] == re.findall(r"\w+|[^\w\s]", CHECKED_NOTE)  # words and punctuation, all read
    assert all(isinstance(w[1], float) and w[2].startswith("rgba(") for w in words)
    strongest = max(words, key=lambda w: abs(w[1]))
    assert strongest[2].endswith("0.7)")  # the strongest word is fully coloured
    assert set(fields) == {"age", "sex"}
    assert neighbours and all(cells == 7 for cells in neighbours)  # an admin sees each neighbour's record and note

    assert predict_page.status_code == 200 and "Predicted plan" in predict_page.text
    assert "<th>note</th>" not in predict_page.text and "shown to admin keys only" in predict_page.text
    assert "note 1-" not in predict_page.text  # no toy training note (each begins "note <seed>-<i>:")
    assert bad.status_code == 422 and "fields.age:" in bad.text and "Predicted plan" not in bad.text
    assert "two hundred" not in bad.text.split('id="check-form"')[0]  # the problem names the field, not the value
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login?next=/check"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "check-a-prediction.png"
    screenshot.write_bytes(base64.b64decode(shot))
    assert screenshot.stat().st_size > 20_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
