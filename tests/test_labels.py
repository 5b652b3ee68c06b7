"""Label typos do not silently become classes: new labels are reported at ingest, and once a vocabulary
is declared, a label outside it is refused everywhere labels are stored (ingest, the write path, the
API, the CLI), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlmodel import Session
from typer.testing import CliRunner

from anamnesis.service.app import create_app
from anamnesis.service.cli import app as cli_app
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.errors import IngestFileError, InvalidInputError
from anamnesis.storage.ingest import ColumnMapping, ingest_file
from anamnesis.storage.models import AuditAction, AuditEvent, Label, Record
from anamnesis.storage.repository import add_labels
from anamnesis.storage.vocabulary import (
    NewLabel,
    NewLabelTally,
    UnknownLabelError,
    clear_labels,
    declare_labels,
    declared_labels,
    label_counts,
    nearest_label,
    read_label_file,
)
from tests.conftest import PATIENT_KEY
from tests.factories import store, toy_records
from tests.service_fixtures import make_keys, settings_for

MAPPING = ColumnMapping(text="note", label="label")
SECRET = "Zanzibar-7781"  # a word of a note that must never appear in a message
TYPO = "chemotherpy"


def _rows(*labels: str | None, start: int = 0) -> list[dict]:
    return [
        {"note": f"note {start + i}: {SECRET} stage IV, ECOG 1", "label": label, "age": 60 + i}
        for i, label in enumerate(labels)
    ]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in rows))
    return path


def _ingest(engine: Engine, path: Path, **options):
    return ingest_file(engine, path, mapping=MAPPING, patient_key=PATIENT_KEY, actor="test", **options)


def _declare(engine: Engine, *labels: str, replace: bool = False):
    with Session(engine) as session:
        return declare_labels(session, labels=labels, actor="test", replace=replace)


def _count(engine: Engine, table: type) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def _vocabulary_events(engine: Engine) -> list[AuditEvent]:
    with Session(engine) as session:
        statement = select(AuditEvent).where(AuditEvent.action == AuditAction.label_vocabulary).order_by(AuditEvent.id)
        return list(session.scalars(statement))


def test_the_nearest_label_ignores_case_and_must_be_similar() -> None:
    known = ["chemotherapy", "surgery", "radiotherapy", "immunotherapy"]
    assert nearest_label(TYPO, known) == "chemotherapy"
    assert nearest_label("Surgery", known) == "surgery"
    assert nearest_label("radiotherap", known) == "radiotherapy"
    assert nearest_label("watchful_waiting", known) is None
    assert nearest_label("surgery", ["surgery"]) is None  # never itself


def test_the_tally_reports_new_labels_by_rows_with_the_nearest_known_or_new_label() -> None:
    tally = NewLabelTally(known=frozenset({"chemotherapy", "surgery"}))
    tally.add(["surgery", TYPO, None, TYPO, "watchful_waiting", "watchful_waitng", "chemotherapy"])
    assert tally.report() == [
        NewLabel(TYPO, 2, "chemotherapy"),
        NewLabel("watchful_waiting", 1, "watchful_waitng"),
        NewLabel("watchful_waitng", 1, "watchful_waiting"),
    ]


def test_an_ingest_reports_its_new_labels_and_still_stores_them_without_a_vocabulary(
    engine: Engine, tmp_path: Path
) -> None:
    first = _ingest(engine, _jsonl(tmp_path / "a.jsonl", _rows("chemotherapy", "surgery", "chemotherapy")))
    assert [(new.label, new.rows) for new in first.new_labels] == [("chemotherapy", 2), ("surgery", 1)]
    second = _ingest(
        engine,
        _jsonl(tmp_path / "b.jsonl", _rows(TYPO, "chemotherapy", TYPO, "watchful_waiting", None, start=10)),
    )
    assert second.new_labels == [NewLabel(TYPO, 2, "chemotherapy"), NewLabel("watchful_waiting", 1, None)]
    assert (second.inserted, second.rejected, second.labels_added) == (5, 0, 4)  # as before: all stored
    assert second.summary()["new_labels"] == {TYPO: 2, "watchful_waiting": 1}
    with Session(engine) as session:
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.ingest).order_by(AuditEvent.id)
        ).all()
    assert audited[-1].details["new_labels"] == {TYPO: 2, "watchful_waiting": 1}
    again = _ingest(engine, tmp_path / "b.jsonl")
    assert again.new_labels == []  # stored now: not new any more


def test_a_declared_vocabulary_rejects_each_row_labeled_outside_it(engine: Engine, tmp_path: Path) -> None:
    change = _declare(engine, "chemotherapy", "surgery", "radiotherapy")
    assert change.labels == ("chemotherapy", "radiotherapy", "surgery") and change.added == (
        "chemotherapy",
        "surgery",
        "radiotherapy",
    )
    path = _jsonl(tmp_path / "r.jsonl", _rows("chemotherapy", TYPO, None, "Surgery", "watchful_waiting", "surgery "))
    rejects = tmp_path / "rejects.csv"
    report = _ingest(engine, path, rejects_path=rejects)
    reasons = {error.row: error.reason for error in report.errors}
    assert reasons == {
        2: "column 'label': label is not in the declared vocabulary (nearest: chemotherapy; see `anamnesis "
        "labels show`)",
        4: "column 'label': label is not in the declared vocabulary (nearest: surgery; see `anamnesis labels show`)",
        5: "column 'label': label is not in the declared vocabulary (no declared label is similar; see "
        "`anamnesis labels show`)",
    }
    assert report.inserted == 3  # row 1, row 3 (unlabeled), row 6 (surrounding spaces dropped)
    assert report.new_labels == []  # declared labels are not new
    text = rejects.read_text()
    assert SECRET not in text and TYPO not in text and "watchful" not in text  # not the refused value either
    with Session(engine) as session:
        assert sorted(session.scalars(select(Label.label))) == ["chemotherapy", "surgery"]


def test_declaring_adds_replaces_clears_and_is_audited(engine: Engine) -> None:
    store(engine, toy_records(["surgery", "radiotherapy"], 4, period="1", seed=0))
    with Session(engine) as session:
        assert declared_labels(session) is None
    _declare(engine, "surgery", "radiotherapy")
    again = _declare(engine, "surgery", " radiotherapy ")
    assert again.added == () and again.labels == ("radiotherapy", "surgery")
    replaced = _declare(engine, "surgery", "immunotherapy", replace=True)
    assert replaced.added == ("immunotherapy",) and replaced.removed == ("radiotherapy",)
    assert replaced.outside == {"radiotherapy": 2}  # stored, kept, and named
    with Session(engine) as session:
        assert declared_labels(session) == {"surgery", "immunotherapy"}
        assert label_counts(session) == {"surgery": 2, "radiotherapy": 2}
        cleared = clear_labels(session, actor="test")
        assert cleared.removed == ("immunotherapy", "surgery") and declared_labels(session) is None
    events = _vocabulary_events(engine)
    assert [(e.reason, e.details["added"], e.details["removed"]) for e in events] == [
        ("declared", ["surgery", "radiotherapy"], []),
        ("replaced", ["immunotherapy"], ["radiotherapy"]),
        ("replaced", [], ["immunotherapy", "surgery"]),
    ]  # a declaration that changes nothing is not an event
    assert all(e.actor == "test" and e.entity == "label_vocabulary" for e in events)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["surgery", ""], "label 2: String should have at least 1 character"),
        (["ok", "x" * 101], "label 2: String should have at most 100 characters"),
        (["bad\x00label"], "label 1: Value error, must be printable text"),
        ([], "no label to declare"),
    ],
)
def test_a_bad_label_is_not_declared(engine: Engine, labels: list[str], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message), Session(engine) as session:
        declare_labels(session, labels=labels, actor="test")
    with Session(engine) as session:
        assert declared_labels(session) is None


def test_a_label_file_has_one_label_a_line_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("# treatment plans\nsurgery\n\n  chemotherapy  \nsurgery\n")
    assert read_label_file(path) == ["surgery", "chemotherapy"]
    path.write_text("surgery\n" + "x" * 101 + "\n")
    with pytest.raises(InvalidInputError, match=r"labels\.txt: line 2: String should have at most 100"):
        read_label_file(path)
    path.write_text("# nothing\n")
    with pytest.raises(InvalidInputError, match="holds no label"):
        read_label_file(path)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_label_file(tmp_path / "missing.txt")


def test_the_write_path_refuses_a_label_outside_the_vocabulary_and_stores_nothing(engine: Engine) -> None:
    outcome = store(engine, toy_records(["surgery"], 2, period="1", seed=0))
    _declare(engine, "surgery", "chemotherapy")
    records = toy_records(["surgery", "radiotherapy"], 2, period="1", seed=5)
    records[1] = records[1].model_copy(update={"label": TYPO})
    with pytest.raises(UnknownLabelError) as refused:
        store(engine, records)
    assert refused.value.index == 1 and refused.value.nearest == "chemotherapy"
    assert _count(engine, Record) == 2
    with pytest.raises(UnknownLabelError) as refused, Session(engine) as session:
        add_labels(
            session, labels=[(outcome.record_ids[0], "surgery"), (outcome.record_ids[1], TYPO)], source="t", actor="t"
        )
    assert refused.value.index == 1
    assert _count(engine, Label) == 2


def test_an_ingest_declares_its_labels_file_once_the_file_is_readable(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(IngestFileError):
        _ingest(engine, tmp_path / "missing.jsonl", declare=["surgery"])
    with Session(engine) as session:
        assert declared_labels(session) is None
    path = _jsonl(tmp_path / "r.jsonl", _rows("surgery", TYPO, "chemotherapy"))
    dry = _ingest(engine, path, declare=["surgery", "chemotherapy"], dry_run=True)
    assert [error.row for error in dry.errors] == [2] and dry.inserted == 0
    with Session(engine) as session:
        assert declared_labels(session) is None  # a dry run stores no declaration
    report = _ingest(engine, path, declare=["surgery", "chemotherapy"])
    assert [error.row for error in report.errors] == [2] and report.inserted == 2
    with Session(engine) as session:
        assert declared_labels(session) == {"surgery", "chemotherapy"}
    assert len(_vocabulary_events(engine)) == 1


def test_the_api_refuses_labels_outside_the_vocabulary_naming_the_field(storage_config: StorageConfig) -> None:
    with TestClient(create_app(settings_for(storage_config))) as client:
        engine = client.app.state.service.engine
        admin = {"X-API-Key": make_keys(engine).admin}
        records = [{"note": f"{SECRET} note {i}", "fields": {"age": 60}} for i in range(2)]
        stored = client.post("/v1/records", json={"records": records}, headers=admin)
        assert stored.status_code == 200, stored.text
        first, second = stored.json()["record_ids"]
        _declare(engine, "surgery", "chemotherapy")

        refused = client.post(
            "/v1/labels",
            json={"labels": [{"record_id": first, "label": "surgery"}, {"record_id": second, "label": TYPO}]},
            headers=admin,
        )
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith(
            "labels[1].label: label is not in the declared vocabulary (nearest: chemotherapy"
        )
        assert TYPO not in refused.text and SECRET not in refused.text
        assert _count(engine, Label) == 0  # neither label: one transaction

        accepted = client.post("/v1/labels", json={"labels": [{"record_id": first, "label": "surgery"}]}, headers=admin)
        assert accepted.status_code == 200

        labeled = [{"note": f"{SECRET} new", "fields": {}, "label": "surgery"}, {"note": "other", "label": "Surgery"}]
        refused = client.post("/v1/records", json={"records": labeled}, headers=admin)
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("records[1].label: label is not in the declared vocabulary")
        assert _count(engine, Record) == 2

        upload = client.post(
            "/v1/records/upload",
            params={"label_col": "label"},
            files={"file": ("r.jsonl", "".join(json.dumps(r) + "\n" for r in _rows("surgery", TYPO)), "text/plain")},
            headers=admin,
        )
        assert upload.status_code == 200 and upload.json()["inserted"] == 1
        assert upload.json()["errors"] == [
            {
                "row": 2,
                "reason": "column 'label': label is not in the declared vocabulary (nearest: chemotherapy; see "
                "`anamnesis labels show`)",
            }
        ]


def test_an_upload_reports_its_new_labels_with_the_nearest_known_one(storage_config: StorageConfig) -> None:
    with TestClient(create_app(settings_for(storage_config))) as client:
        admin = {"X-API-Key": make_keys(client.app.state.service.engine).admin}

        def upload(*labels: str) -> dict:
            body = "".join(json.dumps(r) + "\n" for r in _rows(*labels, start=len(labels)))
            answer = client.post(
                "/v1/records/upload",
                params={"label_col": "label"},
                files={"file": (f"{labels[0]}.jsonl", body, "text/plain")},
                headers=admin,
            )
            assert answer.status_code == 200, answer.text
            return answer.json()

        upload("chemotherapy", "surgery")
        typo = upload(TYPO, TYPO, "surgery")
        assert typo["inserted"] == 3 and typo["errors"] == []  # nothing declared: stored, but reported
        assert typo["new_labels"] == [{"label": TYPO, "rows": 2, "nearest": "chemotherapy"}]


def _cli(config: StorageConfig, *args: str):
    env = {
        "ANAMNESIS_HOME": str(config.home),
        "ANAMNESIS_DATABASE_URL": config.database_url,
        "ANAMNESIS_PATIENT_KEY": "cli-test-key",
    }
    return CliRunner().invoke(cli_app, list(args), env=env, catch_exceptions=False)


def test_the_labels_commands_and_the_ingest_option(storage_config: StorageConfig, tmp_path: Path) -> None:
    shown = _cli(storage_config, "labels", "show")
    assert shown.exit_code == 0 and "no label vocabulary is declared" in shown.stdout

    path = _jsonl(tmp_path / "a.jsonl", _rows("surgery", TYPO, "chemotherapy", "chemotherapy"))
    ingested = _cli(storage_config, "ingest", str(path))
    assert ingested.exit_code == 0, ingested.stderr
    assert "3 new label(s)" in ingested.stderr and f"'{TYPO}' (1 row; nearest: 'chemotherapy')" in ingested.stderr
    assert SECRET not in ingested.stdout + ingested.stderr

    declared = _cli(storage_config, "labels", "declare", "surgery", "chemotherapy")
    assert declared.exit_code == 0 and "vocabulary: 2 labels (2 added, 0 removed)" in declared.stdout
    assert f"{TYPO} (1 record)" in declared.stderr  # stored before, outside it: named

    shown = _cli(storage_config, "labels", "show")
    assert "declared label vocabulary (2 labels)" in shown.stdout and "chemotherapy  (2 records)" in shown.stdout

    more = _jsonl(tmp_path / "b.jsonl", _rows("radiotherapy", "radiotherpy", "surgery", start=10))
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# plans\nradiotherapy\n")
    refused = _cli(storage_config, "ingest", str(more), "--labels-file", str(labels_file))
    assert refused.exit_code == 1
    assert "row 2: column 'label': label is not in the declared vocabulary (nearest: radiotherapy" in refused.stderr
    assert "stored 2 new records" in refused.stdout and SECRET not in refused.stdout + refused.stderr

    from_file = _cli(storage_config, "labels", "declare", "--file", str(labels_file), "--replace")
    assert from_file.exit_code == 0 and "vocabulary: 1 labels (0 added, 2 removed): radiotherapy" in from_file.stdout

    bad = _cli(storage_config, "labels", "declare", "ok", "bad\x01")
    assert bad.exit_code == 2 and "label 2: Value error, must be printable text" in bad.stderr
    assert _cli(storage_config, "labels", "declare").exit_code == 2
    assert _cli(storage_config, "labels", "clear").exit_code == 2  # asks for --yes
    cleared = _cli(storage_config, "labels", "clear", "--yes")
    assert cleared.exit_code == 0 and "1 labels removed" in cleared.stdout
    assert "no label vocabulary is declared" in _cli(storage_config, "labels", "show").stdout
