"""The learner learns what it is shown, and `bench learn` measures it against a bag-of-words reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from anamnesis.cohort import Scenario, generate, write_stream
from anamnesis.learner.benchmark import cohort_records, make_stream, read_records, run_reference, run_strategy
from anamnesis.learner.config import LearnerConfig, TrainingConfig, preset
from anamnesis.learner.modeling import tiny_classifier
from anamnesis.storage.ingest import ColumnMapping

ROOT = Path(__file__).resolve().parent.parent


def _tiny(labels, spec):
    return tiny_classifier(labels, spec, seed=0)


def test_naive_learns_every_period_of_a_class_incremental_stream() -> None:
    """Each period brings only new classes; the model must learn the period it was just trained on.

    Forgetting the old classes is expected of naive; failing to learn the new ones is a defect: new
    head rows that start identical never separate, and a few dozen steps on a small experience
    leave the from-scratch layers where they started (the model then predicts each period's
    majority class). The tiny BERT shows both like MiniLM does (docs/benchmarks/learn_class_incremental.md).
    """
    records = cohort_records("stable", periods=1, per_period=600, seed=5)
    stream = make_stream(records, holdout_fraction=0.3, name="class-incremental", class_incremental=3)
    assert all(
        not set(stream.describe()["labels_per_period"][a]) & set(stream.describe()["labels_per_period"][b])
        for a in stream.periods
        for b in stream.periods
        if a != b
    )
    config = LearnerConfig(strategy=preset("naive"), training=TrainingConfig(max_length=32, seed=0))
    result = run_strategy(stream, config, new_bundle=_tiny, progress=lambda _: None)
    reference = run_reference(stream, progress=lambda _: None)
    for period in stream.periods:
        learned, bag_of_words = result["just_trained"][period], reference["alone_per_period"][period]
        assert learned >= 0.8 * bag_of_words, (period, learned, bag_of_words)


def test_bench_learn_writes_seeds_intervals_and_the_tfidf_row(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "anamnesis.service.cli",
        "bench",
        "learn",
        "--model",
        "tiny",
        "--scenario",
        "mixed",
        "--periods",
        "2",
        "--per-period",
        "80",
        "--seeds",
        "0,1",
        "--strategies",
        "naive,replay_ewc_distill,joint",
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--class-weighting",
        "balanced",
        "--replay-ratio",
        "1.0",
        "--out",
        str(tmp_path),
    ]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads((tmp_path / "learn.json").read_text())
    assert result["training"]["class_weighting"] == "balanced"
    strategy = result["per_seed"]["0"]["strategies"]["replay_ewc_distill"]["strategy"]
    assert strategy["replay"]["ratio"] == 1.0 and strategy["distillation"]["weight"] == 1.0
    assert result["seeds"] == [0, 1] and set(result["per_seed"]) == {"0", "1"}
    assert list(result["summary"]) == ["tfidf", "naive", "replay_ewc_distill", "joint"]
    agreement = result["summary"]["replay_ewc_distill"]["agreement_with_previous"]
    flips = result["summary"]["replay_ewc_distill"]["negative_flips"]
    assert len(agreement["values"]) == 2 and all(0 <= v <= 1 for v in agreement["values"] + flips["values"])
    accuracy = result["summary"]["joint"]["final_average_accuracy"]
    assert len(accuracy["values"]) == 2 and accuracy["half_width"] is not None
    table = (tmp_path / "learn.md").read_text()
    assert "| tfidf |" in table and " ± " in table and "seeds 0, 1" in table
    assert "split by patient" in table
    assert any(line.startswith("NOT met") or line.startswith("met") for line in finished.stdout.splitlines())
    assert (tmp_path / "learn_accuracy.png").stat().st_size > 1000
    assert "negative flips" in table

    # A third seed of two of the strategies merged into the first two seeds: every figure over the three,
    # both commands listed.
    more = [*command[: command.index("--seeds") + 1], "2", *command[command.index("--seeds") + 2 :]]
    more[more.index("--strategies") + 1] = "replay_ewc_distill,joint"
    merged = subprocess.run(
        [*more, "--merge", str(tmp_path / "learn.json"), "--stem", "merged"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert merged.returncode == 0, merged.stderr[-2000:]
    result = json.loads((tmp_path / "merged.json").read_text())
    assert result["seeds"] == [0, 1, 2] and list(result["summary"]) == ["tfidf", "replay_ewc_distill", "joint"]
    assert len(result["summary"]["joint"]["final_average_accuracy"]["values"]) == 3
    assert len(result["commands"]) == 2 and "--merge" in result["commands"][1]
    assert "seeds 0, 1, 2" in (tmp_path / "merged.md").read_text()
    # Another experiment is refused, naming what differs, and writes nothing.
    other = [*more[: more.index("--epochs") + 1], "2", *more[more.index("--epochs") + 2 :]]
    refused = subprocess.run(
        [*other, "--merge", str(tmp_path / "learn.json"), "--stem", "refused"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert refused.returncode != 0 and "--merge: the earlier result has another training" in refused.stderr
    assert not (tmp_path / "refused.json").exists()


def test_bench_learn_refuses_an_unknown_replay_source_naming_the_option(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "anamnesis.service.cli", "bench", "learn", "--replay-source", "tape"]
    command += ["--out", str(tmp_path)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert finished.returncode != 0
    assert "--replay-source must be one of history, buffer" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (tmp_path / "learn.json").exists()


def test_a_cohort_in_memory_gives_the_records_its_parquet_file_gives(tmp_path: Path) -> None:
    direct = cohort_records(Scenario.mixed, periods=2, per_period=150, seed=4)
    written = write_stream(generate(Scenario.mixed, periods=2, per_period=150, seed=4), tmp_path / "cohort.parquet")
    mapping = ColumnMapping(
        text="note", label="label", period="period", time="observed_at", site="site", patient="patient_id"
    )
    assert direct == read_records(written[0], mapping=mapping)
    assert len(direct) == 300 and all(record.patient_hash for record in direct)
