"""The dashboard in real headless Chromium (Debian's, installed by the project's setup)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_dashboard_renders_in_chromium_with_history_and_plots(sqlite_config: StorageConfig, tmp_path: Path) -> None:
    engine, _ = installation(sqlite_config)
    train_version(engine, sqlite_config, period="2", seed=2)  # a second version: promoted or rejected
    engine.dispose()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running(
        ["serve", "--api-only", "--port", str(port)], environment(sqlite_config), tmp_path / "serve.log", port=port
    ):
        dom = wait_for(
            lambda: (
                (r := chromium("--dump-dom", url, profile=tmp_path / "p1")).returncode == 0
                and "Version history" in r.stdout
                and r.stdout
            ),
            60,
            message="the rendered dashboard",
        )
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "dashboard.png"
        screenshot.unlink(missing_ok=True)
        shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,2200", url, profile=tmp_path / "p2")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert "Current model" in dom and 'id="current-version"' in dom
    assert "v1" in dom and "v2" in dom  # both versions in the history table
    assert dom.count("data:image/png;base64,") >= 1  # the accuracy plot is inline
    assert "Recent jobs" in dom and "Drift" in dom
    # Nothing is loaded from elsewhere: no external scripts, styles or images.
    assert "<script src=" not in dom and 'href="http' not in dom.replace(f'href="{url}', "")
    assert screenshot.exists() and screenshot.stat().st_size > 20_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
