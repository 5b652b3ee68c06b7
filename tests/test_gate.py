"""The promotion gate decides on evidence: paired tests on the same records, not point estimates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from anamnesis.learner.config import GateConfig
from anamnesis.learner.evaluation import EvalExample
from anamnesis.learner.gate import Predictions, compare, decide

LABELS = ("surgery", "radiotherapy", "chemotherapy", "immunotherapy")
PERIODS = ("1", "2", "3", "4", "5")  # 1-4 past, 5 new
PER_PERIOD = 200
ACCURACY = 0.7
# How often two versions agree on a held-out record: the pairing is what gives McNemar's test its
# power. Consecutive replay+EWC versions of the mixed benchmark agree on 0.71-0.83 of the records
# after their second update, 0.78 on average (docs/benchmarks/learn.json, agreement_with_previous).
MEASURED_AGREEMENT = 0.78


def _examples(rng: np.random.Generator) -> list[EvalExample]:
    return [
        EvalExample(
            period=period,
            label=LABELS[int(rng.integers(len(LABELS)))],
            site=f"site_{'abc'[int(rng.integers(3))]}",
            sex="FM"[int(rng.integers(2))],
            age=int(rng.integers(40, 90)),
        )
        for period in PERIODS
        for _ in range(PER_PERIOD)
    ]


def _predictions(examples: list[EvalExample], right: np.ndarray) -> Predictions:
    wrong = {label: LABELS[(LABELS.index(label) + 1) % len(LABELS)] for label in LABELS}
    return Predictions(examples, [e.label if ok else wrong[e.label] for e, ok in zip(examples, right, strict=True)])


def _draw(
    seed: int, *, agreement: float = MEASURED_AGREEMENT, loss_on_period_1: float = 0.0
) -> tuple[Predictions, Predictions]:
    """Current and candidate predictions of two versions sharing each record's difficulty.

    Each record has a probability of being classified right, drawn from a beta distribution with
    mean ACCURACY whose spread makes two independent versions agree on `agreement` of the records;
    each version's correctness is its own draw from it. The candidate can lose on period 1 by
    getting a share of its right answers there wrong.
    """
    rng = np.random.default_rng(seed)
    examples = _examples(rng)
    variance = ACCURACY * (1 - ACCURACY) - (1 - agreement) / 2
    concentration = ACCURACY * (1 - ACCURACY) / variance - 1
    difficulty = rng.beta(ACCURACY * concentration, (1 - ACCURACY) * concentration, len(examples))
    current = rng.random(len(examples)) < difficulty
    candidate = rng.random(len(examples)) < difficulty
    if loss_on_period_1:
        on_period_1 = np.array([e.period == "1" for e in examples])
        flipped = on_period_1 & candidate & (rng.random(len(examples)) < loss_on_period_1 / ACCURACY)
        candidate = candidate & ~flipped
    return _predictions(examples, current), _predictions(examples, candidate)


def _accepts(current: Predictions, candidate: Predictions, config: GateConfig) -> bool:
    return decide(candidate=candidate, current=current, new_periods=["5"], config=config).accept


def test_an_equally_good_candidate_is_accepted_in_at_least_95_of_100_draws() -> None:
    config = GateConfig()
    accepted = sum(_accepts(*_draw(seed), config) for seed in range(100))
    assert accepted >= 95
    # The old rule (a point estimate against a 1-point tolerance) rejects most of them on noise.
    strict = GateConfig(tolerance=0.01, significance=0.999)
    assert sum(_accepts(*_draw(seed), strict) for seed in range(100)) < 50


def _rejected(loss: float, agreement: float) -> int:
    draws = (_draw(seed, agreement=agreement, loss_on_period_1=loss) for seed in range(100))
    return sum(not _accepts(current, candidate, GateConfig()) for current, candidate in draws)


def test_a_10_point_loss_on_a_period_of_200_is_rejected_in_95_of_100_when_versions_agree_on_97_percent() -> None:
    assert _rejected(0.10, agreement=0.97) >= 95


def test_at_the_measured_agreement_the_gate_catches_15_point_losses_and_half_of_the_10_point_ones() -> None:
    """The power the gate has on 200 held-out records per period with versions as different as the
    benchmark's (docs/learner.md, "The gate"): the issue's 95 of 100 at 10 points is not reached."""
    assert _rejected(0.15, agreement=MEASURED_AGREEMENT) >= 80
    assert _rejected(0.10, agreement=MEASURED_AGREEMENT) >= 45


def test_each_check_records_its_paired_interval_and_adjusted_p_value() -> None:
    current, candidate = _draw(7, loss_on_period_1=0.15)
    decision = decide(candidate=candidate, current=current, new_periods=["5"], config=GateConfig())
    assert not decision.accept
    period_1 = next(check for check in decision.checks if check.name == "period 1")
    assert not period_1.passed and period_1.n == PER_PERIOD
    low, high = period_1.interval
    assert low < period_1.difference < high < 0  # the whole interval is a loss
    assert period_1.p_value < 0.05 and "loses" in period_1.detail
    stored = decision.model_dump(mode="json")
    assert stored["checks"][0]["name"] == "new_data" and "interval" in stored["checks"][0]
    # Every other period passes: its loss, if any, is within the noise.
    assert all(check.passed for check in decision.checks if check.name in ("period 2", "period 3", "period 4"))


def test_mcnemar_counts_only_the_records_where_the_two_disagree() -> None:
    comparison = compare([True, True, False, False, True], [True, False, True, False, False])
    assert (comparison.candidate_only, comparison.baseline_only, comparison.n) == (2, 1, 5)
    assert comparison.difference == pytest.approx(0.2)
    # 10 records the candidate alone gets wrong, none it alone gets right: p = 0.5 ** 10.
    many = compare([False] * 10 + [True] * 90, [True] * 100)
    assert many.p_worse() == pytest.approx(0.5**10)
    assert compare([True] * 5, [True] * 5).p_worse() == 1.0
    # The exact tail equals scipy's binomial survival function (the gate imports no scipy).
    for worse, better in ((3, 40), (40, 3), (700, 760), (0, 12)):
        mixed = compare(
            [False] * worse + [True] * better + [True] * 50, [True] * worse + [False] * better + [True] * 50
        )
        discordant = worse + better
        assert mixed.p_worse() == pytest.approx(float(binom.sf(worse - 1, discordant, 0.5)), rel=1e-9, abs=1e-300)
        assert mixed.p_better() == pytest.approx(float(binom.sf(better - 1, discordant, 0.5)), rel=1e-9, abs=1e-300)


def test_a_gate_with_nothing_to_compare_rejects_and_says_why() -> None:
    examples = [EvalExample(period="1", label="surgery", site="a", sex=None, age=None)] * 3
    predictions = Predictions(examples, ["surgery"] * 3)
    # No new period and period 1 is below min_period_size: no check at all.
    decision = decide(candidate=predictions, current=predictions, new_periods=[], config=GateConfig())
    assert not decision.accept and decision.checks == ()
    assert "no comparable held-out records" in decision.summary


def test_the_first_model_must_beat_the_reference_and_reach_the_floor() -> None:
    rng = np.random.default_rng(0)
    examples = _examples(rng)[:300]
    truth = np.ones(300, dtype=bool)
    good = _predictions(examples, rng.random(300) < 0.8)
    weak = _predictions(examples, rng.random(300) < 0.55)
    reference = _predictions(examples, rng.random(300) < 0.65)
    config = GateConfig(min_accuracy=0.5)
    accepted = decide(candidate=good, current=None, new_periods=["1"], config=config, reference=reference)
    assert accepted.accept and {check.name for check in accepted.checks} == {"floor", "reference"}
    below_reference = decide(candidate=weak, current=None, new_periods=["1"], config=config, reference=reference)
    assert not below_reference.accept and "does not beat the reference" in below_reference.summary
    below_floor = decide(
        candidate=weak, current=None, new_periods=["1"], config=GateConfig(min_accuracy=0.6), reference=None
    )
    assert not below_floor.accept and "below the floor" in below_floor.summary
    perfect = _predictions(examples, truth)
    assert decide(candidate=perfect, current=None, new_periods=["1"], config=config, reference=reference).accept
