"""One source of configuration: the service's settings compose the lower layers' configs, nested in
the environment, and `anamnesis config show` says where each effective value came from."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

import pytest

from anamnesis.learner.config import GateConfig, TrainingConfig
from anamnesis.service.settings import Settings
from tests.processes import ANAMNESIS


def test_nested_environment_sets_the_lower_layers_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANAMNESIS_GATE__TOLERANCE", "0.07")
    monkeypatch.setenv("ANAMNESIS_TRAINING__EPOCHS", "7")
    monkeypatch.setenv("ANAMNESIS_POLICY", '{"min_new_labels": 50, "cooldown": 600}')
    monkeypatch.setenv("ANAMNESIS_DRIFT__MIN_ROWS", "120")
    settings = Settings()
    assert settings.gate == GateConfig(tolerance=0.07)
    assert settings.learner_config().training == TrainingConfig(epochs=7)
    assert settings.policy.min_new_labels == 50 and settings.policy.cooldown == timedelta(minutes=10)
    assert settings.drift.min_rows == 120


def test_a_bad_nested_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANAMNESIS_GATE__SIGNIFICANCE", "2")
    with pytest.raises(ValueError, match=r"gate\.significance"):
        Settings()
    # The learner's own bounds hold: no second, different copy of them in the settings.
    monkeypatch.delenv("ANAMNESIS_GATE__SIGNIFICANCE")
    monkeypatch.setenv("ANAMNESIS_TRAINING__EPOCHS", "101")
    with pytest.raises(ValueError, match=r"training\.epochs"):
        Settings()
    with pytest.raises(ValueError, match="strategy"):
        Settings(strategy="replay_everything")


def test_overrides_are_validated_and_another_process_reads_the_same_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [key for key in os.environ if key.startswith("ANAMNESIS_")]:
        monkeypatch.delenv(key)
    base = Settings()
    with pytest.raises(ValueError, match="min_new_labels"):
        base.with_overrides(policy={**base.policy.model_dump(), "min_new_labels": -1})
    changed = base.with_overrides(
        runtime="pytorch",
        patient_key="k",
        gate={**base.gate.model_dump(), "min_accuracy": 0.6},
        policy={**base.policy.model_dump(), "cooldown": 0, "max_model_age": None},
    )
    for key, value in changed.as_environment().items():
        monkeypatch.setenv(key, value)
    assert Settings() == changed


def test_config_show_says_where_each_value_came_from_and_masks_secrets(tmp_path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANAMNESIS_")}
    env.update(
        {
            "ANAMNESIS_HOME": str(tmp_path),
            "ANAMNESIS_GATE__TOLERANCE": "0.05",
            "ANAMNESIS_TRAINING": '{"epochs": 6}',
            "ANAMNESIS_PATIENT_KEY": "do-not-print-me",
            "ANAMNESIS_DATABASE_URL": "postgresql+psycopg://anamnesis:hunter2@db:5432/anamnesis",
        }
    )
    shown = subprocess.run([ANAMNESIS, "config", "show"], env=env, capture_output=True, text=True, check=True)
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
    assert lines["gate.tolerance"].split()[1:] == ["0.05", "environment", "ANAMNESIS_GATE__TOLERANCE"]
    assert lines["training.epochs"].split()[1:] == ["6", "environment", "ANAMNESIS_TRAINING", "(JSON)"]
    assert "default of the group set by ANAMNESIS_TRAINING" in lines["training.batch_size"]
    assert lines["gate.significance"].split()[1:] == ["0.05", "default"]
    assert "do-not-print-me" not in shown.stdout and "hunter2" not in shown.stdout
    assert "***" in lines["patient_key"] and "***" in lines["database_url"]
    only_set = subprocess.run(
        [ANAMNESIS, "config", "show", "--only-set"], env=env, capture_output=True, text=True, check=True
    )
    names = {line.split()[0] for line in only_set.stdout.splitlines()}
    assert {"gate.tolerance", "training.epochs", "patient_key", "database_url", "home"} <= names
    assert "gate.significance" not in names and "training.batch_size" not in names


@pytest.mark.slow
def test_a_bad_setting_fails_every_command_naming_the_setting_not_its_value(tmp_path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANAMNESIS_")}
    env.update({"ANAMNESIS_HOME": str(tmp_path), "ANAMNESIS_DB_CONNECT_TIMEOUT_S": "hunter2-secret"})
    for command in (["models"], ["config", "show"], ["train"], ["drift", "list"]):
        result = subprocess.run([ANAMNESIS, *command], env=env, capture_output=True, text=True)
        assert result.returncode == 2, command
        assert "setting db_connect_timeout_s" in result.stderr and "hunter2" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
