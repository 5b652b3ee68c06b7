"""The command line as users run it: a real `anamnesis` process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session

from storage.config import StorageConfig
from storage.engine import create_db_engine
from storage.models import Label, Record
from storage.queries import count_rows

ANAMNESIS = str(Path(sys.executable).parent / "anamnesis")


def run_cli(*args: str, config: StorageConfig, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANAMNESIS_HOME": str(config.home),
        "ANAMNESIS_DATABASE_URL": config.database_url,
        "ANAMNESIS_PATIENT_KEY": "cli-test-key",
    }
    result = subprocess.run([ANAMNESIS, *args], env=env, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"anamnesis {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _counts(config: StorageConfig) -> tuple[int, int]:
    engine = create_db_engine(config)
    with Session(engine) as session:
        counts = count_rows(session, Record), count_rows(session, Label)
    engine.dispose()
    return counts


INGEST = ("--period-col", "period", "--time-col", "observed_at", "--site-col", "site", "--patient-col", "patient_id")


def test_every_command_has_help(sqlite_config: StorageConfig) -> None:
    commands = [[], ["db"], ["db", "upgrade"], ["ingest"], ["cohort"], ["cohort", "generate"], ["serve"]]
    for command in commands:
        result = run_cli(*command, "--help", config=sqlite_config)
        assert "Usage" in result.stdout


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_generate_then_ingest_round_trips_10000_records(storage_config: StorageConfig, tmp_path: Path, suffix) -> None:
    data = tmp_path / f"cohort{suffix}"
    run_cli(
        "cohort",
        "generate",
        "--scenario",
        "mixed",
        "--periods",
        "5",
        "--per-period",
        "2000",
        "--seed",
        "3",
        "--out",
        str(data),
        config=storage_config,
    )
    assert data.exists() and Path(f"{data}.truth.json").exists()
    first = run_cli("ingest", str(data), *INGEST, config=storage_config)
    assert "stored 10000 new records" in first.stdout and "10000 labels added" in first.stdout
    assert _counts(storage_config) == (10000, 10000)
    again = run_cli("ingest", str(data), *INGEST, config=storage_config)
    assert "stored 0 new records, 10000 already stored, 0 labels added" in again.stdout
    assert _counts(storage_config) == (10000, 10000)


def test_malformed_files_get_clear_errors_and_store_nothing_wrong(sqlite_config: StorageConfig, tmp_path: Path):
    missing = run_cli("ingest", str(tmp_path / "nope.csv"), config=sqlite_config, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_column = tmp_path / "cols.csv"
    bad_column.write_text("text,label\nhello,x\n")
    result = run_cli("ingest", str(bad_column), config=sqlite_config, check=False)
    assert result.returncode == 2 and "'note' not found" in result.stderr
    rows = tmp_path / "rows.csv"
    rows.write_bytes(b"note,label,age\nfine note,surgery,60\n,surgery,61\nbad age,surgery,old\nbroken \xff,x,1\n")
    rejects = tmp_path / "rejects.csv"
    result = run_cli("ingest", str(rows), "--rejects", str(rejects), config=sqlite_config, check=False)
    assert result.returncode == 1
    assert "row 2: note is empty" in result.stderr
    assert "row 3: age:" in result.stderr
    assert "row 4: column 'note' contains bytes that are not valid UTF-8" in result.stderr
    assert "1 rejected" not in result.stdout and "3 rejected" in result.stdout
    assert rejects.read_text().count("\n") == 4
    assert _counts(sqlite_config) == (1, 1)


def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    config = StorageConfig.embedded(tmp_path / "fresh")
    data = tmp_path / "x.csv"
    data.write_text("note,label\nhello,x\n")
    result = run_cli("ingest", str(data), config=config, check=False)
    assert result.returncode == 2 and "anamnesis db upgrade" in result.stderr
    run_cli("db", "upgrade", config=config)
    run_cli("ingest", str(data), config=config)
    assert _counts(config) == (1, 1)
