"""Evaluation of a model on every period: accuracy matrix, forgetting, backward transfer, subgroups.

Definitions (R[i][p] is the accuracy on period p's held-out slice after update i; period p was
first trained on at update s(p); T is the last update):
- average accuracy: mean over the periods trained so far of R[T][p];
- forgetting (Chaudhry et al. 2018): for each earlier period, the best accuracy any update from
  s(p) to T-1 reached on it minus R[T][p]; averaged over those periods;
- backward transfer (Lopez-Paz & Ranzato 2017): mean over earlier periods of R[T][p] - R[s(p)][p].
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class StoredResult(BaseModel):
    """A result the learner stores: written with `model_dump(mode="json")`, read with `model_validate`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Scores(StoredResult):
    accuracy: float | None = Field(description="Share of records predicted right; None when there are none.")
    macro_f1: float | None = Field(description="Macro-F1 over the classes present in truth or prediction.")
    n: int = Field(ge=0, description="Records scored.")


class Evaluation(StoredResult):
    """Scores of one model on held-out records: overall, per period and per subgroup."""

    overall: Scores
    per_period: dict[str, Scores] = Field(description="Period -> scores on its held-out records.")
    per_subgroup: dict[str, dict[str, Scores]] = Field(
        description="Subgroup kind (site, sex, age_band) -> group -> scores."
    )

    def accuracy_row(self) -> dict[str, float]:
        """Period -> accuracy: this model's row of an accuracy matrix."""
        return {period: s.accuracy for period, s in self.per_period.items() if s.accuracy is not None}


class ContinualMetrics(StoredResult):
    """Average accuracy, forgetting and backward transfer of the last row of an accuracy matrix."""

    average_accuracy: float | None = Field(description="Mean accuracy over the periods trained so far.")
    forgetting: float | None = Field(description="Mean over earlier periods of best-earlier minus final accuracy.")
    bwt: float | None = Field(description="Backward transfer: mean of final minus first accuracy on earlier periods.")
    forgetting_per_period: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class EvalExample:
    """What evaluation needs to know about one held-out record besides its input."""

    period: str
    label: str
    site: str
    sex: str | None
    age: int | None


def age_band(age: int | None) -> str | None:
    if age is None:
        return None
    if age < 50:
        return "<50"
    if age < 65:
        return "50-64"
    if age < 75:
        return "65-74"
    return "75+"


def score(truth: Sequence[str], predicted: Sequence[str]) -> Scores:
    """Accuracy, macro-F1 (over the classes present in truth or prediction) and the count."""
    if not truth:
        return Scores(accuracy=None, macro_f1=None, n=0)
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    from sklearn.metrics import f1_score  # here: the API's schemas import this module, not scikit-learn

    macro_f1 = f1_score(truth, predicted, average="macro", zero_division=0)
    return Scores(accuracy=correct / len(truth), macro_f1=float(macro_f1), n=len(truth))


SUBGROUPS = ("site", "sex", "age_band")


def subgroup_of(example: EvalExample, name: str) -> str | None:
    """The example's group under one of SUBGROUPS (None when unknown)."""
    if name == "site":
        return example.site
    if name == "sex":
        return example.sex
    return age_band(example.age)


def evaluate(examples: Sequence[EvalExample], predicted: Sequence[str]) -> Evaluation:
    """Scores per period, per subgroup (site, sex, age band) and overall."""
    by_period: dict[str, list[int]] = defaultdict(list)
    by_group: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in SUBGROUPS}
    for index, example in enumerate(examples):
        by_period[example.period].append(index)
        for name in SUBGROUPS:
            group = subgroup_of(example, name)
            if group is not None:
                by_group[name][group].append(index)

    def subset(indices: list[int]) -> Scores:
        return score([examples[i].label for i in indices], [predicted[i] for i in indices])

    return Evaluation(
        overall=subset(list(range(len(examples)))),
        per_period={period: subset(indices) for period, indices in by_period.items()},
        per_subgroup={
            name: {group: subset(indices) for group, indices in sorted(groups.items())}
            for name, groups in by_group.items()
        },
    )


def continual_metrics(
    matrix: Sequence[Mapping[str, float]], learned_at: Mapping[str, int], trained_periods: Sequence[str]
) -> ContinualMetrics:
    """Average accuracy, forgetting and BWT of the last row of `matrix` (see the module docstring).

    matrix[i] maps period to accuracy after update i; learned_at maps a period to the update that
    first trained on it; trained_periods are the periods the last update has been trained on.
    """
    last = len(matrix) - 1
    final = matrix[last]
    seen = [period for period in trained_periods if period in final]
    earlier = [period for period in seen if learned_at.get(period, last) < last]
    forgetting: dict[str, float] = {}
    transfer: dict[str, float] = {}
    for period in earlier:
        start = learned_at[period]
        history = [matrix[i][period] for i in range(start, last) if period in matrix[i]]
        if history:
            forgetting[period] = max(history) - final[period]
        if period in matrix[start]:
            transfer[period] = final[period] - matrix[start][period]
    return ContinualMetrics(
        average_accuracy=_mean([final[period] for period in seen]),
        forgetting=_mean(list(forgetting.values())),
        bwt=_mean(list(transfer.values())),
        forgetting_per_period=forgetting,
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
