"""The command line as users run it: a real `anamnesis` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import Job, Label, ModelVersion, Record, RunStatus
from anamnesis.storage.queries import count_rows
from tests.processes import wait_for

ANAMNESIS = str(Path(sys.executable).parent / "anamnesis")


def run_cli(*args: str, config: StorageConfig, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANAMNESIS_HOME": str(config.home),
        "ANAMNESIS_DATABASE_URL": config.database_url,
        "ANAMNESIS_PATIENT_KEY": "cli-test-key",
    }
    result = subprocess.run([ANAMNESIS, *args], env=env, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"anamnesis {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _counts(config: StorageConfig) -> tuple[int, int]:
    engine = create_db_engine(config)
    with Session(engine) as session:
        counts = count_rows(session, Record), count_rows(session, Label)
    engine.dispose()
    return counts


INGEST = ("--period-col", "period", "--time-col", "observed_at", "--site-col", "site", "--patient-col", "patient_id")


def test_every_command_has_help(sqlite_config: StorageConfig) -> None:
    commands = [
        [],
        ["db"],
        ["db", "upgrade"],
        ["ingest"],
        ["cohort"],
        ["cohort", "generate"],
        ["serve"],
        ["worker"],
        ["train"],
        ["models"],
        ["models", "show"],
        ["promote"],
        ["rollback"],
        ["keys"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "revoke"],
        ["drift"],
        ["drift", "check"],
        ["drift", "list"],
        ["drift", "show"],
        ["demo"],
        ["bench"],
        ["bench", "learn"],
        ["bench", "serve"],
        ["bench", "policy"],
        ["labels"],
        ["labels", "declare"],
        ["labels", "show"],
    ]
    for command in commands:
        result = run_cli(*command, "--help", config=sqlite_config)
        assert "Usage" in result.stdout


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_generate_then_ingest_round_trips_10000_records(storage_config: StorageConfig, tmp_path: Path, suffix) -> None:
    data = tmp_path / f"cohort{suffix}"
    run_cli(
        "cohort",
        "generate",
        "--scenario",
        "mixed",
        "--periods",
        "5",
        "--per-period",
        "2000",
        "--seed",
        "3",
        "--out",
        str(data),
        config=storage_config,
    )
    assert data.exists() and Path(f"{data}.truth.json").exists()
    first = run_cli("ingest", str(data), *INGEST, config=storage_config)
    assert "stored 10000 new records" in first.stdout and "10000 labels added" in first.stdout
    assert _counts(storage_config) == (10000, 10000)
    again = run_cli("ingest", str(data), *INGEST, config=storage_config)
    assert "stored 0 new records, 10000 already stored, 0 labels added" in again.stdout
    assert _counts(storage_config) == (10000, 10000)


def test_malformed_files_get_clear_errors_and_store_nothing_wrong(sqlite_config: StorageConfig, tmp_path: Path):
    missing = run_cli("ingest", str(tmp_path / "nope.csv"), config=sqlite_config, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_column = tmp_path / "cols.csv"
    bad_column.write_text("text,label\nhello,x\n")
    result = run_cli("ingest", str(bad_column), config=sqlite_config, check=False)
    assert result.returncode == 2 and "'note' not found" in result.stderr
    result = run_cli("ingest", str(bad_column), "--format", "xlsx", config=sqlite_config, check=False)
    assert result.returncode == 2 and "unknown --format; choose one of csv, jsonl, parquet" in result.stderr
    result = run_cli(
        "cohort", "generate", "--out", str(tmp_path / "c.csv"), "--scenario", "calm", config=sqlite_config, check=False
    )
    assert result.returncode == 2 and "unknown scenario; choose one of stable" in result.stderr
    rows = tmp_path / "rows.csv"
    rows.write_bytes(b"note,label,age\nfine note,surgery,60\n,surgery,61\nbad age,surgery,old\nbroken \xff,x,1\n")
    rejects = tmp_path / "rejects.csv"
    result = run_cli("ingest", str(rows), "--rejects", str(rejects), config=sqlite_config, check=False)
    assert result.returncode == 1
    assert "row 2: note is empty" in result.stderr
    assert "row 3: age:" in result.stderr
    assert "row 4: column 'note' contains bytes that are not valid UTF-8" in result.stderr
    assert "1 rejected" not in result.stdout and "3 rejected" in result.stdout
    assert rejects.read_text().count("\n") == 4
    assert _counts(sqlite_config) == (1, 1)


def test_an_identifier_column_is_refused_unless_excluded(sqlite_config: StorageConfig, tmp_path: Path) -> None:
    identifiers = tmp_path / "ids.csv"
    rows = "".join(f"note {i},surgery,+44 20 7946 {1000 + i}\n" for i in range(30))
    identifiers.write_text("note,label,phone\n" + rows)
    refused = run_cli("ingest", str(identifiers), config=sqlite_config, check=False)
    assert refused.returncode == 2 and "column 'phone' looks like a patient identifier" in refused.stderr
    assert "7946" not in refused.stderr and _counts(sqlite_config) == (0, 0)
    stored = run_cli("ingest", str(identifiers), "--exclude", "phone", config=sqlite_config)
    assert "stored 30 new records" in stored.stdout


def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    config = StorageConfig.embedded(tmp_path / "fresh")
    data = tmp_path / "x.csv"
    data.write_text("note,label\nhello,x\n")
    result = run_cli("ingest", str(data), config=config, check=False)
    assert result.returncode == 2 and "anamnesis db upgrade" in result.stderr
    run_cli("db", "upgrade", config=config)
    run_cli("ingest", str(data), config=config)
    assert _counts(config) == (1, 1)


def test_train_models_promote_rollback_keys_and_drift_commands(sqlite_config: StorageConfig) -> None:
    from tests.factories import store, toy_records
    from tests.service_fixtures import LABELS, installation

    engine, _ = installation(sqlite_config)  # v1, a tiny model, in production
    store(engine, toy_records(LABELS, 60, period="2", seed=3))
    engine.dispose()
    small = {
        "ANAMNESIS_TRAINING__MAX_LENGTH": "32",
        "ANAMNESIS_TRAINING__BATCH_SIZE": "8",
        "ANAMNESIS_MAX_LENGTH": "32",
        "ANAMNESIS_DRIFT__MIN_ROWS": "10",
    }
    os.environ.update(small)
    try:
        trained = run_cli("train", "--reason", "cli test", "--epochs", "2", config=sqlite_config)
        assert "model version 2" in trained.stdout and "gate:" in trained.stdout
        listed = run_cli("models", config=sqlite_config).stdout
        assert "v1" in listed and "v2" in listed
        shown = run_cli("models", "show", "2", config=sqlite_config).stdout
        assert "accuracy matrix" in shown and "gate:" in shown and "labels: radiotherapy, surgery" in shown
        assert "calibration: T=" in shown
        if "v2  production" not in listed:
            refused = run_cli("promote", "2", config=sqlite_config, check=False)
            assert refused.returncode == 2 and "rejected" in refused.stderr
            run_cli("promote", "2", "--override-gate", "--reason", "cli test", config=sqlite_config)
        restored = run_cli("rollback", "--reason", "cli test", config=sqlite_config)
        assert "v1 is in production again" in restored.stdout
        missing = run_cli("models", "show", "99", config=sqlite_config, check=False)
        assert missing.returncode == 2 and "not found" in missing.stderr
        key = run_cli("keys", "create", "--name", "lab", "--role", "predict", config=sqlite_config)
        assert key.stdout.startswith("anm_") and "stored hashed" in key.stderr
        assert "lab" in run_cli("keys", "list", config=sqlite_config).stdout
        bad_role = run_cli("keys", "create", "--name", "x", "--role", "root", config=sqlite_config, check=False)
        assert bad_role.returncode == 2 and "unknown role; choose one of predict, admin" in bad_role.stderr
        assert "root" not in bad_role.stderr  # the option and its choices, never the value
        engine = create_db_engine(sqlite_config)
        store(engine, toy_records(LABELS, 40, period="3", seed=4))  # records since v1 went live again
        engine.dispose()
        checked = run_cli("drift", "check", config=sqlite_config)
        assert "report 1:" in checked.stdout
        assert "v1" in run_cli("drift", "list", config=sqlite_config).stdout
        report = run_cli("drift", "show", "1", config=sqlite_config).stdout
        assert "HTML report:" in report and "structured" in report
    finally:
        for name in small:
            os.environ.pop(name)


def _small_training_env(config: StorageConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an `anamnesis` process that trains a tiny model quickly on `config`."""
    return {
        **os.environ,
        "ANAMNESIS_HOME": str(config.home),
        "ANAMNESIS_DATABASE_URL": config.database_url,
        "ANAMNESIS_PATIENT_KEY": "cli-test-key",
        "ANAMNESIS_TRAINING__MAX_LENGTH": "32",
        "ANAMNESIS_TRAINING__BATCH_SIZE": "8",
        "ANAMNESIS_MAX_LENGTH": "32",
        **(extra or {}),
    }


def _wait_for_the_train_phase(engine: sa.Engine) -> None:
    def training() -> bool:
        with Session(engine) as session:
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
            return job is not None and job.status == RunStatus.running and job.progress >= 0.05

    wait_for(training, 120, interval=0.2, message="the training's train phase")


@pytest.mark.slow
def test_two_train_commands_at_once_give_one_training(postgres_config: StorageConfig) -> None:
    from tests.factories import store, toy_records
    from tests.service_fixtures import LABELS, installation

    engine, _ = installation(postgres_config)  # v1, a tiny model, in production
    store(engine, toy_records(LABELS, 80, period="2", seed=8))
    env = _small_training_env(postgres_config)
    command = [ANAMNESIS, "train", "--reason", "at once", "--epochs", "3"]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    with Session(engine) as session:
        versions = count_rows(session, ModelVersion)
    engine.dispose()
    assert versions == 2, outputs  # v1 and exactly one new version
    trained = [out for out, _ in outputs if "model version 2" in out]
    assert len(trained) == 1, outputs
    other = next(f"{out}{err}" for out, err in outputs if "model version 2" not in out)
    assert "lease 'training' is held" in other or "no labeled record arrived" in other, other


@pytest.mark.slow
def test_a_rollback_while_another_process_trains_survives(postgres_config: StorageConfig) -> None:
    from tests.factories import store, toy_records
    from tests.service_fixtures import LABELS, installation, train_version

    engine, _ = installation(postgres_config)
    assert train_version(engine, postgres_config, period="2", seed=2).promoted  # v2 in production
    store(engine, toy_records(LABELS, 200, period="3", seed=9))
    env = _small_training_env(
        postgres_config, {"ANAMNESIS_GATE__TOLERANCE": "1.0"}
    )  # the gate accepts: only the fence keeps it out
    training = subprocess.Popen(
        [ANAMNESIS, "train", "--reason", "long", "--epochs", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    _wait_for_the_train_phase(engine)
    rolled_back = subprocess.run(
        [ANAMNESIS, "rollback", "--reason", "clinician request"], env=env, capture_output=True, text=True
    )
    assert rolled_back.returncode == 0 and "v1 is in production again" in rolled_back.stdout
    out, err = training.communicate(timeout=600)
    with Session(engine) as session:
        production = session.scalars(select(ModelVersion).where(ModelVersion.status == "production")).one()
        candidate = session.get(ModelVersion, 3)
    engine.dispose()
    assert production.id == 1, (out, err)  # the rollback stands
    assert candidate is not None and candidate.status == "candidate", (out, err)
    assert "judged against v2" in (candidate.decision_reason or "") and "held" in out


@pytest.mark.slow
def test_a_training_process_whose_lease_was_taken_cannot_promote(postgres_config: StorageConfig) -> None:
    from datetime import timedelta

    from anamnesis.storage.repository import acquire_lease
    from tests.factories import store, toy_records
    from tests.service_fixtures import LABELS, installation

    engine, _ = installation(postgres_config)
    store(engine, toy_records(LABELS, 200, period="2", seed=10))
    env = _small_training_env(
        postgres_config, {"ANAMNESIS_GATE__TOLERANCE": "1.0", "ANAMNESIS_STALE_RUN_S": "3"}
    )  # the gate accepts
    training = subprocess.Popen(
        [ANAMNESIS, "train", "--reason", "stalls", "--epochs", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    _wait_for_the_train_phase(engine)
    os.kill(training.pid, signal.SIGSTOP)  # the process stalls: no heartbeat, its lease runs out
    try:
        time.sleep(4)
        with Session(engine) as session:
            acquire_lease(session, name="training", holder="another-worker:run9", ttl=timedelta(minutes=5))
    finally:
        os.kill(training.pid, signal.SIGCONT)
    out, err = training.communicate(timeout=600)
    with Session(engine) as session:
        production = session.scalars(select(ModelVersion).where(ModelVersion.status == "production")).one()
        candidate = session.get(ModelVersion, 2)
    engine.dispose()
    assert production.id == 1, (out, err)
    assert candidate is not None and candidate.status == "candidate", (out, err)
    assert "no longer holds" in (candidate.decision_reason or ""), candidate.decision_reason


@pytest.mark.slow
def test_a_long_cli_training_keeps_its_job_alive(postgres_config: StorageConfig) -> None:
    from datetime import timedelta

    from anamnesis.storage.models import Lease
    from anamnesis.storage.repository import database_now, fail_interrupted_runs
    from tests.factories import store, toy_records
    from tests.service_fixtures import LABELS, installation

    engine, _ = installation(postgres_config)
    store(engine, toy_records(LABELS, 300, period="2", seed=11))
    env = _small_training_env(
        postgres_config, {"ANAMNESIS_STALE_RUN_S": "2"}
    )  # a job without a heartbeat for 2 s is abandoned
    training = subprocess.Popen(
        [ANAMNESIS, "train", "--reason", "long", "--epochs", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    failed: list[int] = []
    lapsed: list[float] = []
    training_checks = 0
    while training.poll() is None:  # meanwhile a worker looks for abandoned jobs, as it does
        with Session(engine) as session:
            failed += fail_interrupted_runs(session, stale_after=timedelta(seconds=2), actor="worker")
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
            lease = session.get(Lease, "training", populate_existing=True)
            if job is not None and job.status == RunStatus.running and 0.1 < job.progress < 0.8 and lease:
                training_checks += 1  # mid-training: the lease must be live, else another could train
                left = (lease.expires_at - database_now(session)).total_seconds()
                if left < 0:
                    lapsed.append(left)
        time.sleep(0.5)
    out, err = training.communicate()
    engine.dispose()
    assert training_checks >= 10, "the training must outlast the 2-second lease and heartbeat limits"
    assert lapsed == [] and failed == [], (lapsed, out, err)
    assert training.returncode == 0 and "model version 2" in out, (out, err)
