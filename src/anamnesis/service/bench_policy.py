"""`anamnesis bench policy`: does updating when drift is detected pay off against fixed schedules?

A labeled stream is replayed prequentially through the real update machinery, without HTTP: each
later period's records arrive as predictions of the model in production at that moment (the served
runtime, stored exactly as the API stores them) and are scored against their truth; then their
labels arrive; then the policy under test decides, and an update is a real retrain job (the
learner, the gate, promotion). The drift-triggered policy runs the worker's own drift check and
acts on the job it queues. Every policy starts from the same version 1 (trained once per seed on
period 1 and copied), so they differ only in when they update.

The stream is a generated cohort (its periods, and the simulator's drift starts for the oracle and
the detection delay) or any labeled file with a time column, its records in time order cut into
periods of equal size (no ground truth: no oracle unless drift starts are given).

Policies: `never`; `every` (each period); `every:K` (every K periods); `labels:N` (when N labels
arrived since the current model's data); `drift` (the service's policy with its defaults, except
the cooldown, which counts wall-clock time and is 0 in a replay of quarters in minutes); `oracle`
(exactly in the periods where the simulator starts a drift).
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from anamnesis.cohort import CohortStream
from anamnesis.learner.benchmark import interval
from anamnesis.learner.engine import BundleFactory
from anamnesis.learner.modeling import load_base_classifier
from anamnesis.learner.results import DataWindow
from anamnesis.monitor.config import DriftConfig, PolicyConfig
from anamnesis.service.jobs import JobContext, execute_job, run_now, train_first_model
from anamnesis.service.predicting.batcher import item_results
from anamnesis.service.predicting.runtime import load_model
from anamnesis.service.predicting.writer import PREDICTION_SOURCE, new_prediction_id, prediction_row
from anamnesis.service.settings import Settings
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.ingest import ColumnMapping, validated_batches, validated_frame
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import DriftReport, Job, JobKind, ModelStatus, ModelVersion, RunStatus
from anamnesis.storage.queries import current_model, get_job, labeled_records_since
from anamnesis.storage.repository import PreparedRecord, claim_job, store_predictions, store_record_batch

BENCHMARK_KEY = b"policy-benchmark"
MAPPING = ColumnMapping(
    text="note", label="label", period="period", time="observed_at", site="site", patient="patient_id"
)
Progress = Callable[[str], None]


class PolicyKind(StrEnum):
    never = "never"
    every = "every"
    labels = "labels"
    drift = "drift"
    oracle = "oracle"


DRIFT_VARIANTS = ("severity", "min_labels")  # the drift settings a variant may change


@dataclass(frozen=True)
class Policy:
    kind: PolicyKind
    every: int = 1
    labels: int = 0
    # The drift policy with other settings than the defaults (`drift:severity=0.5/min_labels=50`): the
    # candidates a tuning of the defaults compares on the same streams.
    severity: float | None = None
    min_labels: int | None = None

    @property
    def name(self) -> str:
        if self.kind == PolicyKind.every:
            return "every period" if self.every == 1 else f"every {self.every} periods"
        if self.kind == PolicyKind.labels:
            return f"{self.labels} new labels"
        if self.kind == PolicyKind.drift and (self.severity is not None or self.min_labels is not None):
            changed = [f"severity {self.severity:g}"] if self.severity is not None else []
            changed += [f"min_labels {self.min_labels}"] if self.min_labels is not None else []
            return f"drift-triggered ({', '.join(changed)})"
        return {"never": "never", "drift": "drift-triggered", "oracle": "oracle"}[self.kind.value]

    @classmethod
    def parse(cls, text: str) -> Policy:
        """`never`, `every`, `every:K`, `labels:N`, `drift`, `drift:severity=S/min_labels=N`, `oracle`."""
        kind, _, value = text.partition(":")
        policy = PolicyKind(kind)
        if policy == PolicyKind.every:
            return cls(policy, every=int(value or 1))
        if policy == PolicyKind.labels:
            return cls(policy, labels=int(value))
        if policy == PolicyKind.drift and value:
            return cls._drift_variant(value)
        if value:
            raise ValueError(f"policy {kind} takes no value")
        return cls(policy)

    @classmethod
    def _drift_variant(cls, value: str) -> Policy:
        settings: dict[str, str] = {}
        for item in value.split("/"):
            key, _, setting = item.partition("=")
            if key not in DRIFT_VARIANTS or not setting:
                raise ValueError(f"drift takes {', '.join(f'{k}=' for k in DRIFT_VARIANTS)} separated by /")
            settings[key] = setting
        severity = float(settings["severity"]) if "severity" in settings else None
        min_labels = int(settings["min_labels"]) if "min_labels" in settings else None
        if severity is not None and not 0 < severity <= 1:
            raise ValueError("drift severity must be in (0, 1]")
        if min_labels is not None and min_labels < 1:
            raise ValueError("drift min_labels must be at least 1")
        return cls(PolicyKind.drift, severity=severity, min_labels=min_labels)

    def applied_to(self, settings: Settings) -> Settings:
        """`settings` with this policy's drift settings in place of the defaults."""
        policy, drift = settings.policy, settings.drift
        if self.severity is not None:
            thresholds = dict.fromkeys(policy.severity_thresholds, self.severity)
            policy = policy.model_copy(update={"severity_thresholds": thresholds})
        if self.min_labels is not None:
            performance = drift.performance.model_copy(update={"min_labels": self.min_labels})
            drift = drift.model_copy(update={"performance": performance})
        return settings.model_copy(update={"policy": policy, "drift": drift})


@dataclass
class PolicyRun:
    """What one policy did on one seed's stream."""

    policy: str
    accuracy: dict[str, float] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    drift_checks: list[dict[str, Any]] = field(default_factory=list)
    training_s: float = 0.0
    checking_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "mean_accuracy": statistics.fmean(self.accuracy.values()),
            "accuracy": self.accuracy,
            "updates": len(self.updates),
            "promoted": sum(update["promoted"] for update in self.updates),
            "training_s": round(self.training_s, 1),
            "checking_s": round(self.checking_s, 1),
            "update_log": self.updates,
            "drift_checks": self.drift_checks,
        }


def replay_settings(home: Path, *, per_period: int, overrides: Mapping[str, Any]) -> Settings:
    """The service's settings for a replay: defaults, except what a replay of quarters in minutes changes
    (and `overrides`, for tests with a tiny model)."""
    values: dict[str, Any] = {
        "home": home,
        "database_url": None,
        "patient_key": BENCHMARK_KEY.decode(),
        # One period per check; the noise floors keep windows this small honest.
        "drift_window": per_period,
        "drift": DriftConfig(min_rows=max(50, per_period // 6)),
        "policy": PolicyConfig(cooldown=timedelta(0), max_model_age=None),
        # No worker heartbeat renews the training lease of a queued job run here: without this, an update
        # longer than the default 120 s loses its lease and its accepted candidate is held, not promoted.
        "stale_run_s": 3600.0,
    }
    return Settings(**(values | dict(overrides)))


@dataclass(frozen=True)
class ReplayStream:
    """What a replay runs on: labeled records by period ("1" trains version 1), and the periods where
    a drift starts when they are known."""

    name: str
    seed: int
    periods: dict[str, list[PreparedRecord]]
    drift_starts: frozenset[int] | None = None
    """None: unknown (a file without ground truth); the oracle cannot run and no delay is measured."""

    @property
    def per_period(self) -> int:
        """The size of the largest later period: the drift window a replay checks."""
        return max(len(records) for period, records in self.periods.items() if period != "1")

    @classmethod
    def of_cohort(cls, stream: CohortStream) -> ReplayStream:
        prepared, _errors = validated_frame(stream.frame, mapping=MAPPING, patient_key=BENCHMARK_KEY)
        periods: dict[str, list[PreparedRecord]] = {}
        for record in prepared:
            periods.setdefault(str(record.period), []).append(record)
        starts = frozenset(truth.period for truth in stream.periods if truth.starts)
        return cls(name=f"cohort {stream.scenario}", seed=stream.seed, periods=periods, drift_starts=starts)

    @classmethod
    def of_file(
        cls,
        path: Path,
        *,
        mapping: ColumnMapping,
        periods: int,
        seed: int,
        drift_starts: frozenset[int] | None = None,
    ) -> ReplayStream:
        """The file's labeled records (read as `anamnesis ingest` reads them) in time order, cut into
        `periods` consecutive periods of equal size; a period column of the file is not used."""
        if mapping.label is None or mapping.time is None:
            raise ValueError("a replayed file needs a label column and a time column")
        batches = validated_batches(path, mapping=replace(mapping, period=None), patient_key=BENCHMARK_KEY)
        labeled = sorted(
            (record for _, prepared, _errors in batches for record in prepared if record.label is not None),
            key=lambda record: record.observed_at,
        )
        if len(labeled) < 2 * periods:
            raise ValueError(f"{path.name} has {len(labeled)} labeled records: too few for {periods} periods")
        if drift_starts is not None and not all(2 <= start <= periods for start in drift_starts):
            raise ValueError(f"drift starts must be periods 2..{periods}")
        bounds = [round(index * len(labeled) / periods) for index in range(periods + 1)]
        return cls(
            name=path.name,
            seed=seed,
            periods={
                str(number): [replace(record, period=str(number)) for record in labeled[start:end]]
                for number, (start, end) in enumerate(itertools.pairwise(bounds), start=1)
            },
            drift_starts=drift_starts,
        )


def train_first_version(
    home: Path, records: Sequence[PreparedRecord], settings: Settings, new_bundle: BundleFactory
) -> dict[str, Any]:
    """Version 1 from period 1, as `anamnesis train` makes it (promoted over the gate if it must be)."""
    storage = settings.storage_config()
    engine = create_db_engine(storage)
    upgrade(engine)
    with Session(engine) as session:
        store_record_batch(session, records=records, source="benchmark", actor="benchmark")
    first = train_first_model(
        engine,
        settings,
        actor="benchmark",
        reason="policy benchmark: every policy starts from version 1",
        new_bundle=new_bundle,
    )
    engine.dispose()
    return {
        "training_s": round(first.training_s, 1),
        "held_out_accuracy": first.outcome.metrics.evaluation.overall.accuracy,
        "promoted_by_gate": not first.overridden,
    }


def _arrive(engine: Engine, settings: Settings, records: Sequence[PreparedRecord]) -> float:
    """The period's records predicted by the production model as the API would, stored with their
    predictions; returns the prequential accuracy against their (not yet arrived) labels."""
    with Session(engine) as session:
        version = current_model(session)
    assert version is not None
    model = load_model(version, max_length=settings.max_length, mode=settings.runtime)
    results = item_results(model, [r.note for r in records], [r.fields for r in records])
    unlabeled = [replace(record, label=None) for record in records]
    rows = [
        prediction_row(result, request_id=new_prediction_id(), record=record, latency_ms=0.0, note=record.note)
        for result, record in zip(results, unlabeled, strict=True)
    ]
    with Session(engine) as session:
        store_predictions(session, records=unlabeled, predictions=rows, source=PREDICTION_SOURCE)
    correct = sum(result.label == record.label for result, record in zip(results, records, strict=True))
    return correct / len(records)


def _retrain(context: JobContext, reason: str) -> dict[str, Any]:
    job = run_now(context, kind=JobKind.retrain, actor="benchmark", reason=reason, config={})
    return _update_entry(context.engine, job.id, reason)


def _update_entry(engine: Engine, job_id: int | None, reason: str) -> dict[str, Any]:
    with Session(engine) as session:
        version = session.scalars(select(ModelVersion).where(col(ModelVersion.job_id) == job_id)).first()
        job = get_job(session, job_id or 0)
    seconds = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else 0.0
    return {
        "job": job_id,
        "status": str(job.status),
        "reason": reason[:300],
        "version": version.id if version else None,
        "promoted": bool(version and version.status in (ModelStatus.production, ModelStatus.archived)),
        "outcome": (job.progress_message or "")[:300],  # rejected by the gate, or accepted but held, and why
        "seconds": round(seconds, 1),
    }


def _run_queued_retrain(context: JobContext) -> dict[str, Any] | None:
    """Runs the retrain job the drift check queued, as the worker would."""
    with Session(context.engine) as session:
        queued = session.scalars(
            select(Job).where(col(Job.kind) == JobKind.retrain, col(Job.status) == RunStatus.queued)
        ).first()
        if queued is None:
            return None
        claim_job(session, run_id=queued.id or 0, worker=context.identity)
        job_id, reason = queued.id, queued.reason or ""
    context.current_run = job_id
    try:
        execute_job(context, job_id or 0)
    finally:
        context.current_run = None
    return _update_entry(context.engine, job_id, reason)


def _labels_since_current(engine: Engine) -> int:
    with Session(engine) as session:
        version = current_model(session)
        assert version is not None
        return labeled_records_since(session, DataWindow.from_stored(version).label_cutoff or 0)


def run_policy(
    policy: Policy,
    *,
    base: Path,
    home: Path,
    periods: dict[str, list[PreparedRecord]],
    drift_starts: set[int],
    settings: Settings,
    progress: Progress,
) -> PolicyRun:
    shutil.copytree(base, home)
    engine = create_db_engine(settings.storage_config())
    context = JobContext.here(settings, engine)
    run = PolicyRun(policy=policy.name)
    ordered = sorted((p for p in periods if p != "1"), key=int)
    for period in ordered:
        number = int(period)
        run.accuracy[period] = _arrive(engine, settings, periods[period])
        with Session(engine) as session:  # the labels arrive
            store_record_batch(session, records=periods[period], source="benchmark", actor="benchmark")
        update: dict[str, Any] | None = None
        if policy.kind == PolicyKind.every and (number - 1) % policy.every == 0:
            update = _retrain(context, f"period {period}: scheduled")
        elif policy.kind == PolicyKind.labels and _labels_since_current(engine) >= policy.labels:
            update = _retrain(context, f"period {period}: {policy.labels} new labels")
        elif policy.kind == PolicyKind.oracle and number in drift_starts:
            update = _retrain(context, f"period {period}: drift starts")
        elif policy.kind == PolicyKind.drift:
            started = time.perf_counter()
            check = run_now(context, kind=JobKind.drift_check, actor="benchmark", reason=f"period {period}", config={})
            run.checking_s += time.perf_counter() - started
            report_id = check.metrics.get("drift_report_id")
            with Session(engine) as session:
                report = session.get(DriftReport, report_id) if isinstance(report_id, int) else None
                run.drift_checks.append(
                    {
                        "period": number,
                        "drift": bool(report and report.drift_detected),
                        "flags": {k: v for k, v in (report.flags if report else {}).items() if v},
                        "message": (check.progress_message or "")[:300],
                    }
                )
            update = _run_queued_retrain(context)
        if update is not None:
            update["period"] = number
            run.training_s += update["seconds"]
            run.updates.append(update)
        progress(
            f"  {policy.name}: period {period} accuracy {run.accuracy[period]:.3f}"
            + (f"; update: {update['outcome']}" if update else "")
        )
    engine.dispose()
    return run


def detection_delay(run: PolicyRun, drift_starts: set[int]) -> dict[str, int | None]:
    """Periods from each drift start to the first check at or after it that flagged drift (None: never)."""
    flagged = sorted(check["period"] for check in run.drift_checks if check["drift"])
    return {str(start): next((p - start for p in flagged if p >= start), None) for start in sorted(drift_starts)}


def run_seed(
    stream: ReplayStream,
    policies: Sequence[Policy],
    *,
    work: Path,
    progress: Progress,
    settings_overrides: Mapping[str, Any] | None = None,
    new_bundle: BundleFactory = load_base_classifier,
) -> dict[str, Any]:
    """Every policy on one stream, from the same version 1; the installations are removed afterwards.
    The stream's seed also seeds the learner."""
    if stream.drift_starts is None and any(policy.kind == PolicyKind.oracle for policy in policies):
        raise ValueError(f"the oracle needs the periods where drift starts, which {stream.name} does not give")
    overrides = _seeded(settings_overrides or {}, stream.seed)
    periods, per_period = stream.periods, stream.per_period
    drift_starts = set(stream.drift_starts or ())
    base = work / "base"
    if base.exists():
        shutil.rmtree(base)
    progress(f"seed {stream.seed}: training version 1 on period 1 ({len(periods['1'])} records)")
    first = train_first_version(
        base, periods["1"], replay_settings(base, per_period=per_period, overrides=overrides), new_bundle
    )
    runs = {}
    for policy in policies:
        home = work / policy.name.replace(" ", "-")
        if home.exists():
            shutil.rmtree(home)
        started = time.perf_counter()
        run = run_policy(
            policy,
            base=base,
            home=home,
            periods=periods,
            drift_starts=drift_starts,
            settings=policy.applied_to(replay_settings(home, per_period=per_period, overrides=overrides)),
            progress=progress,
        )
        summary = run.summary()
        summary["wall_s"] = round(time.perf_counter() - started, 1)
        if policy.kind == PolicyKind.drift and stream.drift_starts is not None:
            summary["detection_delay"] = detection_delay(run, drift_starts)
        runs[policy.name] = summary
        shutil.rmtree(home, ignore_errors=True)  # artifacts of every version: hundreds of MB
    return {
        "seed": stream.seed,
        "stream": stream.name,
        "first_version": first,
        "drift_starts": sorted(drift_starts),
        "policies": runs,
    }


def _seeded(overrides: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """`overrides` with the learner seeded by the replay's seed."""
    training = overrides.get("training", {})
    as_dict = training.model_dump() if hasattr(training, "model_dump") else dict(training)
    return {**overrides, "training": {**as_dict, "seed": seed}}


# --- results -------------------------------------------------------------------------------------


def merge_seeds(earlier: Sequence[dict[str, Any]], later: dict[str, Any]) -> list[dict[str, Any]]:
    """`earlier` per-seed results with `later` added: a new seed, or new policies of a seed already there."""
    merged = [dict(entry) for entry in earlier]
    same = next((entry for entry in merged if entry["seed"] == later["seed"]), None)
    if same is None:
        return [*merged, later]
    repeated = sorted(set(same["policies"]) & set(later["policies"]))
    if repeated:
        raise ValueError(f"seed {later['seed']} already holds {', '.join(repeated)}")
    same["policies"] = {**same["policies"], **later["policies"]}
    return merged


def summarize(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per policy over the seeds that ran it: mean prequential accuracy, updates and training seconds with
    intervals; the targets of the drift-triggered policy against every-period updates and never updating,
    over the seeds that ran all three."""
    names = list(dict.fromkeys(name for seed in per_seed for name in seed["policies"]))
    policies: dict[str, Any] = {}
    for name in names:
        runs = [seed["policies"][name] for seed in per_seed if name in seed["policies"]]
        periods = list(runs[0]["accuracy"])
        policies[name] = {
            "seeds": [seed["seed"] for seed in per_seed if name in seed["policies"]],
            "mean_accuracy": interval([run["mean_accuracy"] for run in runs]),
            "updates": interval([float(run["updates"]) for run in runs]),
            "training_s": interval([run["training_s"] for run in runs]),
            "accuracy_by_period": {p: statistics.fmean(run["accuracy"][p] for run in runs) for p in periods},
        }
        if "detection_delay" in runs[0]:
            policies[name]["detection_delay"] = [run["detection_delay"] for run in runs]
    targets = []
    drift, every, never = "drift-triggered", "every period", "never"
    compared = [seed for seed in per_seed if {drift, every, never} <= set(seed["policies"])]
    if compared:

        def paired(a: str, b: str, figure: str) -> dict[str, Any]:
            return interval([seed["policies"][a][figure] - seed["policies"][b][figure] for seed in compared])

        versus_every = paired(drift, every, "mean_accuracy")
        versus_never = paired(drift, never, "mean_accuracy")
        share = [
            seed["policies"][drift]["training_s"] / seed["policies"][every]["training_s"]
            for seed in compared
            if seed["policies"][every]["training_s"] > 0
        ]
        cost = interval(share)
        targets = [
            _target(
                "drift-triggered within 1 point of every-period updates (average prequential accuracy)",
                versus_every,
                _low(versus_every, scale=100) > -1.0,
            ),
            _target(
                "at no more than 50% of every-period training time",
                cost,
                cost["mean"] is not None and _high(cost) <= 0.5,
            ),
            _target(
                "ahead of never updating by at least 5 points",
                versus_never,
                _low(versus_never, scale=100) >= 5.0,
            ),
        ]
    return {"seeds": [seed["seed"] for seed in per_seed], "policies": policies, "targets": targets}


def _low(entry: dict[str, Any], scale: float = 1.0) -> float:
    half = entry["half_width"]
    return float(entry["mean"] - (half if half is not None else float("inf"))) * scale


def _high(entry: dict[str, Any]) -> float:
    half = entry["half_width"]
    return float(entry["mean"] + (half if half is not None else float("inf")))


def _target(name: str, measured: dict[str, Any], met: bool) -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": met}


def _figure(entry: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    half = entry["half_width"]
    shown = f"{entry['mean'] * scale:.{digits}f}"
    return shown + (f" ± {half * scale:.{digits}f}" if half is not None else " (one seed: no interval)")


def write_results(result: dict[str, Any], folder: Path, *, stem: str = "policy") -> list[Path]:
    """`stem`.json, `stem`.md and `stem`_accuracy.png (prequential accuracy per period, per policy)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = folder / f"{stem}.json", folder / f"{stem}.md", folder / f"{stem}_accuracy.png"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    summary = result["summary"]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, entry in summary["policies"].items():
        periods = list(entry["accuracy_by_period"])
        axis.plot([int(p) for p in periods], list(entry["accuracy_by_period"].values()), marker="o", label=name)
    for start in result["per_seed"][0]["drift_starts"]:
        axis.axvline(start, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("period (dotted: a drift starts)")
    axis.set_ylabel("prequential accuracy")
    axis.set_title("Accuracy of the model in production when each record arrived")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    lines = [
        "# Update policies against fixed schedules (prequential)",
        "",
        *(f"`{command}`" for command in result["commands"]),
        "",
        result["setup"],
        "",
        f"![prequential accuracy]({png_path.name})",
        "",
        "| policy | seeds | average prequential accuracy (%) | updates | training seconds "
        "| detection delay (periods) |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in summary["policies"].items():
        delay = entry.get("detection_delay", "")
        lines.append(
            f"| {name} | {', '.join(map(str, entry['seeds']))} "
            f"| {_figure(entry['mean_accuracy'], 100)} | {_figure(entry['updates'])} | "
            f"{_figure(entry['training_s'], digits=0)} | {delay} |"
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target in summary["targets"]:
        measured = target["measured"]
        scale = 1.0 if "training time" in target["target"] else 100.0
        lines.append(f"| {target['target']} | {_figure(measured, scale, 2)} | {'yes' if target['met'] else 'no'} |")
    lines.append("")
    md_path.write_text("\n".join(lines))
    return [json_path, md_path, png_path]
