"""EWC state over many updates: artifact size and training step time, online vs separate mode.

Ten updates of replay+EWC on the real MiniLM over a stable cohort stream (one period each); after
every update the learner state is written the way a model version stores it, and the training
step time is the median time between consecutive optimizer steps of the update. Online mode keeps one importance
and one anchor whatever the number of updates; separate mode keeps one pair per update and
penalises every pair at every step.

    .venv/bin/python benchmarks/ewc_state.py --updates 10 --per-period 80

writes docs/benchmarks/ewc_state.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

from anamnesis.learner.benchmark import cohort_records, make_stream
from anamnesis.learner.config import EWCConfig, EWCMode, LearnerConfig, TrainingConfig, preset
from anamnesis.learner.engine import train_update
from anamnesis.learner.modeling import load_base_classifier, resolve_device
from anamnesis.learner.progress import ProgressState, TrainingControl
from anamnesis.learner.state import LearnerState

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def run_mode(mode: EWCMode, *, updates: int, per_period: int, seed: int) -> list[dict[str, float]]:
    stream = make_stream(
        cohort_records("stable", periods=updates, per_period=per_period, seed=seed),
        holdout_fraction=0.25,
        name="stable",
    )
    strategy = preset("replay_ewc")
    strategy = strategy.model_copy(update={"ewc": EWCConfig(mode=mode)})
    # One epoch, at least 20 steps for a stable median: this measures state size and time per step.
    # 64 tokens: nearly every note is longer, so every batch has the same shape and the step time
    # moves with the EWC penalty alone, not with the notes an update happens to draw.
    training = TrainingConfig(epochs=1, min_steps=20, max_length=64, seed=seed)
    config = LearnerConfig(strategy=strategy, training=training)
    device = resolve_device("auto")
    bundle, state, seen = None, LearnerState(), []
    rows = []
    for step, period in enumerate(stream.periods):
        fresh = stream.train[period]
        seen = [*seen, *fresh]
        step_ends: list[float] = []

        def time_steps(progress: ProgressState, control: TrainingControl, ends: list[float] = step_ends) -> None:
            if progress.phase == "train":
                ends.append(time.perf_counter())

        started = time.perf_counter()
        trained = train_update(
            bundle,
            state,
            fresh=fresh,
            seen=seen,
            config=config,
            new_bundle=load_base_classifier,
            device=device,
            hook=time_steps,
        )
        wall = time.perf_counter() - started
        # The median time between consecutive optimizer steps: the EWC penalty's cost per step,
        # without the once-per-update Fisher estimate and the first step's warm-up.
        step_s = statistics.median(b - a for a, b in itertools.pairwise(step_ends))
        bundle, state = trained.bundle, trained.state
        with tempfile.TemporaryDirectory() as folder:
            state.save(Path(folder))
            size = sum(path.stat().st_size for path in Path(folder).iterdir())
        rows.append(
            {
                "update": step + 1,
                "state_mb": round(size / 1e6, 2),
                "step_s": round(step_s, 3),
                "wall_s": round(wall, 1),
                "samples": trained.samples_processed,
            }
        )
        print(f"{mode.value}: update {step + 1}: state {size / 1e6:.1f} MB, {step_s:.2f} s/step (median)")
    return rows


def _spread(rows: list[dict[str, float]], key: str) -> float:
    values = [row[key] for row in rows[1:]]  # the first update has no EWC state to carry
    return max(values) / min(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--per-period", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = {
        mode.value: run_mode(mode, updates=args.updates, per_period=args.per_period, seed=args.seed)
        for mode in (EWCMode.online, EWCMode.separate)
    }
    command = f".venv/bin/python benchmarks/ewc_state.py --updates {args.updates} --per-period {args.per_period}"
    summary = {
        mode: {"state_spread": _spread(rows, "state_mb"), "step_spread": _spread(rows, "step_s")}
        for mode, rows in results.items()
    }
    (DOCS / "ewc_state.json").write_text(
        json.dumps({"command": command, "results": results, "summary": summary}, indent=2) + "\n"
    )
    lines = [
        "# EWC state over many updates",
        "",
        f"Command: `{command}` (real MiniLM, replay+EWC, one epoch of at least 20 steps per update, 64 tokens, "
        f"{resolve_device('auto')}).",
        "",
        "| update | online: state (MB) | online: s/step (median) | separate: state (MB) | separate: s/step (median) |",
        "|---|---|---|---|---|",
    ]
    for online, separate in zip(results["online"], results["separate"], strict=True):
        lines.append(
            f"| {online['update']} | {online['state_mb']} | {online['step_s']} | {separate['state_mb']} | "
            f"{separate['step_s']} |"
        )
    lines += [
        "",
        "Spread over updates 2 onward (max/min; target for the default, online mode: within 1.10):",
        "",
        *(
            f"- {mode}: state size {values['state_spread']:.2f}, step time {values['step_spread']:.2f}"
            for mode, values in summary.items()
        ),
        "",
    ]
    (DOCS / "ewc_state.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
