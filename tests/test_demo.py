"""`anamnesis demo` end to end, and no patient text in any log line it produces."""

from __future__ import annotations

import os
import re
import subprocess
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
