"""Ingest rate (rows/s) into SQLite and PostgreSQL, measured in one run.

Usage: python benchmarks/ingest.py [--rows 20000] [--postgres URL]
Writes docs/benchmarks/ingest.json and docs/benchmarks/ingest.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from anamnesis.cohort import generate, write_stream
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.ingest import ColumnMapping, ingest_file
from anamnesis.storage.migrate import upgrade

MAPPING = ColumnMapping(
    text="note", label="label", period="period", time="observed_at", site="site", patient="patient_id"
)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def measure(config: StorageConfig, data: Path, batch_size: int) -> dict[str, float]:
    engine = create_db_engine(config)
    upgrade(engine)
    started = time.perf_counter()
    report = ingest_file(engine, data, mapping=MAPPING, patient_key=b"bench", actor="bench", batch_size=batch_size)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = ingest_file(engine, data, mapping=MAPPING, patient_key=b"bench", actor="bench", batch_size=batch_size)
    second = time.perf_counter() - started
    engine.dispose()
    assert report.inserted == report.rows_read and again.inserted == 0
    return {
        "rows": report.rows_read,
        "seconds": round(first, 2),
        "rows_per_s": round(report.rows_read / first),
        "reingest_seconds": round(second, 2),
        "reingest_rows_per_s": round(report.rows_read / second),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = root / "cohort.parquet"
        write_stream(generate("mixed", periods=5, per_period=args.rows // 5, seed=11), data)
        started = time.perf_counter()
        dry = ingest_file(
            create_db_engine(StorageConfig.embedded(root / "dry")),
            data,
            mapping=MAPPING,
            patient_key=b"bench",
            actor="bench",
            dry_run=True,
        )
        validation = {"rows_per_s": round(dry.rows_read / (time.perf_counter() - started))}
        results = {
            "validation_only": validation,
            "sqlite": measure(StorageConfig.embedded(root / "sqlite"), data, args.batch_size),
        }
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"anamnesis_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
            results["postgresql"] = measure(StorageConfig(database_url=url, home=root / "pg"), data, args.batch_size)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    results["machine"] = f"{platform.machine()}, {platform.python_version()}"
    results["command"] = f"python benchmarks/ingest.py --rows {args.rows} --batch-size {args.batch_size}"
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Ingest rate",
        "",
        f"`{results['command']}`: a generated cohort file (Parquet), validated row by row and stored in batches "
        f"of {args.batch_size} rows, each batch one transaction; then the same file again (every row a duplicate).",
        "",
        "| database | rows | first ingest (s) | rows/s | re-ingest (s) | re-ingest rows/s |",
        "|---|---|---|---|---|---|",
    ]
    for database in ("sqlite", "postgresql"):
        r = results[database]
        lines.append(
            f"| {database} | {r['rows']} | {r['seconds']} | {r['rows_per_s']} | {r['reingest_seconds']} | "
            f"{r['reingest_rows_per_s']} |"
        )
    lines += ["", f"Validation alone (no database writes): {validation['rows_per_s']} rows/s.", ""]
    (DOCS / "ingest.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
