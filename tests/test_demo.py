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
# Four periods: the new class of `mixed` arrives in the last, with enough labels (3.8% of 200) to
# trigger an update; the covariate drift before it is flagged below the update limit.
PERIODS, PER_PERIOD, HISTORY, SEED = 4, 200, 300, 4


def _fragments(text: str, size: int = 30) -> set[str]:
    """Runs of words long enough to identify a note, short enough to catch partial leaks."""
    words = text.split()
    return {
        " ".join(words[i : i + 6])
        for i in range(0, max(len(words) - 5, 1), 3)
        if len(" ".join(words[i : i + 6])) >= size
    }


def test_demo_detects_drift_updates_the_model_and_logs_no_patient_text(tmp_path: Path) -> None:
    home = tmp_path / "demo"
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
    result = subprocess.run(
        [
            ANAMNESIS,
            "demo",
            "--periods",
            str(PERIODS),
            "--per-period",
            str(PER_PERIOD),
            "--history",
            str(HISTORY),
            "--seed",
            str(SEED),
            "--home",
            str(home),
            "--port",
            str(free_port()),
            "--no-keep-running",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "version 1 trained" in output and "gate: " in output
    assert output.count("drift check:") == PERIODS - 1
    assert re.search(r"report \d+: (drift in|no drift)", output)
    assert "update: model version" in output  # the worker trained at least one update and gated it
    assert re.search(r"versions: v1 \w+, v2 \w+", output)
    serve_log = (home / "serve.log").read_text()
    assert "serving model version 1" in serve_log
    notes = generate("mixed", periods=PERIODS, per_period=max(HISTORY, PER_PERIOD), seed=SEED).frame.note
    fragments = set().union(*(_fragments(note) for note in notes))
    logs = output + serve_log
    leaked = [fragment for fragment in fragments if fragment in logs]
    assert leaked == []
    assert "MRN-" not in logs  # patient references neither


def _demo(home: Path, port: int) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANAMNESIS_")}
    env.update(
        {
            "ANAMNESIS_TRAINING__EPOCHS": "1",
            "ANAMNESIS_TRAINING__MIN_STEPS": "1",
            "ANAMNESIS_TRAINING__MAX_LENGTH": "32",
            "ANAMNESIS_MAX_LENGTH": "32",
            "PYTHONUNBUFFERED": "1",
        }
    )
    command = [ANAMNESIS, "demo", "--periods", "2", "--per-period", "40", "--history", "40"]
    command += ["--home", str(home), "--port", str(port)]
    return subprocess.Popen(  # the demo's own session: the signal reaches the demo alone, as from `kill`
        command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def test_a_terminated_demo_ends_its_service_and_a_busy_port_or_home_is_refused(tmp_path: Path) -> None:
    home, port = tmp_path / "demo", free_port()
    demo = _demo(home, port)
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:  # keeps running after the replay (no --no-keep-running)
        seen.append(line)
        if "the service keeps running" in line:
            break
    assert any("the service keeps running" in line for line in seen), "".join(seen)[-3000:]
    demo_pid, server_pid = (int(word) for word in (home / "demo.pid").read_text().split())
    assert demo_pid == demo.pid
    os.kill(server_pid, 0)  # the service runs

    # A second demo on the same home or port refuses before deleting anything.
    for other_home, other_port in ((home, free_port()), (tmp_path / "other", port)):
        finished = subprocess.run(
            [ANAMNESIS, "demo", "--home", str(other_home), "--port", str(other_port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert finished.returncode == 1 and "Traceback" not in finished.stderr
        assert ("still running in" if other_home == home else f"port {port} is in use") in finished.stderr
    assert (home / "anamnesis.db").exists() and not (tmp_path / "other").exists()

    demo.send_signal(signal.SIGTERM)  # as `kill` would; closing the terminal sends SIGHUP, handled alike
    demo.wait(timeout=90)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _alive(server_pid):
        time.sleep(0.5)
    assert not _alive(server_pid), "the demo's service outlived it"
    assert not (home / "demo.pid").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
