"""What a learner must carry from one update to the next, stored beside each model version.

EWC importances and reference parameters and the replay buffer's sampling weights are tensors
(safetensors); the buffer's membership is a list of record ids and targets (JSON): the samples
themselves are read back from storage, never copied into the artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from anamnesis.learner.config import ReplayPolicy

STATE_JSON = "learner_state.json"
STATE_TENSORS = "learner_state.safetensors"


@dataclass
class BufferGroup:
    """One group of the replay buffer (a class, an experience, or the whole reservoir)."""

    key: int
    max_size: int
    record_ids: list[int]
    targets: list[int]
    weights: torch.Tensor
    """Reservoir-sampling weights, sorted descending: they decide future evictions."""


@dataclass
class ReplayState:
    policy: ReplayPolicy
    groups: list[BufferGroup]
    seen_classes: list[int] = field(default_factory=list)
    experiences: int = 0

    def record_ids(self) -> list[int]:
        return [record_id for group in self.groups for record_id in group.record_ids]


@dataclass
class EWCState:
    importances: dict[int, dict[str, torch.Tensor]]
    """Per experience counter: parameter name -> Fisher diagonal."""
    saved_params: dict[int, dict[str, torch.Tensor]]
    """Per experience counter: parameter name -> the weights the penalty pulls toward."""


@dataclass
class LearnerState:
    experiences_trained: int = 0
    replay: ReplayState | None = None
    ewc: EWCState | None = None

    def save(self, folder: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, object] = {"experiences_trained": self.experiences_trained, "replay": None, "ewc": None}
        if self.replay is not None:
            meta["replay"] = {
                "policy": self.replay.policy.value,
                "seen_classes": sorted(self.replay.seen_classes),
                "experiences": self.replay.experiences,
                "groups": [
                    {"key": g.key, "max_size": g.max_size, "record_ids": g.record_ids, "targets": g.targets}
                    for g in self.replay.groups
                ],
            }
            for group in self.replay.groups:
                tensors[f"replay/{group.key}/weights"] = group.weights.detach().cpu().contiguous()
        if self.ewc is not None:
            meta["ewc"] = {"experiences": sorted(self.ewc.importances)}
            for kind, values in (("importance", self.ewc.importances), ("params", self.ewc.saved_params)):
                for counter, named in values.items():
                    for name, tensor in named.items():
                        tensors[f"ewc/{kind}/{counter}/{name}"] = tensor.detach().cpu().contiguous()
        (folder / STATE_JSON).write_text(json.dumps(meta, indent=1))
        save_file(tensors, str(folder / STATE_TENSORS))

    @classmethod
    def load(cls, folder: Path) -> LearnerState:
        meta = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
        replay = None
        if meta["replay"] is not None:
            replay_meta = meta["replay"]
            replay = ReplayState(
                policy=ReplayPolicy(replay_meta["policy"]),
                seen_classes=list(replay_meta["seen_classes"]),
                experiences=replay_meta["experiences"],
                groups=[
                    BufferGroup(
                        key=g["key"],
                        max_size=g["max_size"],
                        record_ids=list(g["record_ids"]),
                        targets=list(g["targets"]),
                        weights=tensors[f"replay/{g['key']}/weights"],
                    )
                    for g in replay_meta["groups"]
                ],
            )
        ewc = None
        if meta["ewc"] is not None:
            importances: dict[int, dict[str, torch.Tensor]] = {c: {} for c in meta["ewc"]["experiences"]}
            saved: dict[int, dict[str, torch.Tensor]] = {c: {} for c in meta["ewc"]["experiences"]}
            for key, tensor in tensors.items():
                if key.startswith("ewc/"):
                    _, kind, counter, name = key.split("/", 3)
                    (importances if kind == "importance" else saved)[int(counter)][name] = tensor
            ewc = EWCState(importances=importances, saved_params=saved)
        return cls(experiences_trained=meta["experiences_trained"], replay=replay, ewc=ewc)
