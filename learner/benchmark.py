"""`anamnesis bench learn`: every strategy over the same stream, with the accuracy matrix and costs.

The stream comes from the cohort simulator or from any file with a text, a label and a period
column; it is read and validated by the same code as `anamnesis ingest`, and held in memory.
Each strategy starts from the shipped MiniLM and sees the periods in order, one update per period.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learner.config import PRESET_NAMES, LearnerConfig, TrainingConfig, preset
from learner.data import order_periods, split_holdout
from learner.engine import BundleFactory, evaluate_bundle, train_update
from learner.evaluation import continual_metrics
from learner.modeling import ModelBundle, load_base_classifier, resolve_device
from learner.state import LearnerState
from storage.ingest import ColumnMapping, FileFormat, validated_batches
from storage.queries import LabeledRecord

BENCHMARK_KEY = b"benchmark"  # patient references are hashed even here; the key does not matter


@dataclass(frozen=True)
class Stream:
    """A labeled stream split into periods, each with a training and a held-out part."""

    name: str
    periods: tuple[str, ...]
    train: dict[str, list[LabeledRecord]]
    holdout: dict[str, list[LabeledRecord]]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "periods": list(self.periods),
            "train_per_period": {p: len(self.train[p]) for p in self.periods},
            "holdout_per_period": {p: len(self.holdout[p]) for p in self.periods},
        }


def read_stream(
    path: Path, *, mapping: ColumnMapping, holdout_fraction: float, name: str, file_format: FileFormat | None = None
) -> Stream:
    """Reads a file the way `anamnesis ingest` does; every record needs a label and a period."""
    if mapping.label is None or mapping.period is None:
        raise ValueError("a benchmark stream needs a label column and a period column")
    records: list[LabeledRecord] = []
    for _, prepared, _errors in validated_batches(
        path, mapping=mapping, patient_key=BENCHMARK_KEY, file_format=file_format
    ):
        for record in prepared:
            if record.label is None or record.period is None:
                continue
            index = len(records)
            records.append(
                LabeledRecord(
                    record_id=index,
                    content_hash=record.content_hash,
                    site=record.site,
                    period=record.period,
                    observed_at=record.observed_at,
                    note=record.note,
                    fields=record.fields,
                    label=record.label,
                    label_id=index,
                )
            )
    if not records:
        raise ValueError(f"{path.name} holds no record with both a label and a period")
    periods = tuple(order_periods(records))
    train, holdout = split_holdout(records, holdout_fraction)
    return Stream(
        name=name,
        periods=periods,
        train={p: [r for r in train if r.period == p] for p in periods},
        holdout={p: [r for r in holdout if r.period == p] for p in periods},
    )


Progress = Callable[[str], None]


def run_strategy(
    stream: Stream, config: LearnerConfig, *, new_bundle: BundleFactory, progress: Progress
) -> dict[str, Any]:
    """One strategy over the whole stream: accuracy matrix, forgetting, BWT and cost per update."""
    device = resolve_device(config.training.device)
    bundle: ModelBundle | None = None
    state = LearnerState()
    seen: list[LabeledRecord] = []
    rows: list[dict[str, float]] = []
    updates: list[dict[str, Any]] = []
    for step, period in enumerate(stream.periods):
        fresh = stream.train[period]
        seen = [*seen, *fresh]
        started = time.perf_counter()
        trained = train_update(
            bundle, state, fresh=fresh, seen=seen, config=config, new_bundle=new_bundle, device=device
        )
        wall = time.perf_counter() - started
        bundle, state = trained.bundle, trained.state
        evaluated = [r for p in stream.periods[: step + 1] for r in stream.holdout[p]]
        evaluation = evaluate_bundle(bundle, evaluated, max_length=config.training.max_length, device=device)
        rows.append({p: s["accuracy"] for p, s in evaluation["per_period"].items()})
        updates.append(
            {
                "period": period,
                "wall_s": round(wall, 2),
                "samples_processed": trained.samples_processed,
                "experience_records": trained.experience_records,
                "samples_per_s": round(trained.samples_processed / wall, 2) if wall > 0 else None,
            }
        )
        progress(
            f"{config.strategy.name}: period {period} ({step + 1}/{len(stream.periods)}) trained in {wall:.0f}s, "
            f"accuracy {', '.join(f'{p}={a:.3f}' for p, a in rows[-1].items())}"
        )
    learned_at = {period: step for step, period in enumerate(stream.periods)}
    continual = continual_metrics(rows, learned_at, list(stream.periods))
    return {
        "strategy": config.strategy.model_dump(mode="json"),
        "accuracy_matrix": rows,
        "final_average_accuracy": continual["average_accuracy"],
        "average_forgetting": continual["forgetting"],
        "bwt": continual["bwt"],
        "forgetting_per_period": continual["forgetting_per_period"],
        "updates": updates,
        "total_wall_s": round(sum(u["wall_s"] for u in updates), 1),
    }


def run_benchmark(
    stream: Stream,
    *,
    strategies: Sequence[str] = PRESET_NAMES,
    training: TrainingConfig,
    new_bundle: BundleFactory = load_base_classifier,
    ewc_lambda: float | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """Runs each strategy preset; `ewc_lambda` replaces the EWC strength of the presets that use EWC."""
    results: dict[str, Any] = {}
    for name in strategies:
        strategy = preset(name)
        if ewc_lambda is not None and strategy.ewc is not None:
            strategy = strategy.model_copy(update={"ewc": strategy.ewc.model_copy(update={"ewc_lambda": ewc_lambda})})
        config = LearnerConfig(strategy=strategy, training=training)
        results[name] = run_strategy(stream, config, new_bundle=new_bundle, progress=progress)
    return {
        "stream": stream.describe(),
        "training": training.model_dump(mode="json"),
        "device": str(resolve_device(training.device)),
        "strategies": results,
        "targets": evaluate_targets(results),
    }


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it was met."""
    targets: list[dict[str, Any]] = []
    main, joint, naive = results.get("replay_ewc"), results.get("joint"), results.get("naive")
    if main and joint:
        gap = joint["final_average_accuracy"] - main["final_average_accuracy"]
        targets.append(
            _target("replay+EWC final average accuracy within 2 points of joint", f"{gap * 100:+.1f} pts", gap <= 0.02)
        )
        cost = main["updates"][-1]["samples_processed"] / joint["updates"][-1]["samples_processed"]
        wall = main["updates"][-1]["wall_s"] / joint["updates"][-1]["wall_s"]
        targets.append(
            _target(
                "replay+EWC update at the last period costs at most 30% of a joint retrain",
                f"{cost:.0%} of the samples, {wall:.0%} of the wall time",
                cost <= 0.30,
            )
        )
        incremental = [u["samples_processed"] for u in main["updates"][1:]]
        if incremental:
            spread = max(incremental) / min(incremental)
            targets.append(
                _target(
                    "replay+EWC update cost flat as periods accumulate",
                    f"max/min samples per update after the first: {spread:.2f}",
                    spread <= 1.5,
                )
            )
    if main:
        forgetting = main["average_forgetting"] or 0.0
        targets.append(
            _target("replay+EWC average forgetting at most 3 points", f"{forgetting * 100:.1f} pts", forgetting <= 0.03)
        )
    if naive and main:
        naive_forgetting = naive["average_forgetting"] or 0.0
        targets.append(
            _target(
                "naive visibly forgets (more than replay+EWC)",
                f"{naive_forgetting * 100:.1f} pts",
                naive_forgetting > (main["average_forgetting"] or 0.0),
            )
        )
    return targets


def _target(name: str, measured: str, met: bool) -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": met}


def write_reports(result: dict[str, Any], folder: Path, *, command: str, stem: str = "learn") -> list[Path]:
    """JSON, a Markdown table and two PNG plots under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    result = {**result, "command": command}
    paths = [
        folder / f"{stem}.json",
        folder / f"{stem}.md",
        folder / f"{stem}_accuracy.png",
        folder / f"{stem}_cost.png",
    ]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(_markdown(result, stem))
    _plot_accuracy(result, paths[2])
    _plot_cost(result, paths[3])
    return paths


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}"


def _markdown(result: dict[str, Any], stem: str) -> str:
    stream, training = result["stream"], result["training"]
    lines = [
        f"# Continual-learning benchmark: {stream['name']}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Device {result['device']}; {len(stream['periods'])} periods; training records per period "
        f"{', '.join(str(v) for v in stream['train_per_period'].values())}; held-out "
        f"{', '.join(str(v) for v in stream['holdout_per_period'].values())}. Training: {training['epochs']} epochs, "
        f"batch {training['batch_size']}, learning rate {training['learning_rate']}, {training['max_length']} tokens.",
        "",
        "| strategy | final avg accuracy (%) | avg forgetting (pts) | BWT (pts) | last update (s) | "
        "samples in last update | total train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["strategies"].items():
        last = r["updates"][-1]
        lines.append(
            f"| {name} | {_pct(r['final_average_accuracy'])} | {_pct(r['average_forgetting'])} | {_pct(r['bwt'])} | "
            f"{last['wall_s']} | {last['samples_processed']} | {r['total_wall_s']} |"
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    lines += ["", "## Accuracy matrices (row: after update on period; column: held-out period, %)", ""]
    periods = stream["periods"]
    for name, r in result["strategies"].items():
        lines += [f"### {name}", "", "| after \\ on | " + " | ".join(periods) + " |", "|---" * (len(periods) + 1) + "|"]
        for period, row in zip(periods, r["accuracy_matrix"], strict=True):
            lines.append(f"| {period} | " + " | ".join(_pct(row.get(p)) if p in row else "" for p in periods) + " |")
        lines.append("")
    lines += [
        f"![accuracy per period after each update]({stem}_accuracy.png)",
        "",
        f"![update cost per period]({stem}_cost.png)",
        "",
    ]
    return "\n".join(lines)


def _plot_accuracy(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = result["strategies"]
    periods = result["stream"]["periods"]
    columns = min(len(strategies), 4)
    rows = (len(strategies) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows), sharey=True, squeeze=False)
    flat = list(axes.flat)
    for axis in flat[len(strategies) :]:
        axis.set_visible(False)
    for axis, (name, r) in zip(flat, strategies.items(), strict=False):
        for period in periods:
            steps = [i for i, row in enumerate(r["accuracy_matrix"]) if period in row]
            axis.plot(
                [periods[i] for i in steps],
                [r["accuracy_matrix"][i][period] for i in steps],
                marker="o",
                label=f"period {period}",
            )
        axis.set_title(name)
        axis.set_xlabel("after update on")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("held-out accuracy")
    flat[0].legend(fontsize=7, loc="lower left")
    figure.suptitle("Accuracy on each period after each update")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_cost(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (samples_axis, wall_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, r in result["strategies"].items():
        labels = [u["period"] for u in r["updates"]]
        samples_axis.plot(labels, [u["samples_processed"] for u in r["updates"]], marker="o", label=name)
        wall_axis.plot(labels, [u["wall_s"] for u in r["updates"]], marker="o", label=name)
    samples_axis.set_title("samples through forward+backward per update")
    wall_axis.set_title("wall time per update (s)")
    for axis in (samples_axis, wall_axis):
        axis.set_xlabel("update on period")
        axis.grid(alpha=0.3)
    wall_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
