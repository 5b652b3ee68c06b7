"""Narrow progress and control objects handed to hooks (never the trainer itself)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ProgressState:
    phase: Literal["prepare", "train", "evaluate", "save"]
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    samples: int = 0
    loss: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        """Progress of the training phase, 0..1."""
        if self.epochs == 0 or self.steps == 0:
            return 0.0
        return min(((self.epoch - 1) * self.steps + self.step) / (self.epochs * self.steps), 1.0)

    def describe(self) -> str:
        if self.phase != "train":
            return self.message or self.phase
        loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
        return f"epoch {self.epoch}/{self.epochs}, step {self.step}/{self.steps}{loss}"


@dataclass
class TrainingControl:
    """What a hook may ask of the training loop."""

    should_stop: bool = False


ProgressHook = Callable[[ProgressState, TrainingControl], None]
