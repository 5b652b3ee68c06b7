"""Ingestion: every format, idempotency, and each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlmodel import Session

from anamnesis.storage.errors import IngestFileError
from anamnesis.storage.ingest import ColumnMapping, ingest_file
from anamnesis.storage.models import Label, Record
from tests.conftest import PATIENT_KEY

MAPPING = ColumnMapping(text="note", label="label", period="period", time="observed_at", site="site", patient="mrn")

ROWS = [
    {
        "mrn": "A1",
        "site": "site_a",
        "period": 1,
        "observed_at": "2024-01-05T10:00:00Z",
        "note": "Stage IV adenoca, EGFR exon 19 del.",
        "label": "targeted_therapy",
        "age": 64,
        "sex": "F",
        "pdl1_tps": 10.0,
    },
    {
        "mrn": "A2",
        "site": "site_a",
        "period": 1,
        "observed_at": "2024-01-06",
        "note": "Stage IA, fit, ECOG 0.",
        "label": "surgery",
        "age": 58,
        "sex": "M",
        "pdl1_tps": None,
    },
    {
        "mrn": "B1",
        "site": "site_b",
        "period": 2,
        "observed_at": "2024-04-02T08:30:00+02:00",
        "note": "SCC stage IIIB, unresectable.",
        "label": "radiotherapy",
        "age": 71,
        "sex": "M",
        "pdl1_tps": 60.0,
    },
]


def _write(rows: list[dict], path: Path) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        frame.to_parquet(path)
    return path


def _count(engine, table) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table))


def _ingest(engine, path: Path, mapping: ColumnMapping = MAPPING, **options):
    return ingest_file(engine, path, mapping=mapping, patient_key=PATIENT_KEY, actor="test", **options)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_format_round_trips_and_reingest_stores_nothing_twice(engine, tmp_path: Path, suffix: str) -> None:
    path = _write(ROWS, tmp_path / f"records{suffix}")
    report = _ingest(engine, path)
    assert (report.rows_read, report.inserted, report.labels_added, report.rejected) == (3, 3, 3, 0)
    again = _ingest(engine, path)
    assert (again.inserted, again.duplicates, again.labels_added) == (0, 3, 0)
    assert _count(engine, Record) == 3 and _count(engine, Label) == 3
    with Session(engine) as session:
        stored = session.scalars(select(Record).order_by(Record.id)).all()
    assert [record.period for record in stored] == ["1", "1", "2"]
    assert stored[0].note == ROWS[0]["note"]
    assert stored[0].fields == {"age": 64, "sex": "F", "pdl1_tps": 10.0}
    assert "pdl1_tps" not in stored[1].fields
    assert stored[2].observed_at.isoformat() == "2024-04-02T06:30:00+00:00"
    assert stored[0].site == "site_a" and stored[2].site == "site_b"


@pytest.mark.parametrize(
    ("write", "fields"),
    [
        pytest.param(
            lambda frame, path: frame.iloc[[2, 0, 1]].to_parquet(path.with_suffix(".parquet")),
            {"age", "sex", "pdl1_tps", "line_no"},
            id="parquet",
        ),
        pytest.param(
            lambda frame, path: frame.set_index("line_no").to_parquet(path.with_suffix(".parquet")),
            {"age", "sex", "pdl1_tps"},
            id="named-index",
        ),
        pytest.param(
            lambda frame, path: frame.to_csv(path.with_suffix(".csv")), {"age", "sex", "pdl1_tps", "line_no"}, id="csv"
        ),
    ],
)
def test_a_pandas_index_in_the_file_is_never_a_field(engine, tmp_path: Path, write, fields: set[str]) -> None:
    # A filtered frame written as-is stores its index as `__index_level_0__` (Parquet) or `Unnamed: 0` (CSV).
    write(pd.DataFrame(ROWS).assign(line_no=[10, 11, 12]), tmp_path / "records")
    path = next(tmp_path.glob("records.*"))
    assert _ingest(engine, path).inserted == 3
    with Session(engine) as session:
        stored = session.scalars(select(Record)).all()
    assert set().union(*(record.fields for record in stored)) == fields


def test_any_dataset_with_text_and_label_columns_works(engine, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["good", "bad", "fine"], "sentiment": ["pos", "neg", "pos"], "score": [5, 1, 3]}).to_csv(
        path, index=False
    )
    report = _ingest(engine, path, ColumnMapping(text="text", label="sentiment"))
    assert report.inserted == 3 and report.labels_added == 3
    with Session(engine) as session:
        record = session.scalars(select(Record).order_by(Record.id)).first()
    assert record.site == "default" and record.fields == {"score": "5"}


def test_unlabeled_records_get_labels_later(engine, tmp_path: Path) -> None:
    unlabeled = [{key: value for key, value in row.items() if key != "label"} for row in ROWS]
    _ingest(engine, _write(unlabeled, tmp_path / "a.jsonl"), ColumnMapping(**{**MAPPING.__dict__, "label": None}))
    assert _count(engine, Label) == 0
    report = _ingest(engine, _write(ROWS, tmp_path / "b.jsonl"))
    assert (report.inserted, report.labels_added) == (0, 3)


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing.csv", "no such file"),
        (lambda p: p, "not a regular file"),
        (lambda p: _file(p / "empty.csv", b""), "empty"),
        (lambda p: _file(p / "x.parquet", b"PAR1 garbage, not parquet"), "Parquet"),
        (lambda p: _file(p / "x.xlsx", b"..."), "suffix"),
        (lambda p: _file(p / "x.jsonl", b"[1, 2]\n"), "object"),
        (lambda p: _file(p / "x.csv", b'note,label\n"unterminated,x\n'), "CSV"),
    ],
)
def test_unreadable_files_get_a_clear_error_and_store_nothing(engine, tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(IngestFileError, match=message):
        _ingest(engine, setup(tmp_path))
    assert _count(engine, Record) == 0


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_missing_column_names_it_and_stores_nothing(engine, tmp_path: Path, suffix: str) -> None:
    path = _write([{k: v for k, v in row.items() if k != "period"} for row in ROWS], tmp_path / f"r{suffix}")
    with pytest.raises(IngestFileError, match="'period' not found"):
        _ingest(engine, path)
    assert _count(engine, Record) == 0


SECRET = "Zanzibar-7781"  # a word that must never appear in an error message


def test_bad_rows_are_reported_with_row_number_and_reason_and_the_rest_is_stored(engine, tmp_path: Path) -> None:
    bad = [
        dict(ROWS[0]),
        {**ROWS[1], "age": "sixty", "note": f"patient {SECRET} with a wrong age"},
        {**ROWS[2], "note": "   "},
        {**ROWS[0], "mrn": "X", "note": "a" * 5_000_000},
        {**ROWS[0], "mrn": "Y", "stage": "IX", "note": f"{SECRET} stage"},
        {**ROWS[0], "mrn": "Z", "observed_at": "not a date"},
        {**ROWS[0], "mrn": "W", "label": ""},
    ]
    path = _write(bad, tmp_path / "bad.jsonl")
    rejects = tmp_path / "rejects.csv"
    report = _ingest(engine, path, rejects_path=rejects)
    reasons = {error.row: error.reason for error in report.errors}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "age" in reasons[2] and "integer" in reasons[2]
    assert reasons[3] == "note is empty"
    assert "more than the limit" in reasons[4]
    assert "stage" in reasons[5]
    assert "observed_at" in reasons[6]
    assert all(SECRET not in reason for reason in reasons.values())
    assert report.inserted == 2  # row 1 and row 7 (stored unlabeled)
    assert _count(engine, Record) == 2 and _count(engine, Label) == 1
    written = pd.read_csv(rejects)
    assert list(written["row"]) == [2, 3, 4, 5, 6]
    assert SECRET not in rejects.read_text()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_invalid_utf8_is_a_row_error(engine, tmp_path: Path, suffix: str) -> None:
    good = _write(ROWS[:2], tmp_path / f"good{suffix}").read_bytes()
    broken = good.replace(b"Stage IA", b"Stage \xff\xfeIA")
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(broken)
    report = _ingest(engine, path)
    assert [(error.row, error.reason) for error in report.errors] == [
        (2, "column 'note' contains bytes that are not valid UTF-8")
    ]
    assert report.inserted == 1


def test_malformed_json_lines_are_row_errors(engine, tmp_path: Path) -> None:
    path = _write(ROWS, tmp_path / "r.jsonl")
    path.write_text(path.read_text() + '{"note": "unterminated\n\n')
    report = _ingest(engine, path)
    assert report.inserted == 3
    assert [error.row for error in report.errors] == [4, 5]
    assert "not valid JSON" in report.errors[0].reason


def test_dry_run_validates_without_storing(engine, tmp_path: Path) -> None:
    report = _ingest(engine, _write(ROWS, tmp_path / "r.csv"), dry_run=True)
    assert report.rows_read == 3 and report.rejected == 0
    assert _count(engine, Record) == 0


def test_batches_commit_separately_and_progress_is_reported(engine, tmp_path: Path) -> None:
    rows = [{**ROWS[0], "mrn": f"P{i}", "note": f"note number {i}"} for i in range(25)]
    seen: list[int] = []
    report = _ingest(engine, _write(rows, tmp_path / "many.csv"), batch_size=10, on_progress=seen.append)
    assert report.batches == 3 and seen == [10, 10, 5]
    assert _count(engine, Record) == 25


notes = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=300).filter(str.strip)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(note_list=st.lists(notes, min_size=1, max_size=5, unique=True))
def test_any_note_text_is_stored_exactly(sqlite_config, tmp_path_factory, suffix: str, note_list: list[str]) -> None:
    from anamnesis.storage.engine import create_db_engine

    engine = create_db_engine(sqlite_config)
    folder = tmp_path_factory.mktemp("prop")
    path = _write([{"note": note, "label": "x"} for note in note_list], folder / f"notes{suffix}")
    report = _ingest(engine, path, ColumnMapping(text="note", label="label"))
    assert report.rejected == 0
    with Session(engine) as session:
        stored = set(session.scalars(select(Record.note)))
    assert set(note_list) <= stored
    engine.dispose()


def _identifier_rows(count: int = 40) -> list[dict]:
    return [
        {
            "note": f"stage {index % 4 + 1} tumour, plan discussed",
            "label": "surgery",
            "weight_kg": 60.0 + index * 0.37,  # a measurement may differ in every row
            "ward": "B" if index % 2 else "C",
            "mrn": f"MRN-{900000 + index}",
            "contact": f"person{index}@example.org",
            "visit_code": f"V{index:05d}-{index * 7919 % 10007}",
        }
        for index in range(count)
    ]


@pytest.mark.parametrize(
    ("left_in", "reason"),
    [
        ("mrn", "its name says so"),
        ("contact", "its values are e-mail addresses"),
        ("visit_code", "its text differs in every row"),
    ],
)
def test_a_column_that_looks_like_an_identifier_is_refused_naming_it(
    engine, tmp_path: Path, left_in: str, reason: str
) -> None:
    path = _write(_identifier_rows(), tmp_path / "rows.csv")
    others = [column for column in ("mrn", "contact", "visit_code") if column != left_in]
    with pytest.raises(IngestFileError) as refused:
        _ingest(engine, path, ColumnMapping(text="note", label="label", exclude=tuple(others)))
    message = str(refused.value)
    assert f"column {left_in!r} looks like a patient identifier ({reason})" in message
    assert "MRN-9" not in message and "example.org" not in message and "V0000" not in message
    assert _count(engine, Record) == 0


def test_an_identifier_mapped_as_the_patient_or_excluded_is_accepted_and_never_stored_plainly(
    engine, tmp_path: Path
) -> None:
    path = _write(_identifier_rows(), tmp_path / "rows.csv")
    mapping = ColumnMapping(text="note", label="label", patient="mrn", exclude=("contact", "visit_code"))
    report = _ingest(engine, path, mapping)
    assert report.inserted == 40 and report.rejected == 0
    with Session(engine) as session:
        records = list(session.scalars(select(Record)))
    stored = json.dumps([{**r.fields, "patient": r.patient_hash} for r in records])
    assert "MRN-9" not in stored and "example.org" not in stored and "V0000" not in stored
    assert {"weight_kg", "ward"} <= set(records[0].fields) and all(r.patient_hash for r in records)
