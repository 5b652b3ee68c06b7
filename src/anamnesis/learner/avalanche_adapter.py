"""The one module that imports avalanche: the model glue, the strategy factory and state transfer.

Avalanche's stock strategies and plugins expect each sample to be one tensor and call `.to()` on
every minibatch element, so a sample is one packed `[3, W]` tensor (token ids, attention mask,
field features) and `PackedClassifier` unpacks it for the record classifier. Samples have their
own lengths; batches are padded to their longest member (dynamic padding).
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from anamnesis.learner.config import (
    ClassWeighting,
    DistillationConfig,
    EWCConfig,
    EWCMode,
    FinetuneMode,
    LearnerConfig,
    ReplayConfig,
    ReplayPolicy,
    ReplaySource,
    TrainingConfig,
)
from anamnesis.learner.data import Sample
from anamnesis.learner.modeling import ModelBundle, RecordClassifier, is_head_parameter, seed_everything
from anamnesis.learner.progress import ProgressHook, ProgressState, TrainingControl
from anamnesis.learner.state import BufferGroup, EWCState, LearnerState, ReplayState

if TYPE_CHECKING:
    from peft import PeftModel


def _avalanche_home_is_usable() -> bool:
    folder = Path.home() / ".avalanche"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return (folder / "config.json").exists() or os.access(folder, os.W_OK)


def _import_avalanche() -> None:
    """Avalanche writes ~/.avalanche/config.json on import and fails when HOME is read-only."""
    if _avalanche_home_is_usable():
        import avalanche.training

        return
    with tempfile.TemporaryDirectory(prefix="avalanche-home-") as home, mock.patch.dict(os.environ, {"HOME": home}):
        import avalanche.training  # noqa: F401


_import_avalanche()

from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience  # noqa: E402
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream  # noqa: E402
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute  # noqa: E402
from avalanche.benchmarks.utils.flat_data import ConstantSequence  # noqa: E402
from avalanche.training import Naive  # noqa: E402
from avalanche.training.plugins import EWCPlugin, ReplayPlugin, SupervisedPlugin  # noqa: E402
from avalanche.training.plugins.evaluation import EvaluationPlugin  # noqa: E402
from avalanche.training.storage_policy import (  # noqa: E402
    BalancedExemplarsBuffer,
    ClassBalancedBuffer,
    ExemplarsBuffer,
    ExperienceBalancedBuffer,
    ReservoirSamplingBuffer,
)
from avalanche.training.utils import ParamData  # noqa: E402

# --- inputs ---------------------------------------------------------------------------------


class PackedClassifier(nn.Module):
    """Calls the record classifier on packed `[B, 3, W]` float inputs; bf16 autocast on CUDA.

    Row 0 holds the token ids, row 1 the attention mask (both left-aligned and zero-padded), row 2
    the field features in its first `field_dim` columns. Token ids below 2**24 are exact in float32.
    """

    def __init__(self, model: RecordClassifier, *, trained: nn.Module | None = None) -> None:
        """`trained`: what runs in place of `model` (its LoRA wrapper), when not the model itself."""
        super().__init__()
        self.hf = trained if trained is not None else model
        self.field_dim = model.spec.field_dim if model.spec.uses_features else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = int(x[:, 1].sum(dim=1).max())
        ids, mask = x[:, 0, :length].long(), x[:, 1, :length].long()
        features = x[:, 2, : self.field_dim]
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            logits: torch.Tensor = self.hf(ids, mask, features)
        return logits.float()


TEACHER_ROW = 3
"""The packed row that carries the parent's logits (then a 1 marking them) of a distilled sample."""


def pack_sample(sample: Sample) -> torch.Tensor:
    """One sample as the `[3, W]` tensor `PackedClassifier` reads; `[4, W]` with the parent's logits."""
    features = sample.features if sample.features is not None else np.zeros(0, dtype=np.float32)
    teacher = sample.teacher_logits
    length = len(sample.input_ids)
    width = max(length, len(features), 0 if teacher is None else len(teacher) + 1)
    packed = torch.zeros(3 if teacher is None else TEACHER_ROW + 1, width, dtype=torch.float32)
    packed[0, :length] = torch.tensor(sample.input_ids, dtype=torch.float32)
    packed[1, :length] = 1.0
    packed[2, : len(features)] = torch.from_numpy(np.asarray(features, dtype=np.float32))
    if teacher is not None:
        packed[TEACHER_ROW, : len(teacher)] = torch.from_numpy(np.asarray(teacher, dtype=np.float32))
        packed[TEACHER_ROW, len(teacher)] = 1.0
    return packed


class _SampleTensors(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, samples: Sequence[Sample]) -> None:
        self._inputs = [pack_sample(sample) for sample in samples]
        self._targets = [sample.target for sample in samples]

    def __len__(self) -> int:
        return len(self._inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._inputs[index], self._targets[index]


def pad_collate(batch: Sequence[tuple[Any, ...]]) -> list[torch.Tensor]:
    """Pads `[3 or 4, W_i]` samples to the widest of the batch with zeros (pad id 0, mask 0, no teacher)."""
    widest = max(item[0].shape[1] for item in batch)
    rows = max(item[0].shape[0] for item in batch)
    inputs = torch.zeros(len(batch), rows, widest, dtype=torch.float32)
    for row, item in enumerate(batch):
        inputs[row, : item[0].shape[0], : item[0].shape[1]] = item[0]
    rest = [torch.tensor([item[k] for item in batch]) for k in range(1, len(batch[0]))]
    return [inputs, *rest]


def make_dataset(samples: Sequence[Sample]) -> AvalancheDataset:
    """An avalanche dataset of encoded samples; record ids ride along as a data attribute."""
    targets = [sample.target for sample in samples]
    return AvalancheDataset(
        [_SampleTensors(samples)],
        collate_fn=pad_collate,
        data_attributes=[
            DataAttribute(targets, "targets"),
            DataAttribute(ConstantSequence(0, len(samples)), "targets_task_labels", use_in_getitem=True),
            # Not in the sample tuple: the template takes the last element as the task label.
            DataAttribute([sample.record_id for sample in samples], "record_id"),
        ],
    )


def make_experience(dataset: AvalancheDataset, index: int) -> DatasetExperience:
    experience = DatasetExperience(dataset=dataset, current_experience=index)
    experience.origin_stream = EagerCLStream("train", [experience], set_stream_info=False)
    return experience


# --- length-bucketed, seeded batches ---------------------------------------------------------


class _BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, sort within windows of 50 batches, shuffle the batches."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        window = self.batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda index: self.lengths[index])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for position in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[position]

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class _PaddingNaive(Naive):
    """Naive fine-tuning whose training loader pads dynamically and shuffles from its own seed.

    Avalanche 0.6's default training loader ignores the dataset's collate function. ReplayPlugin
    replaces this loader with its own (which does honour it) once its buffer holds samples.
    """

    def __init__(self, *, lengths_by_record: Mapping[int, int], bucket: bool, seed: int, **options: Any) -> None:
        super().__init__(**options)
        self._lengths_by_record = lengths_by_record
        self._bucket = bucket
        self._generator = torch.Generator().manual_seed(seed)

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, **_: Any) -> None:
        dataset = self.adapted_dataset
        if self._bucket:
            lengths = [self._lengths_by_record[record_id] for record_id in dataset.record_id]
            sampler = _BucketBatchSampler(lengths, self.train_mb_size, self._generator)
            self.dataloader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate_fn)
        else:
            self.dataloader = DataLoader(
                dataset,
                batch_size=self.train_mb_size,
                shuffle=shuffle,
                collate_fn=dataset.collate_fn,
                generator=self._generator,
                num_workers=num_workers,
            )


# --- plugins ---------------------------------------------------------------------------------


class _ProgressPlugin(SupervisedPlugin):
    """Reports progress through a narrow hook and lets the hook stop training."""

    def __init__(self, hook: ProgressHook | None, epochs: int) -> None:
        super().__init__()
        self.hook = hook
        self.epochs = epochs
        self.samples = 0
        self.steps = 0
        self.control = TrainingControl()
        self._steps_in_epoch = 0

    def before_training_epoch(self, strategy: Naive, **_: Any) -> None:
        self._steps_in_epoch = len(strategy.dataloader)

    def after_training_iteration(self, strategy: Naive, **_: Any) -> None:
        self.samples += int(strategy.mb_x.shape[0])
        self.steps += 1
        if self.hook is not None:
            clock = strategy.clock
            state = ProgressState(
                phase="train",
                epoch=clock.train_exp_epochs + 1,
                epochs=self.epochs,
                step=clock.train_epoch_iterations + 1,
                steps=self._steps_in_epoch,
                samples=self.samples,
                loss=float(strategy.loss.detach()),
            )
            self.hook(state, self.control)
        if self.control.should_stop:
            strategy.stop_training()


class _LinearWarmupDecay(SupervisedPlugin):
    """Linear warmup then linear decay over the update's steps (counted once the loader is known)."""

    def __init__(self, warmup_fraction: float, epochs: int) -> None:
        super().__init__()
        self.warmup_fraction = warmup_fraction
        self.epochs = epochs
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None

    def before_training_epoch(self, strategy: Naive, **_: Any) -> None:
        if self.scheduler is not None:
            return
        total = max(self.epochs * len(strategy.dataloader), 1)
        warmup = max(int(total * self.warmup_fraction), 1 if self.warmup_fraction > 0 else 0)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(total - step, 0) / max(total - warmup, 1)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(strategy.optimizer, factor)

    def after_update(self, strategy: Naive, **_: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.step()


class NormalizedEWCPlugin(EWCPlugin):
    """EWC on the trainable parameters with a Fisher diagonal of mean 1 and a bounded estimate.

    Normalising makes `ewc_lambda` mean the same whatever the model's gradient scale (on MiniLM the
    raw diagonal is tiny, and lambda=1e3 has no effect); frozen parameters carry no penalty and no
    state; `fisher_batches` bounds the extra pass over the experience.
    """

    def __init__(self, config: EWCConfig) -> None:
        super().__init__(
            ewc_lambda=config.ewc_lambda,
            mode=config.mode.value,
            decay_factor=config.decay_factor if config.mode == EWCMode.online else None,
            keep_importance_data=config.mode == EWCMode.separate,
        )
        self.normalize = config.normalize_importance
        self.fisher_batches = config.fisher_batches
        self.include_head = config.include_head
        self.last_penalty = 0.0

    def _penalised(self, name: str, param: nn.Parameter) -> bool:
        return param.requires_grad and (self.include_head or not is_head_parameter(name))

    def before_backward(self, strategy: Naive, **kwargs: Any) -> None:
        before = float(strategy.loss.detach())
        super().before_backward(strategy, **kwargs)
        self.last_penalty = float(strategy.loss.detach()) - before

    def after_training_exp(self, strategy: Naive, **kwargs: Any) -> None:
        counter = strategy.clock.train_exp_counter
        importances = self.compute_importances(
            strategy.model,
            strategy._criterion,
            strategy.optimizer,
            strategy.experience.dataset,
            strategy.device,
            strategy.train_mb_size,
        )
        self.update_importances(importances, counter)
        self.saved_params[counter] = {
            name: ParamData(f"params_{name}", init_tensor=param.detach().clone())
            for name, param in strategy.model.named_parameters()
            if self._penalised(name, param)
        }
        if counter > 0 and not self.keep_importance_data:
            self.saved_params.pop(counter - 1, None)

    @torch.no_grad()
    def update_importances(self, importances: dict[str, ParamData], t: int) -> None:
        """Online mode: decay the running importance and add the new one, matched by parameter name
        (avalanche matches by position, which breaks once the importance was restored from storage)."""
        previous = self.importances.get(t - 1) if self.mode == "online" else None
        if previous is None:
            self.importances[t] = importances
            return
        self.importances[t] = {
            name: ParamData(
                f"imp_{name}",
                init_tensor=imp.data + self.decay_factor * previous[name].data if name in previous else imp.data,
            )
            for name, imp in importances.items()
        }
        del self.importances[t - 1]

    def compute_importances(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: Any,
        dataset: Any,
        device: Any,
        batch_size: int,
        num_workers: int = 0,
    ) -> dict[str, ParamData]:
        model.eval()
        trainable = {name: param for name, param in model.named_parameters() if self._penalised(name, param)}
        sums = {name: torch.zeros_like(param) for name, param in trainable.items()}
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate_fn, shuffle=False)
        batches = 0
        for batch in loader:
            if self.fisher_batches is not None and batches >= self.fisher_batches:
                break
            inputs, targets = batch[0].to(device), batch[1].to(device)
            optimizer.zero_grad()
            criterion(model(inputs), targets).backward()
            for name, param in trainable.items():
                if param.grad is not None:
                    sums[name] += param.grad.detach().pow(2)
            batches += 1
        optimizer.zero_grad()
        model.train()
        scale = 1.0 / max(batches, 1)
        if self.normalize:
            total = sum(float(value.sum()) for value in sums.values())
            count = sum(value.numel() for value in sums.values())
            scale = count / total if total > 0 else 1.0
        return {name: ParamData(f"imp_{name}", init_tensor=value * scale) for name, value in sums.items()}


class ParentDistillationPlugin(SupervisedPlugin):
    """Positive-congruent distillation (`DistillationConfig`): on the minibatch's samples that carry the
    parent's logits (those the parent got right), adds weight x T^2 x KL(parent_T || candidate_T), averaged
    over the minibatch; the parent's distribution gives the classes it did not have probability 0."""

    def __init__(self, config: DistillationConfig, parent_classes: int) -> None:
        super().__init__()
        self.config = config
        self.parent_classes = parent_classes

    def before_backward(self, strategy: Naive, **_: Any) -> None:
        inputs: torch.Tensor = strategy.mb_x
        if inputs.shape[1] <= TEACHER_ROW or self.config.weight == 0:
            return
        classes, temperature = self.parent_classes, self.config.temperature
        distilled = inputs[:, TEACHER_ROW, classes]
        if not bool(distilled.any()):
            return
        teacher = torch.log_softmax(inputs[:, TEACHER_ROW, :classes] / temperature, dim=-1)
        # Over every class of the candidate: probability it moves to a new class is a loss too (the parent
        # gave it none), which a softmax over the parent's classes alone would not see.
        student = torch.log_softmax(strategy.mb_output / temperature, dim=-1)[:, :classes]
        divergence = (teacher.exp() * (teacher - student)).sum(dim=-1)
        term = (divergence * distilled).sum() / len(inputs)
        strategy.loss += self.config.weight * temperature**2 * term


class HistoryReplayPlugin(SupervisedPlugin):
    """Replays records drawn from the stored history: they join the experience's training data.

    The draw (`learner.replay.select_replay`) is made per update from every labeled record, with
    current labels; mixed into the experience, replayed samples are shuffled and length-bucketed
    with the new ones, so every minibatch holds both in proportion.
    """

    def __init__(self, replayed: Sequence[Sample]) -> None:
        super().__init__()
        self.replayed = make_dataset(replayed)

    def after_train_dataset_adaptation(self, strategy: Naive, **_: Any) -> None:
        strategy.adapted_dataset = strategy.adapted_dataset.concat(self.replayed)


class _ReplayPlugin(ReplayPlugin):
    """ReplayPlugin that updates its buffer through the storage policy's current API.

    Avalanche 0.6's ReplayPlugin calls the deprecated `ExemplarsBuffer.update`, which only
    forwards to `post_adapt` and warns on every experience.
    """

    def after_training_exp(self, strategy: Naive, **_: Any) -> None:
        self.storage_policy.post_adapt(strategy, strategy.experience)


def make_storage_policy(config: ReplayConfig) -> ExemplarsBuffer:
    """The injected replay storage policy."""
    if config.policy == ReplayPolicy.class_balanced:
        return ClassBalancedBuffer(max_size=config.mem_size, adaptive_size=True)
    if config.policy == ReplayPolicy.experience_balanced:
        return ExperienceBalancedBuffer(max_size=config.mem_size, adaptive_size=True)
    return ReservoirSamplingBuffer(max_size=config.mem_size)


# --- state transfer --------------------------------------------------------------------------


def _capture_replay(policy: ExemplarsBuffer, config: ReplayConfig) -> ReplayState:
    if isinstance(policy, BalancedExemplarsBuffer):
        groups = {key: group for key, group in policy.buffer_groups.items()}
    else:
        groups = {0: policy}
    return ReplayState(
        policy=config.policy,
        groups=[
            BufferGroup(
                key=int(key),
                max_size=int(group.max_size),
                record_ids=[int(i) for i in group.buffer.record_id] if len(group.buffer) else [],
                targets=[int(t) for t in group.buffer.targets] if len(group.buffer) else [],
                weights=group._buffer_weights.clone(),
            )
            for key, group in groups.items()
        ],
        seen_classes=sorted(int(c) for c in getattr(policy, "seen_classes", set())),
        experiences=int(getattr(policy, "_num_exps", 0)),
    )


SampleLookup = Callable[[Sequence[int]], Mapping[int, Sample]]
"""Returns the tokenised samples of the given record ids (the replay buffer's members)."""


def _regrouped_by_current_class(groups: Sequence[BufferGroup], members: Mapping[int, Sample]) -> list[BufferGroup]:
    """Class-balanced groups after relabels: each member moves to the group of its current class."""
    entries: dict[int, list[tuple[float, int]]] = {group.key: [] for group in groups}
    sizes = {group.key: group.max_size for group in groups}
    for group in groups:
        for record_id, weight in zip(group.record_ids, group.weights.tolist(), strict=True):
            entries.setdefault(members[record_id].target, []).append((weight, record_id))
    regrouped = []
    for key, members_of_class in entries.items():
        members_of_class.sort(reverse=True)  # reservoir weights stay sorted descending
        regrouped.append(
            BufferGroup(
                key=key,
                max_size=max(sizes.get(key, 0), len(members_of_class)),
                record_ids=[record_id for _, record_id in members_of_class],
                targets=[members[record_id].target for _, record_id in members_of_class],
                weights=torch.tensor([weight for weight, _ in members_of_class], dtype=torch.float32),
            )
        )
    return [group for group in regrouped if group.record_ids or group.key in sizes]


def _restore_replay(policy: ExemplarsBuffer, state: ReplayState, lookup: SampleLookup) -> None:
    """Rebuilds the buffer from stored membership; samples carry each record's *current* label."""
    members = lookup(state.record_ids())
    missing = [record_id for record_id in state.record_ids() if record_id not in members]
    if missing:
        raise LookupError(f"replay buffer records {missing[:5]} are no longer stored")

    def group_buffer(group: BufferGroup) -> ReservoirSamplingBuffer:
        buffer = ReservoirSamplingBuffer(group.max_size)
        buffer.buffer = make_dataset([members[record_id] for record_id in group.record_ids])
        buffer._buffer_weights = group.weights.clone()
        return buffer

    if isinstance(policy, BalancedExemplarsBuffer):
        groups = state.groups
        if isinstance(policy, ClassBalancedBuffer):
            groups = _regrouped_by_current_class(groups, members)
            policy.seen_classes = set(state.seen_classes) | {group.key for group in groups}
        policy.buffer_groups = {group.key: group_buffer(group) for group in groups}
        if isinstance(policy, ExperienceBalancedBuffer):
            policy._num_exps = state.experiences
    elif state.groups:
        restored = group_buffer(state.groups[0])
        policy.buffer, policy._buffer_weights = restored.buffer, restored._buffer_weights


def _capture_ewc(plugin: NormalizedEWCPlugin) -> EWCState:
    return EWCState(
        importances={c: {n: p.data.detach().cpu() for n, p in d.items()} for c, d in plugin.importances.items()},
        saved_params={c: {n: p.data.detach().cpu() for n, p in d.items()} for c, d in plugin.saved_params.items()},
    )


def _restore_ewc(plugin: NormalizedEWCPlugin, state: EWCState, device: torch.device) -> None:
    for counter, named in state.importances.items():
        plugin.importances[counter] = {n: ParamData(f"imp_{n}", init_tensor=t.to(device)) for n, t in named.items()}
    for counter, named in state.saved_params.items():
        plugin.saved_params[counter] = {n: ParamData(f"params_{n}", init_tensor=t.to(device)) for n, t in named.items()}


# --- one update ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperienceResult:
    state: LearnerState
    samples_processed: int
    """New and replayed samples that went through forward and backward passes."""
    steps: int
    stopped_early: bool
    last_ewc_penalty: float


def class_weights(targets: Sequence[int], classes: int, device: torch.device) -> torch.Tensor:
    """Balanced loss weights, n / (present classes x count); classes without samples keep 1."""
    counts = torch.bincount(torch.tensor(list(targets), dtype=torch.long), minlength=classes).double()
    present = counts > 0
    weights = torch.ones(classes, dtype=torch.double)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float().to(device)


def train_experience(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    *,
    config: LearnerConfig,
    state: LearnerState,
    lookup: SampleLookup,
    device: torch.device,
    replayed: Sequence[Sample] = (),
    parent_classes: int = 0,
    hook: ProgressHook | None = None,
) -> ExperienceResult:
    """Trains `bundle.model` in place on one experience and returns the learner's next state.

    replayed: samples drawn from the stored history (replay source `history`), trained on with the
    new ones; lookup: finds the stored members of a replay buffer (source `buffer`); parent_classes:
    how many of the first classes the samples' parent logits cover (distillation; 0: no parent).
    """
    if not samples:
        raise ValueError("an experience needs at least one sample")
    training, strategy_config = config.training, config.strategy
    seed_everything(training.seed + state.experiences_trained)
    if training.freeze_word_embeddings:
        bundle.model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    lora_model = _with_lora(bundle.model, config) if strategy_config.finetune == FinetuneMode.lora else None
    wrapper = PackedClassifier(bundle.model, trained=lora_model).to(device)

    epochs = update_epochs(training, len(samples) + len(replayed))
    progress = _ProgressPlugin(hook, epochs)
    plugins: list[SupervisedPlugin] = [progress, _LinearWarmupDecay(training.warmup_fraction, epochs)]
    replay_plugin = ewc_plugin = None
    if replayed:
        plugins.append(HistoryReplayPlugin(replayed))
    if strategy_config.replay is not None and strategy_config.replay.source == ReplaySource.buffer:
        policy = make_storage_policy(strategy_config.replay)
        if state.replay is not None:
            _restore_replay(policy, state.replay, lookup)
        replay_plugin = _ReplayPlugin(
            mem_size=strategy_config.replay.mem_size,
            batch_size_mem=strategy_config.replay.batch_size_mem,
            storage_policy=policy,
        )
        plugins.append(replay_plugin)
    if strategy_config.distillation is not None and parent_classes:
        plugins.append(ParentDistillationPlugin(strategy_config.distillation, parent_classes))
    if strategy_config.ewc is not None:
        ewc_plugin = NormalizedEWCPlugin(strategy_config.ewc)
        if state.ewc is not None:
            _restore_ewc(ewc_plugin, state.ewc, device)
        plugins.append(ewc_plugin)

    optimizer = torch.optim.AdamW(_parameter_groups(wrapper, config), weight_decay=training.weight_decay)
    with warnings.catch_warnings():
        # Training needs no avalanche evaluator or loggers; avalanche warns about running without them.
        warnings.filterwarnings("ignore", message="No loggers specified")
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        strategy = _PaddingNaive(
            model=wrapper,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(
                weight=class_weights([s.target for s in [*samples, *replayed]], len(bundle.labels), device)
                if training.class_weighting == ClassWeighting.balanced
                else None
            ),
            train_mb_size=training.batch_size,
            train_epochs=epochs,
            eval_mb_size=training.batch_size * 4,
            device=device,
            plugins=plugins,
            evaluator=EvaluationPlugin(),
            lengths_by_record={s.record_id: len(s.input_ids) for s in [*samples, *replayed]},
            bucket=training.bucket_by_length,
            seed=training.seed + state.experiences_trained,
        )
        strategy.clock.train_exp_counter = state.experiences_trained
        strategy.train(make_experience(make_dataset(samples), state.experiences_trained), num_workers=0)

    if lora_model is not None:
        merged = lora_model.merge_and_unload()
        if not isinstance(merged, RecordClassifier):
            raise TypeError(f"merging the LoRA adapters gave a {type(merged).__name__}")
        bundle.model = merged
    bundle.model.eval()
    replay_config = strategy_config.replay
    next_state = LearnerState(
        experiences_trained=state.experiences_trained + 1,
        replay=_capture_replay(replay_plugin.storage_policy, replay_config)
        if replay_plugin and replay_config
        else None,
        ewc=_capture_ewc(ewc_plugin) if ewc_plugin else None,
    )
    return ExperienceResult(
        state=next_state,
        samples_processed=progress.samples,
        steps=progress.steps,
        stopped_early=progress.control.should_stop,
        last_ewc_penalty=ewc_plugin.last_penalty if ewc_plugin else 0.0,
    )


def update_epochs(training: TrainingConfig, samples: int) -> int:
    """The configured epochs, or more when that many would take fewer than `min_steps` steps."""
    steps_per_epoch = max(math.ceil(samples / training.batch_size), 1)
    return max(training.epochs, math.ceil(training.min_steps / steps_per_epoch))


def _parameter_groups(wrapper: nn.Module, config: LearnerConfig) -> list[dict[str, Any]]:
    """The encoder at the (LoRA or full) learning rate; the parts that start from scratch (field tower,
    fusion layer, classifier) at their own, faster one."""
    training = config.training
    encoder_rate = (
        config.strategy.lora.learning_rate
        if config.strategy.finetune == FinetuneMode.lora
        else (training.learning_rate)
    )
    head_rate = training.head_learning_rate or encoder_rate
    head: list[nn.Parameter] = []
    encoder: list[nn.Parameter] = []
    for name, parameter in wrapper.named_parameters():
        if parameter.requires_grad:
            (head if is_head_parameter(name) else encoder).append(parameter)
    return [{"params": encoder, "lr": encoder_rate}, {"params": head, "lr": head_rate}]


def _with_lora(model: RecordClassifier, config: LearnerConfig) -> PeftModel:
    """Adapters on the encoder's attention; the field tower, fusion layer and head train fully."""
    from peft import LoraConfig, get_peft_model

    lora = config.strategy.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=[name for name in ("field_tower", "fusion", "classifier") if getattr(model, name) is not None],
    )
    return get_peft_model(model, peft_config)
