"""`anamnesis bench policy` on a tiny model: every policy replays the same stream from the same version 1."""

from __future__ import annotations

from pathlib import Path

from anamnesis.cohort import generate
from anamnesis.monitor.config import PolicyConfig
from anamnesis.service.bench_policy import Policy, run_seed, summarize, write_results
from tests.factories import MECHANICS_GATE
from tests.service_fixtures import tiny

TINY = {
    "max_length": 32,
    "training": {"max_length": 32, "epochs": 2, "batch_size": 16, "learning_rate": 2e-3, "min_steps": 0},
    "gate": MECHANICS_GATE,
    "policy": PolicyConfig(cooldown="PT0S", max_model_age=None, min_new_labels=50),
}


def test_policies_replay_the_same_stream_prequentially_and_report_their_targets(tmp_path: Path) -> None:
    stream = generate(scenario="mixed", periods=3, per_period=60, seed=3)
    policies = [Policy.parse(text) for text in ("never", "every", "every:2", "labels:100", "drift", "oracle")]
    lines: list[str] = []
    result = run_seed(
        stream,
        policies,
        work=tmp_path,
        per_period=60,
        progress=lines.append,
        settings_overrides=TINY,
        new_bundle=tiny,
    )
    runs = result["policies"]
    assert list(runs) == ["never", "every period", "every 2 periods", "100 new labels", "drift-triggered", "oracle"]
    assert all(set(run["accuracy"]) == {"2", "3"} for run in runs.values())
    assert runs["never"]["updates"] == 0 and runs["never"]["training_s"] == 0
    assert [u["period"] for u in runs["every period"]["update_log"]] == [2, 3]
    assert [u["period"] for u in runs["every 2 periods"]["update_log"]] == [3]
    assert [u["period"] for u in runs["100 new labels"]["update_log"]] == [3]  # 120 labels by then
    assert [u["period"] for u in runs["oracle"]["update_log"]] == result["drift_starts"] == [2, 3]
    assert all(u["status"] == "succeeded" and u["seconds"] > 0 for u in runs["every period"]["update_log"])
    # The same version 1 answers period 2 under every policy: nothing has updated yet.
    assert len({run["accuracy"]["2"] for run in runs.values()}) == 1
    checks = runs["drift-triggered"]["drift_checks"]
    assert [c["period"] for c in checks] == [2, 3] and "detection_delay" in runs["drift-triggered"]
    assert not list(tmp_path.glob("every*"))  # each policy's installation is removed after its run

    summary = summarize([result])
    assert [t["target"].split()[0] for t in summary["targets"]] == ["drift-triggered", "at", "ahead"]
    paths = write_results({"command": "test", "setup": "tiny", "per_seed": [result], "summary": summary}, tmp_path)
    assert "| drift-triggered |" in paths[1].read_text() and paths[2].stat().st_size > 0
