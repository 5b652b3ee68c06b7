"""`anamnesis bench policy` on a tiny model: every policy replays the same stream from the same version 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anamnesis.cohort import generate
from anamnesis.monitor.config import PolicyConfig
from anamnesis.service.bench_policy import (
    Policy,
    ReplayStream,
    merge_seeds,
    replay_settings,
    run_seed,
    summarize,
    write_results,
)
from anamnesis.storage.ingest import ColumnMapping
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
        ReplayStream.of_cohort(stream),
        policies,
        work=tmp_path,
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
    paths = write_results({"commands": ["test"], "setup": "tiny", "per_seed": [result], "summary": summary}, tmp_path)
    assert "| drift-triggered |" in paths[1].read_text() and paths[2].stat().st_size > 0


def test_a_file_is_replayed_in_time_order_in_periods_of_equal_size(tmp_path: Path) -> None:
    frame = generate(scenario="covariate", periods=3, per_period=40, seed=1).frame
    path = tmp_path / "stream.csv"
    frame.sample(frac=1.0, random_state=0).to_csv(path, index=False)  # rows out of time order
    mapping = ColumnMapping(
        text="note", label="label", time="observed_at", site="site", patient="patient_id", exclude=("period",)
    )
    stream = ReplayStream.of_file(path, mapping=mapping, periods=4, seed=7)
    assert [len(records) for records in stream.periods.values()] == [30, 30, 30, 30]
    moments = [record.observed_at for period in "1234" for record in stream.periods[period]]
    assert moments == sorted(moments)
    assert all(record.period == period for period, records in stream.periods.items() for record in records)
    assert all("period" not in record.fields for records in stream.periods.values() for record in records)
    assert stream.per_period == 30 and stream.drift_starts is None
    with pytest.raises(ValueError, match="the oracle needs the periods where drift starts"):
        run_seed(stream, [Policy.parse("oracle")], work=tmp_path / "work", progress=print)
    with pytest.raises(ValueError, match="a time column"):
        ReplayStream.of_file(path, mapping=ColumnMapping(text="note", label="label"), periods=4, seed=7)
    with pytest.raises(ValueError, match="too few for 100 periods"):
        ReplayStream.of_file(path, mapping=mapping, periods=100, seed=7)


def _bench_policy(*options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "anamnesis.service.cli", "bench", "policy", *options]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def test_the_command_refuses_an_oracle_without_ground_truth_and_a_merge_of_another_stream(tmp_path: Path) -> None:
    path = tmp_path / "stream.csv"
    generate(scenario="covariate", periods=2, per_period=40, seed=1).frame.to_csv(path, index=False)
    common = ["--work", str(tmp_path / "work"), "--out", str(tmp_path), "--periods", "4", "--seeds", "0"]
    data = ["--data", str(path), "--patient-col", "patient_id", "--exclude", "period"]
    oracle = _bench_policy(*common, *data, "--policies", "never,oracle")
    assert oracle.returncode != 0 and "Traceback" not in oracle.stderr
    assert "the oracle needs the periods where drift starts, which stream.csv does not give" in oracle.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"stream_config": {"stream": "cohort mixed"}, "per_seed": []}))
    merged = _bench_policy(*common, *data, "--policies", "never", "--merge", str(other))
    assert merged.returncode != 0 and "--merge: other.json holds another stream" in merged.stderr
    assert not (tmp_path / "policy.json").exists()


def test_a_drift_variant_changes_only_its_settings_and_merges_beside_the_seeds_of_earlier_runs() -> None:
    variant = Policy.parse("drift:severity=0.5/min_labels=50")
    assert variant.name == "drift-triggered (severity 0.5, min_labels 50)"
    settings = replay_settings(Path("/tmp/unused"), per_period=300, overrides={})
    tuned = variant.applied_to(settings)
    assert set(tuned.policy.severity_thresholds.values()) == {0.5}
    assert set(tuned.policy.severity_thresholds) == set(settings.policy.severity_thresholds)
    assert tuned.drift.performance.min_labels == 50 and tuned.drift.min_rows == settings.drift.min_rows
    assert settings.drift.performance.min_labels == 200  # the defaults are untouched
    assert Policy.parse("drift").applied_to(settings) == settings
    for wrong in ("drift:severity=2", "drift:min_labels=0", "drift:speed=1", "drift:severity"):
        with pytest.raises(ValueError):
            Policy.parse(wrong)

    def seed(number: int, *names: str) -> dict[str, object]:
        run = {"mean_accuracy": 0.5, "accuracy": {"2": 0.5}, "updates": 1, "training_s": 10.0}
        return {"seed": number, "policies": {name: dict(run) for name in names}}

    earlier = [seed(0, "never", "every period", "drift-triggered")]
    merged = merge_seeds(merge_seeds(earlier, seed(0, variant.name)), seed(1, "never", "every period"))
    assert [list(entry["policies"]) for entry in merged] == [
        ["never", "every period", "drift-triggered", variant.name],
        ["never", "every period"],
    ]
    assert list(earlier[0]["policies"]) == ["never", "every period", "drift-triggered"]  # not mutated
    with pytest.raises(ValueError, match="seed 0 already holds never"):
        merge_seeds(merged, seed(0, "never"))
    summary = summarize(merged)
    assert summary["policies"]["never"]["seeds"] == [0, 1] and summary["policies"][variant.name]["seeds"] == [0]
    assert len(summary["targets"][0]["measured"]["values"]) == 1  # only seed 0 ran all three
