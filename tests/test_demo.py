"""`anamnesis demo` end to end, and no patient text in any log line it produces."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from anamnesis.cohort import generate
from tests.processes import ANAMNESIS, free_port

pytestmark = pytest.mark.slow
# Four periods: the new site of period 2 is flagged as drift, which triggers an update; the new class of
# `mixed` arrives in the last, with enough labels (3.8% of 200) to trigger another.
PERIODS, PER_PERIOD, HISTORY, SEED = 4, 200, 300, 4


def _fragments(text: str, size: int = 30) -> set[str]:
    """Runs of words long enough to identify a note, short enough to catch partial leaks."""
    words = text.split()
    return {
        " ".join(words[i : i + 6])
        for i in range(0, max(len(words) - 5, 1), 3)
        if len(" ".join(words[i : i + 6])) >= size
    }


def test_demo_detects_drift_updates_the_model_owns_its_service_and_logs_no_patient_text(tmp_path: Path) -> None:
    home, port = tmp_path / "demo", free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANAMNESIS_")}
    env.update(
        {
            "ANAMNESIS_TRAINING__EPOCHS": "2",
            "ANAMNESIS_TRAINING__MIN_STEPS": "30",
            "ANAMNESIS_TRAINING__MAX_LENGTH": "96",
            "ANAMNESIS_MAX_LENGTH": "96",
            "PYTHONUNBUFFERED": "1",
        }
    )
    options = ["--periods", str(PERIODS), "--per-period", str(PER_PERIOD), "--history", str(HISTORY)]
    options += ["--seed", str(SEED), "--home", str(home), "--port", str(port)]
    # The demo keeps its service running at the end, as a user runs it; its own session, so the
    # signal below reaches the demo alone, as from `kill`.
    demo = subprocess.Popen(
        [ANAMNESIS, "demo", *options],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if "the service keeps running" in line:
                break
        output = "".join(lines)
        assert "the service keeps running" in output, output[-4000:]
        assert "version 1 trained" in output and "gate: " in output
        assert output.count("drift check:") == PERIODS - 1
        assert re.search(r"report \d+: (drift in|no drift)", output)
        assert "update: model version" in output  # the worker trained at least one update and gated it
        assert re.search(r"period 4: [\d.]+% correct; update job \d+: model version \d+", output)
        assert re.search(r"versions: v1 \w+, v2 \w+", output)
        demo_pid, server_pid = (int(word) for word in (home / "demo.pid").read_text().split())
        assert demo_pid == demo.pid and _alive(server_pid)

        # A second demo on the same home or port refuses before deleting anything.
        for other_home, other_port in ((home, free_port()), (tmp_path / "other", port)):
            refused = subprocess.run(
                [ANAMNESIS, "demo", "--home", str(other_home), "--port", str(other_port)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
            assert ("still running in" if other_home == home else f"port {port} is in use") in refused.stderr
        assert (home / "anamnesis.db").exists() and not (tmp_path / "other").exists()
    finally:
        demo.send_signal(signal.SIGTERM)  # closing the terminal sends SIGHUP, handled alike
        rest, _ = demo.communicate(timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _alive(server_pid):
        time.sleep(0.5)
    assert not _alive(server_pid), "the demo's service outlived it"
    assert not (home / "demo.pid").exists()

    serve_log = (home / "serve.log").read_text()
    assert "serving model version 1" in serve_log
    notes = generate("mixed", periods=PERIODS, per_period=max(HISTORY, PER_PERIOD), seed=SEED).frame.note
    fragments = set().union(*(_fragments(note) for note in notes))
    logs = output + rest + serve_log
    leaked = [fragment for fragment in fragments if fragment in logs]
    assert leaked == []
    assert "MRN-" not in logs  # patient references neither


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
