"""The "uncertain" flag served with each prediction: when a clinician should not rely on it.

A prediction is uncertain when any rule finds a reason; each rule says its reason in words, and the
reasons are served together. The rule here: the calibrated top-class confidence is below the
configured `uncertain_below`. Further evidence (similar past patients whose labels disagree with the
prediction) joins as another rule: `assess(...).also(that_rule(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Uncertainty:
    """The reasons not to rely on one prediction; none: it may be relied on."""

    reasons: tuple[str, ...] = ()

    @property
    def uncertain(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str | None:
        """The reasons in one sentence; None when there are none."""
        return "; ".join(self.reasons) or None

    def also(self, reason: str | None) -> Uncertainty:
        """This assessment with one more rule's finding (None: that rule found nothing against it)."""
        return self if reason is None else Uncertainty((*self.reasons, reason))


def low_confidence(confidence: float, *, uncertain_below: float) -> str | None:
    """Why a prediction's calibrated confidence is too low to rely on; None when it is not."""
    if confidence < uncertain_below:
        return f"calibrated confidence {confidence:.3f} is below {uncertain_below:g}"
    return None


def assess(confidence: float, *, uncertain_below: float) -> Uncertainty:
    """The uncertainty of a prediction from its calibrated top-class confidence."""
    return Uncertainty().also(low_confidence(confidence, uncertain_below=uncertain_below))
