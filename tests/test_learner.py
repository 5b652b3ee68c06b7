"""The continual learner's mechanics, with a tiny random BERT (and one real-MiniLM update)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
import torch
from sqlmodel import Session, select

from anamnesis.learner.avalanche_adapter import (
    PackedClassifier,
    class_weights,
    pack_sample,
    pad_collate,
    train_experience,
)
from anamnesis.learner.config import (
    PRESET_NAMES,
    ClassWeighting,
    DistillationConfig,
    EWCConfig,
    EWCMode,
    FieldInput,
    GateConfig,
    LearnerConfig,
    ModelSpec,
    ReplayConfig,
    ReplayPolicy,
    ReplaySource,
    StrategyConfig,
    TrainingConfig,
    preset,
)
from anamnesis.learner.data import Sample, SplitUnit, encode_labeled, split_holdout, split_unit
from anamnesis.learner.engine import train_update
from anamnesis.learner.errors import NothingToLearnError
from anamnesis.learner.modeling import (
    encode_records,
    load_base_classifier,
    load_bundle,
    pad_batch,
    predict_logits,
    tiny_classifier,
)
from anamnesis.learner.replay import select_replay
from anamnesis.learner.results import DataWindow, UpdateMetrics
from anamnesis.learner.state import LearnerState
from anamnesis.learner.updater import run_update
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import AuditAction, AuditEvent, ModelStatus, ModelVersion
from anamnesis.storage.queries import LabeledRecord
from anamnesis.storage.repository import rollback_model
from tests.factories import MECHANICS_GATE, TINY_SPEC, store, toy_records

CPU = torch.device("cpu")
LABELS = ("surgery", "radiotherapy", "targeted_therapy", "immunotherapy")
FAST = TrainingConfig(epochs=2, min_steps=0, batch_size=8, learning_rate=1e-3, max_length=32, holdout_fraction=0.25)


def _samples(bundle, labels, n, start, seed=0) -> list[Sample]:
    records = toy_records(labels, n, period="1", seed=seed)
    inputs = encode_records(bundle, [r.note for r in records], [r.fields.to_json() for r in records], max_length=32)
    index = {label: i for i, label in enumerate(LABELS)}
    return [
        Sample(start + i, tuple(ids), index[r.label], "1", features)
        for i, (r, ids, features) in enumerate(zip(records, inputs.token_ids, inputs.features, strict=True))
    ]


def _digest(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values())).hexdigest()


def _config(**strategy: object) -> LearnerConfig:
    return LearnerConfig(model=TINY_SPEC, strategy=StrategyConfig(**strategy), training=FAST)


def test_every_config_round_trips_through_json() -> None:
    configs = [LearnerConfig(), GateConfig(), *(preset(name) for name in PRESET_NAMES)]
    configs.append(StrategyConfig(ewc=EWCConfig(mode=EWCMode.separate)))
    configs.append(StrategyConfig(replay=ReplayConfig(source=ReplaySource.buffer, mem_size=10)))
    configs.append(LearnerConfig(model=ModelSpec(fields=FieldInput.both, field_dim=64)))
    configs.append(LearnerConfig(training=TrainingConfig(class_weighting=ClassWeighting.balanced)))
    for config in configs:
        assert type(config).model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValueError, match="decay_factor"):
        EWCConfig(decay_factor=0)
    with pytest.raises(ValueError, match="incremental only"):
        StrategyConfig(data="joint")
    with pytest.raises(ValueError, match="LoRA"):
        StrategyConfig(finetune="lora")


def test_balanced_class_weights_make_every_present_class_count_the_same() -> None:
    weights = class_weights([0, 0, 0, 2], 3, torch.device("cpu"))
    # n / (present classes x count): 4 / (2 x 3) and 4 / (2 x 1); the absent class 1 keeps 1.
    assert weights.tolist() == pytest.approx([2 / 3, 1.0, 2.0])
    counts = torch.tensor([3.0, 0.0, 1.0])
    assert (weights * counts)[0] == pytest.approx((weights * counts)[2])


def test_packed_inputs_carry_ids_mask_and_fields_and_pad_dynamically() -> None:
    bundle = tiny_classifier(LABELS)
    fields = [{"age": 70, "stage": "IVA"}, {"egfr": "positive"}]
    inputs = encode_records(bundle, ["short note", "a somewhat longer note here"], fields, max_length=32)
    samples = [
        Sample(i, tuple(ids), 0, "1", features)
        for i, (ids, features) in enumerate(zip(inputs.token_ids, inputs.features, strict=True))
    ]
    batch = pad_collate([(pack_sample(sample), 0, 0) for sample in samples])
    assert batch[0].shape == (2, 3, bundle.spec.field_dim)
    ids, mask = pad_batch(inputs.token_ids, 0)
    direct = bundle.model.eval()(ids, mask, torch.from_numpy(inputs.features))
    assert torch.allclose(PackedClassifier(bundle.model)(batch[0]), direct)
    # The fields reach the model: the same notes with other fields give other logits.
    other = encode_records(bundle, ["short note", "a somewhat longer note here"], [{}, {}], max_length=32)
    assert not torch.allclose(direct, bundle.model(ids, mask, torch.from_numpy(other.features)))


@pytest.mark.parametrize(
    ("policy", "group_of"),
    [(ReplayPolicy.class_balanced, "class"), (ReplayPolicy.experience_balanced, "experience")],
)
def test_balanced_buffers_share_memory_equally(policy: ReplayPolicy, group_of: str) -> None:
    bundle = tiny_classifier(LABELS)
    config = _config(replay=ReplayConfig(source=ReplaySource.buffer, mem_size=30, policy=policy), ewc=None)
    # Experience 1 is mostly class 0; experience 2 brings classes 2 and 3.
    experiences = [
        _samples(bundle, ["surgery"] * 5 + ["radiotherapy"], 60, 0),
        _samples(bundle, ["targeted_therapy", "immunotherapy"], 40, 1000),
    ]
    by_id = {s.record_id: s for e in experiences for s in e}
    state = LearnerState()
    for experience in experiences:
        state = train_experience(
            bundle, experience, config=config, state=state, lookup=lambda ids: {i: by_id[i] for i in ids}, device=CPU
        ).state
    members = state.replay.record_ids()
    assert len(members) == 30
    if group_of == "class":
        counts = Counter(by_id[i].target for i in members)
        assert sorted(counts.values()) == [7, 7, 8, 8]  # 30 slots over 4 seen classes
    else:
        counts = Counter(i >= 1000 for i in members)
        assert counts[True] == counts[False] == 15


def test_reservoir_buffer_is_a_uniform_sample() -> None:
    bundle = tiny_classifier(LABELS)
    config = _config(
        replay=ReplayConfig(source=ReplaySource.buffer, mem_size=40, policy=ReplayPolicy.reservoir), ewc=None
    )
    experiences = [_samples(bundle, ["surgery"], 150, 0), _samples(bundle, ["radiotherapy"], 50, 1000)]
    by_id = {s.record_id: s for e in experiences for s in e}
    state = LearnerState()
    for experience in experiences:
        state = train_experience(
            bundle, experience, config=config, state=state, lookup=lambda ids: {i: by_id[i] for i in ids}, device=CPU
        ).state
    from_second = sum(i >= 1000 for i in state.replay.record_ids())
    assert len(state.replay.record_ids()) == 40
    assert 3 <= from_second <= 18  # proportional: expected 10 of 40


def test_ewc_penalty_is_nonzero_and_pulls_toward_the_old_weights() -> None:
    bundle = tiny_classifier(LABELS)
    first = _samples(bundle, ["surgery", "radiotherapy"], 48, 0)
    second = _samples(bundle, ["targeted_therapy", "immunotherapy"], 48, 1000)
    drift: dict[float, float] = {}
    penalties: dict[float, float] = {}
    for strength in (0.0, 10.0):
        bundle = tiny_classifier(LABELS, seed=5)
        config = _config(replay=None, ewc=EWCConfig(ewc_lambda=strength))
        state = train_experience(bundle, first, config=config, state=LearnerState(), lookup=dict, device=CPU).state
        importance = state.ewc.importances[0]
        anchor = {name: tensor.clone() for name, tensor in state.ewc.saved_params[0].items()}
        result = train_experience(bundle, second, config=config, state=state, lookup=dict, device=CPU)
        penalties[strength] = result.last_ewc_penalty
        current = {f"hf.{name}": p.detach() for name, p in bundle.model.named_parameters()}
        # The quantity EWC penalises: importance-weighted squared distance from the old weights.
        drift[strength] = sum(float((importance[n] * (current[n] - anchor[n]).pow(2)).sum()) for n in anchor)
        # Frozen vocabulary rows carry no EWC state; the Fisher diagonal is normalised to mean 1.
        assert not any("word_embeddings" in name for name in importance)
        assert torch.cat([t.flatten() for t in importance.values()]).mean().item() == pytest.approx(1.0, rel=1e-3)
    assert penalties[0.0] == 0.0 and penalties[10.0] > 0.0
    assert drift[10.0] < 0.1 * drift[0.0]


def test_lora_update_merges_its_adapters_into_plain_weights() -> None:
    bundle = tiny_classifier(LABELS, seed=4)
    samples = _samples(bundle, LABELS[:2], 32, 0)
    before = {name: tensor.clone() for name, tensor in bundle.model.state_dict().items()}
    config = LearnerConfig(strategy=preset("lora_replay"), training=FAST)
    by_id = {s.record_id: s for s in samples}
    result = train_experience(
        bundle, samples, config=config, state=LearnerState(), lookup=lambda ids: {i: by_id[i] for i in ids}, device=CPU
    )
    after = bundle.model.state_dict()
    assert set(after) == set(before)  # the same plain BERT: no adapter weights remain
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any("attention.self.query" in name for name in changed)  # adapters merged into the weights
    assert not any("attention.self.key" in name for name in changed)  # untouched: no adapter there
    assert result.samples_processed > 0


def test_restored_state_continues_exactly_like_an_uninterrupted_learner(tmp_path: Path) -> None:
    bundle = tiny_classifier(LABELS, seed=2)
    config = _config(replay=ReplayConfig(source=ReplaySource.buffer, mem_size=20), ewc=EWCConfig(ewc_lambda=1.0))
    experiences = [_samples(bundle, LABELS[:2], 40, 0), _samples(bundle, LABELS[2:], 40, 1000, seed=1)]
    by_id = {s.record_id: s for e in experiences for s in e}

    def lookup(ids):
        return {i: by_id[i] for i in ids}

    state = train_experience(bundle, experiences[0], config=config, state=LearnerState(), lookup=lookup, device=CPU)
    state.state.save(tmp_path)
    restored_bundle = __import__("copy").deepcopy(bundle)
    restored_state = LearnerState.load(tmp_path)
    assert restored_state.replay.record_ids() == state.state.replay.record_ids()
    uninterrupted = train_experience(
        bundle, experiences[1], config=config, state=state.state, lookup=lookup, device=CPU
    )
    resumed = train_experience(
        restored_bundle, experiences[1], config=config, state=restored_state, lookup=lookup, device=CPU
    )
    assert _digest(bundle.model) == _digest(restored_bundle.model)
    assert uninterrupted.state.replay.record_ids() == resumed.state.replay.record_ids()


def _tiny(labels, spec=TINY_SPEC):
    return tiny_classifier(labels, spec, seed=0)


def _update(engine, tmp_path: Path, config: LearnerConfig | None = None, gate: GateConfig | None = None):
    return run_update(
        engine,
        artifacts_dir=tmp_path / "artifacts",
        config=config or _config(replay=ReplayConfig(), ewc=EWCConfig(ewc_lambda=1.0)),
        gate=gate or MECHANICS_GATE,
        actor="test",
        new_bundle=_tiny,
    )


def test_update_from_storage_grows_the_head_and_records_everything(engine, tmp_path: Path) -> None:
    with pytest.raises(NothingToLearnError):
        _update(engine, tmp_path)
    store(engine, toy_records(LABELS[:3], 60, period="1", seed=1))
    first = _update(engine, tmp_path)
    assert first.promoted and first.decision.accept
    with pytest.raises(NothingToLearnError):
        _update(engine, tmp_path)
    store(engine, toy_records(LABELS, 60, period="2", seed=2))  # immunotherapy appears
    second = _update(engine, tmp_path)
    with Session(engine) as session:
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        actions = [e.action for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    first_labels = sorted(LABELS[:3])
    assert versions[0].label_map == first_labels
    assert versions[1].label_map == [*first_labels, "immunotherapy"]  # old classes first, in their order
    assert versions[1].parent_id == versions[0].id
    window, metrics = DataWindow.from_stored(versions[1]), UpdateMetrics.from_stored(versions[1])
    assert metrics is not None
    assert window.periods == ["1", "2"] and window.new_periods == ["2"]
    matrix = metrics.accuracy_matrix
    assert matrix.periods == ["1", "2"] and [row.version_id for row in matrix.rows] == [versions[0].id, versions[1].id]
    assert set(matrix.rows[1].accuracy) == {"1", "2"}
    assert set(metrics.evaluation.per_subgroup) == {"site", "sex", "age_band"}
    assert metrics.continual.forgetting is not None and metrics.continual.bwt is not None
    state = LearnerState.load(Path(versions[1].artifact_path))
    assert state.experiences_trained == 2 and state.replay is None  # history replay stores no buffer
    training = metrics.training
    assert training.replayed_records == ReplayConfig().budget(training.new_records) > 0
    assert window.split_by == "patient"
    assert second.metrics == metrics  # what the update returned is what was stored
    assert AuditAction.promote in actions
    loaded = load_bundle(Path(versions[1].artifact_path), expected_sha256=versions[1].artifact_sha256)
    assert loaded.labels == (*first_labels, "immunotherapy")
    assert second.version_id == versions[1].id


def test_gate_rejection_keeps_the_candidate_and_the_current_model(engine, tmp_path: Path) -> None:
    store(engine, toy_records(LABELS[:2], 60, period="1", seed=1))
    first = _update(engine, tmp_path)
    store(engine, toy_records(LABELS[:2], 40, period="2", seed=2))
    # An impossible improvement requirement: the candidate must be rejected.
    second = _update(engine, tmp_path, gate=GateConfig(min_improvement=1.0))
    assert not second.promoted
    with Session(engine) as session:
        statuses = dict(session.execute(select(ModelVersion.id, ModelVersion.status)).all())
        rejection = session.scalars(select(AuditEvent).where(AuditEvent.action == AuditAction.reject)).one()
    assert statuses == {first.version_id: ModelStatus.production, second.version_id: ModelStatus.rejected}
    assert "not better" in rejection.reason


RESTART_SCRIPT = """
import json, sys
from pathlib import Path
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from tests.test_learner import _update
config = StorageConfig(database_url=sys.argv[1], home=Path(sys.argv[2]))
outcome = _update(create_db_engine(config), Path(sys.argv[2]))
print(json.dumps({"version": outcome.version_id}))
"""


def test_learner_restarted_from_storage_continues_exactly(sqlite_config, tmp_path: Path) -> None:
    """Update 2 run in a fresh process from stored state equals update 2 run in this process."""
    engine = create_db_engine(sqlite_config)
    store(engine, toy_records(LABELS[:2], 48, period="1", seed=1))
    _update(engine, tmp_path)
    store(engine, toy_records(LABELS[1:], 48, period="2", seed=2))
    in_process = _update(engine, tmp_path)
    with Session(engine) as session:
        version = session.get(ModelVersion, in_process.version_id)
        first_digest = version.artifact_sha256
        if in_process.promoted:  # put version 1 back, then train update 2 again in a new process
            rollback_model(session, actor="test", reason="replay update 2 in a fresh process")
    root = Path(__file__).resolve().parent.parent
    output = subprocess.run(
        [sys.executable, "-c", RESTART_SCRIPT, sqlite_config.database_url, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    restarted_id = json.loads(output.stdout.strip().splitlines()[-1])["version"]
    with Session(engine) as session:
        restarted = session.get(ModelVersion, restarted_id)
        assert restarted.id != in_process.version_id
        # Same weights, same learner state: the artifacts hold identical bytes.
        assert restarted.artifact_sha256 == first_digest
    engine.dispose()


def test_avalanche_imports_with_a_read_only_home(tmp_path: Path) -> None:
    # /proc cannot hold a .avalanche folder, even for root.
    result = subprocess.run(
        [sys.executable, "-c", "import anamnesis.learner.avalanche_adapter; print('ok')"],
        env={"HOME": "/proc", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_real_minilm_trains_two_periods_and_stores_a_promoted_version(sqlite_config, tmp_path: Path) -> None:
    engine = create_db_engine(sqlite_config)
    config = LearnerConfig(
        strategy=StrategyConfig(replay=ReplayConfig(mem_size=32), ewc=EWCConfig()),
        training=TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-4, max_length=48, holdout_fraction=0.25),
    )
    for period, seed in (("1", 1), ("2", 2)):
        store(engine, toy_records(LABELS, 64, period=period, seed=seed))
        outcome = run_update(
            engine,
            artifacts_dir=tmp_path / "artifacts",
            config=config,
            gate=MECHANICS_GATE,
            actor="test",
        )
    with Session(engine) as session:
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    assert len(versions) == 2 and versions[0].status in (ModelStatus.production, ModelStatus.archived)
    metrics = UpdateMetrics.from_stored(versions[-1])
    assert metrics is not None and metrics.evaluation.overall.accuracy is not None
    assert metrics.evaluation.overall.accuracy > 0.5  # 4 classes: well above chance after two periods
    promoted = [v for v in versions if v.status == ModelStatus.production]
    assert len(promoted) == 1
    bundle = load_bundle(Path(promoted[0].artifact_path), expected_sha256=promoted[0].artifact_sha256)
    assert bundle.model.config.hidden_size == 384 and outcome.metrics.training.device == "cpu"
    assert load_base_classifier(LABELS).labels == LABELS


def _labeled(record_id: int, *, period: str, label: str, patient: str | None) -> LabeledRecord:
    return LabeledRecord(
        record_id=record_id,
        content_hash=hashlib.sha256(f"record {record_id}".encode()).hexdigest(),
        site="site_a",
        period=period,
        observed_at=datetime(2024, 1, 1, tzinfo=UTC),
        note=f"note {record_id}",
        fields={},
        label=label,
        label_id=record_id,
        patient_hash=hashlib.sha256(patient.encode()).hexdigest() if patient else None,
    )


def test_holdout_split_keeps_every_patient_on_one_side() -> None:
    records = [_labeled(i, period=str(1 + i % 3), label="surgery", patient=f"patient-{i // 5}") for i in range(2000)]
    train, holdout = split_holdout(records, 0.2)
    train_patients = {r.patient_hash for r in train}
    assert not train_patients & {r.patient_hash for r in holdout}  # no patient on both sides
    assert 0.15 < len(holdout) / len(records) < 0.25
    assert split_unit(records) == SplitUnit.patient
    # Without patient references each record goes by its own content.
    anonymous = [replace(r, patient_hash=None) for r in records]
    assert split_unit(anonymous) == SplitUnit.record
    anonymous_holdout = split_holdout(anonymous, 0.2)[1]
    assert {r.record_id for r in anonymous_holdout} != {r.record_id for r in holdout}


def test_history_replay_is_balanced_over_periods_and_classes() -> None:
    history = [_labeled(i, period="1", label="surgery", patient=None) for i in range(300)]
    history += [_labeled(300 + i, period="1", label="radiotherapy", patient=None) for i in range(10)]
    history += [_labeled(400 + i, period="2", label="chemotherapy", patient=None) for i in range(100)]
    chosen = select_replay(history, budget=60, seed=1)
    by_cell = Counter((r.period, r.label) for r in chosen)
    # 30 per period; period 1 splits its 30 over its two classes (the rare one gives all it has).
    assert by_cell == {("1", "surgery"): 20, ("1", "radiotherapy"): 10, ("2", "chemotherapy"): 30}
    assert select_replay(history, budget=60, seed=1) == chosen  # seeded
    assert len(select_replay(history, budget=10_000, seed=1)) == len(history)
    assert ReplayConfig(ratio=0.5).budget(301) == 150 and ReplayConfig(ratio=2, max_records=100).budget(80) == 100


def _toy_labeled(labels, n, *, period: str, seed: int, start: int) -> list[LabeledRecord]:
    return [
        LabeledRecord(
            record_id=start + i,
            content_hash=hashlib.sha256(f"{seed}-{i}".encode()).hexdigest(),
            site=r.site,
            period=period,
            observed_at=r.observed_at,
            note=r.note,
            fields=r.fields.to_json(),
            label=r.label,
            label_id=start + i,
        )
        for i, r in enumerate(toy_records(labels, n, period=period, seed=seed))
    ]


def test_history_replay_teaches_each_record_its_current_label() -> None:
    period_1 = _toy_labeled(LABELS[:2], 40, period="1", seed=1, start=0)
    period_2 = _toy_labeled(LABELS[2:], 40, period="2", seed=2, start=100)
    config = _config(replay=ReplayConfig(ratio=1.0), ewc=None)
    first = train_update(
        None, LearnerState(), fresh=period_1, seen=period_1, config=config, new_bundle=_tiny, device=CPU
    )
    # A guideline change relabels every surgery record of period 1 as radiotherapy.
    relabeled = [replace(r, label="radiotherapy") if r.label == "surgery" else r for r in period_1]
    replayed: list[Sample] = []

    def spy(*args, **kwargs):
        replayed.extend(kwargs["replayed"])
        return train_experience(*args, **kwargs)

    with mock.patch("anamnesis.learner.avalanche_adapter.train_experience", spy):
        update = train_update(
            first.bundle,
            first.state,
            fresh=period_2,
            seen=[*relabeled, *period_2],
            config=config,
            new_bundle=_tiny,
            device=CPU,
        )
    assert len(replayed) == 40 and update.replayed_records == 40
    assert {s.target for s in replayed} == {update.bundle.label_index["radiotherapy"]}


def test_buffer_replay_restores_members_with_their_current_label() -> None:
    bundle = tiny_classifier(LABELS)
    config = _config(replay=ReplayConfig(source=ReplaySource.buffer, mem_size=20), ewc=None)
    first = _samples(bundle, LABELS[:2], 40, 0)
    by_id = {s.record_id: s for s in first}
    state = train_experience(
        bundle, first, config=config, state=LearnerState(), lookup=lambda ids: {i: by_id[i] for i in ids}, device=CPU
    ).state
    surgery, radiotherapy = LABELS.index("surgery"), LABELS.index("radiotherapy")
    assert surgery in {t for g in state.replay.groups for t in g.targets}
    relabeled = {i: replace(s, target=radiotherapy) if s.target == surgery else s for i, s in by_id.items()}
    second = _samples(bundle, LABELS[2:], 20, 1000)
    state = train_experience(
        bundle,
        second,
        config=config,
        state=state,
        lookup=lambda ids: (
            {i: relabeled[i] for i in ids if i in relabeled} | {s.record_id: s for s in second if s.record_id in ids}
        ),
        device=CPU,
    ).state
    members = {(g.key, t) for g in state.replay.groups for t in g.targets}
    assert all(t != surgery for _, t in members)  # nobody is taught the old label
    assert all(key == t for key, t in members)  # and each sits in its current class's group


def test_online_ewc_state_stays_the_same_size_over_updates(tmp_path: Path) -> None:
    bundle = tiny_classifier(LABELS, seed=6)
    config = _config(replay=None, ewc=EWCConfig())  # online: the default
    state = LearnerState()
    sizes = []
    for step in range(5):
        experience = _samples(bundle, LABELS[step % 2 * 2 : step % 2 * 2 + 2], 24, 1000 * step, seed=step)
        state = train_experience(bundle, experience, config=config, state=state, lookup=dict, device=CPU).state
        folder = tmp_path / f"v{step}"
        folder.mkdir()
        state.save(folder)
        sizes.append(sum(path.stat().st_size for path in folder.iterdir()))
        assert len(state.ewc.importances) == len(state.ewc.saved_params) == 1
    assert max(sizes[1:]) <= min(sizes[1:]) * 1.01
    separate = _config(replay=None, ewc=EWCConfig(mode=EWCMode.separate))
    state = LearnerState()
    for step in range(3):
        experience = _samples(bundle, LABELS[:2], 24, 1000 * step, seed=step)
        state = train_experience(bundle, experience, config=separate, state=state, lookup=dict, device=CPU).state
    assert len(state.ewc.importances) == 3  # separate mode keeps one snapshot per update


def test_distillation_keeps_the_parents_right_answers_only() -> None:
    """The parent's logits ride along exactly on the samples it classifies right (a relabeled record, which
    the parent gets wrong, is taught by its label alone), and they reach the loss through a fourth packed row."""
    period_1 = _toy_labeled(LABELS[:2], 40, period="1", seed=1, start=0)
    period_2 = _toy_labeled(LABELS[2:], 40, period="2", seed=2, start=100)
    config = _config(replay=ReplayConfig(ratio=1.0), ewc=None, distillation=DistillationConfig())
    first = train_update(
        None, LearnerState(), fresh=period_1, seen=period_1, config=config, new_bundle=_tiny, device=CPU
    )
    relabeled = [replace(r, label="radiotherapy") if r.label == "surgery" else r for r in period_1]
    seen: dict[str, list[Sample]] = {}

    def spy(bundle, samples, **kwargs):
        seen["samples"], seen["replayed"] = list(samples), list(kwargs["replayed"])
        return train_experience(bundle, samples, **kwargs)

    with mock.patch("anamnesis.learner.avalanche_adapter.train_experience", spy):
        train_update(
            first.bundle,
            first.state,
            fresh=period_2,
            seen=[*relabeled, *period_2],
            config=config,
            new_bundle=_tiny,
            device=CPU,
        )
    parent = first.bundle
    logits = predict_logits(parent, encode_labeled(parent, relabeled, max_length=32))
    parent_right = {
        r.record_id for r, row in zip(relabeled, logits, strict=True) if parent.labels[int(row.argmax())] == r.label
    }
    replayed = seen["replayed"]
    assert replayed and all(s.teacher_logits is None for s in seen["samples"])  # new classes: the parent knows none
    assert {s.record_id for s in replayed if s.teacher_logits is not None} == parent_right & {
        s.record_id for s in replayed
    }
    distilled = next(s for s in replayed if s.teacher_logits is not None)
    batch = pad_collate([(pack_sample(distilled), 0, 0), (pack_sample(seen["samples"][0]), 0, 0)])[0]
    assert batch.shape[1] == 4 and torch.equal(batch[0, 3, :2], torch.from_numpy(distilled.teacher_logits))
    assert batch[0, 3, 2] == 1.0 and not batch[1, 3].any()  # marked; an undistilled sample carries nothing


def test_distillation_pulls_the_candidate_towards_the_parent_on_what_the_parent_got_right() -> None:
    """The same update (seed, data) with the distillation term ends closer to the parent's distribution on the
    earlier period's records the parent classifies right than without it."""
    period_1 = _toy_labeled(LABELS[:2], 48, period="1", seed=1, start=0)
    period_2 = _toy_labeled(LABELS, 48, period="2", seed=2, start=100)
    # Enough steps for the tiny model to learn the toy classes (it predicts one class after a few).
    training = FAST.model_copy(update={"min_steps": 60, "learning_rate": 2e-3})

    def config_with(distillation: DistillationConfig | None) -> LearnerConfig:
        strategy = StrategyConfig(replay=ReplayConfig(ratio=1.0), ewc=None, distillation=distillation)
        return LearnerConfig(model=TINY_SPEC, strategy=strategy, training=training)

    first = train_update(
        None, LearnerState(), fresh=period_1, seen=period_1, config=config_with(None), new_bundle=_tiny, device=CPU
    )
    parent = predict_logits(first.bundle, encode_labeled(first.bundle, period_1, max_length=32))
    right = [
        i
        for i, (r, row) in enumerate(zip(period_1, parent, strict=True))
        if first.bundle.labels[int(row.argmax())] == r.label
    ]
    assert right
    teacher = torch.log_softmax(parent[right] / 2.0, dim=-1)
    divergence: dict[float, float] = {}
    for weight in (0.0, 1.0):
        config = config_with(DistillationConfig(weight=weight))
        update = train_update(
            first.bundle,
            first.state,
            fresh=period_2,
            seen=[*period_1, *period_2],
            config=config,
            new_bundle=_tiny,
            device=CPU,
        )
        logits = predict_logits(update.bundle, encode_labeled(update.bundle, period_1, max_length=32))[right]
        student = torch.log_softmax(logits / 2.0, dim=-1)[:, :2]
        divergence[weight] = float((teacher.exp() * (teacher - student)).sum(-1).mean())
    assert divergence[1.0] < 0.8 * divergence[0.0]
