"""`anamnesis demo`: a drifting cohort replayed against the running service.

1. A fresh SQLite database; the cohort's first period (the history a hospital starts from, larger
   than the later periods) is ingested with labels and version 1 is trained from the shipped
   MiniLM. It must pass the first-model gate (beat TF-IDF on the same rows, reach the floor); if
   it does not, the demo says why and promotes it explicitly, as an admin would, so the loop can
   still be shown.
2. The service (API + worker) starts as a separate process.
3. Each later period is replayed over HTTP: predictions first, the ground truth a little later.
   The worker checks drift, decides to update, trains, gates and promotes; the demo reports what
   happened. Everything is visible in the dashboard and under /v1/models.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from sqlmodel import Session

from anamnesis.client import AnamnesisClient
from anamnesis.cohort import Scenario, generate, write_stream
from anamnesis.service.jobs import train_first_model
from anamnesis.service.schemas import JobPublic, PredictionPublic
from anamnesis.service.settings import Settings
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.ingest import ColumnMapping, ingest_file
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import ApiRole, RunStatus
from anamnesis.storage.private import write_private
from anamnesis.storage.repository import create_api_key

Say = Callable[[str], None]
MAPPING = ColumnMapping(
    text="note", label="label", period="period", time="observed_at", site="site", patient="patient_id"
)


# Settings the demo's service runs with: quick checks and small updates, sized for a CPU.
def run_demo(
    settings: Settings,
    *,
    scenario: Scenario,
    periods: int,
    per_period: int,
    history: int,
    seed: int,
    port: int,
    keep_running: bool,
    say: Say,
) -> dict[str, Any]:
    home = settings.home.resolve()
    refuse_if_busy(home, port)
    if home.exists():
        say(f"removing the previous demo in {home}")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    storage = settings.storage_config()
    engine = create_db_engine(storage)
    upgrade(engine)

    # Every period is generated at the history's size; later periods keep a seeded sample.
    stream = generate(scenario=scenario, periods=periods, per_period=max(history, per_period), seed=seed)
    data = write_stream(stream, home / "cohort.parquet")[0]
    frame = stream.frame
    later = frame[frame.period > 1].groupby("period", group_keys=False).sample(n=per_period, random_state=seed)
    frame = pd.concat([frame[frame.period == 1].sample(n=history, random_state=seed), later]).sort_values("observed_at")
    say(
        f"cohort '{scenario}': a history of {history} records, then {periods - 1} periods of {per_period}; "
        "ground truth per period:"
    )
    for truth in stream.periods:
        say(f"  period {truth.period}: {truth.description}")

    first = home / "period-1.parquet"
    frame[frame.period == 1].to_parquet(first, index=False)
    report = ingest_file(engine, first, mapping=MAPPING, patient_key=settings.patient_key_bytes(), actor="demo")
    say(f"ingested period 1: {report.inserted} labeled records")
    say("training version 1 from the shipped MiniLM (the first update takes a minute on a CPU) ...")
    version_1 = train_first_model(
        engine, settings, actor="demo", reason="demo: promoted over the gate's rejection to show the loop"
    )
    outcome = version_1.outcome
    accuracy = outcome.metrics.evaluation.overall.accuracy or 0.0
    say(
        f"version {outcome.version_id} trained in {version_1.training_s:.0f}s: held-out accuracy "
        f"{accuracy:.1%}; gate: {outcome.decision.summary}"
    )
    if version_1.overridden:
        say(f"the demo promoted version {outcome.version_id} explicitly (an admin's --override-gate) to go on")
    with Session(engine) as session:
        _, admin_key = create_api_key(session, name="demo", role=ApiRole.admin, actor="demo")
    engine.dispose()
    write_private(home / "admin.key", admin_key + "\n")

    # The service reads exactly these settings: none of this shell's ANAMNESIS_* variables leak in.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ANAMNESIS_")}
    environment.update(_server_settings(settings, home).as_environment())
    log = (home / "serve.log").open("ab")
    server = subprocess.Popen(  # noqa: S603 - our own CLI with fixed arguments
        [sys.executable, "-m", "anamnesis.service.cli", "serve", "--port", str(port)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # The demo owns its server: the lock names both, and any ending signal ends the server's group.
    (home / LOCK_FILE).write_text(f"{os.getpid()} {server.pid}\n")
    previous_handlers = {signum: signal.signal(signum, _interrupted) for signum in ENDING_SIGNALS}
    base = f"http://127.0.0.1:{port}"
    summary: dict[str, Any] = {"periods": []}
    try:
        with AnamnesisClient(base, api_key=admin_key) as client:
            _wait(client.ready, 180, "the service to load version 1", server)
            say(f"service running at {base}/ (dashboard), API key in {home / 'admin.key'}")
            for period in range(2, periods + 1):
                rows = frame[frame.period == period]
                summary["periods"].append(
                    _replay_period(client, rows, period, stream.periods[period - 1].description, say, server)
                )
            versions = client.models().data
            summary["versions"] = [{"id": v.id, "status": str(v.status)} for v in versions]
            say("summary, period by period:")
            for entry in summary["periods"]:
                say(
                    f"  period {entry['period']}: {entry['accuracy_before_update']:.1%} correct; {entry['followed_by']}"
                )
            say("versions: " + ", ".join(f"v{v.id} {v.status}" for v in reversed(versions)))
            key_file = home / "admin.key"
            say(f"open {base}/ for the dashboard (sign in with the key in {key_file}); {base}/v1/models with X-API-Key")
            if keep_running:
                say("the service keeps running; Ctrl-C stops it")
                server.wait()
    except KeyboardInterrupt:
        say("stopping the demo's service")
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        _stop_group(server)
        log.close()
        (home / LOCK_FILE).unlink(missing_ok=True)
    summary["data"] = str(data)
    return summary


LOCK_FILE = "demo.pid"
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class DemoBusyError(RuntimeError):
    """The demo's port or home is in use: starting would delete a database under a running service."""


def refuse_if_busy(home: Path, port: int) -> None:
    """Refuses to start before anything is deleted when a process of an earlier demo in `home` is
    alive or something listens on `port`."""
    lock = home / LOCK_FILE
    if lock.exists():
        alive = [pid for pid in _pids(lock.read_text()) if _alive(pid)]
        if alive:
            raise DemoBusyError(
                f"a demo is still running in {home} (process {', '.join(map(str, alive))}); stop it (kill "
                f"{' '.join(map(str, alive))}) or choose another --home"
            )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DemoBusyError(f"port {port} is in use; stop what listens there or choose another --port") from None


def _pids(text: str) -> list[int]:
    return [int(word) for word in text.split() if word.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    """Ends the server and everything it started (its own process group)."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


def _server_settings(settings: Settings, home: Path) -> Settings:
    """The demo's settings for its service: these, with the demo's faster clocks and its own home."""
    return settings.with_overrides(
        home=home, database_url=None, drift_interval_s=60.0, model_poll_s=1.0, worker_tick_s=1.0
    )


def _wait(condition: Callable[[], Any], timeout: float, what: str, server: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service stopped while waiting for {what}; see serve.log")
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s")


def _replay_period(
    client: AnamnesisClient, rows: Any, period: int, description: str, say: Say, server: subprocess.Popen[bytes]
) -> dict[str, Any]:
    say(f"period {period} ({description}): {len(rows)} records")
    predictions: list[PredictionPublic] = []
    labels: list[str] = []
    started = time.perf_counter()
    records = rows.to_dict("records")
    for start in range(0, len(records), 32):
        chunk = records[start : start + 32]
        predictions += client.predict([_item(record) for record in chunk]).predictions
        labels += [record["label"] for record in chunk]
    correct = sum(p.label == label for p, label in zip(predictions, labels, strict=True))
    versions = sorted({p.model_version for p in predictions})
    say(
        f"  predicted {len(predictions)} records in {time.perf_counter() - started:.0f}s with "
        f"v{', v'.join(map(str, versions))}: {correct / len(predictions):.1%} correct"
    )
    truth = [{"prediction_id": p.prediction_id, "label": label} for p, label in zip(predictions, labels, strict=True)]
    client.send_labels(truth)
    say(f"  ground truth arrived for {len(truth)} records; asking the worker for a drift check")
    check_id = client.queue_drift_check(reason=f"labels of period {period} arrived").id
    outcome: dict[str, Any] = {"period": period, "accuracy_before_update": correct / len(predictions)}
    check = _wait(lambda: _job_done(client, check_id), 600, "the drift check", server)
    outcome["drift_check"] = check.metrics
    say(f"  drift check: {_outcome(check)}")
    update_job_id = check.metrics.get("update_job_id")
    retrain = (
        _wait(lambda: _job_done(client, update_job_id), 900, "the update", server)
        if isinstance(update_job_id, int)
        else None
    )
    if retrain:
        outcome["update"] = retrain.metrics
        outcome["followed_by"] = f"update job {retrain.id}: {_outcome(retrain)}"
        say(f"  update: {_outcome(retrain)}")
        if retrain.metrics.get("gate"):
            say(f"  gate: {retrain.metrics['gate']}")
    else:
        reasons = check.metrics.get("reasons") or ["the drift check did not finish"]
        outcome["followed_by"] = f"no update ({'; '.join(reasons)})"
        say("  no update decided")
    return outcome


def _outcome(job: JobPublic) -> str:
    if job.status == RunStatus.failed:
        return f"failed: {(job.error or '').splitlines()[0]}"
    return job.progress_message or "done"


def _job_done(client: AnamnesisClient, job_id: int) -> JobPublic | None:
    job = client.job(job_id)
    return job if job.status in {RunStatus.succeeded, RunStatus.failed} else None


def _item(record: dict[str, Any]) -> dict[str, Any]:
    fields = {
        name: _plain(record[name])
        for name in record
        if name not in {"patient_id", "site", "observed_at", "period", "note", "label"}
    }
    return {
        "note": record["note"],
        "site": record["site"],
        "period": str(record["period"]),
        "observed_at": record["observed_at"].isoformat(),
        "patient_id": record["patient_id"],
        "fields": {name: value for name, value in fields.items() if value is not None},
    }


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
