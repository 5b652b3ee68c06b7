"""Writing a stream to CSV, JSON Lines or Parquet, with its ground truth in a JSON sidecar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import SupportsInt, cast

import pandas as pd

from anamnesis.cohort.generator import INTEGER_FIELDS, CohortStream, StreamTruth
from anamnesis.cohort.schedule import PeriodTruth

TRUTH_SUFFIX = ".truth.json"
FORMATS = (".csv", ".jsonl", ".parquet")


def truth_path(path: str | Path) -> Path:
    """The sidecar of a data file: `<path>.truth.json`."""
    path = Path(path)
    return path.with_name(path.name + TRUTH_SUFFIX)


def write_stream(stream: CohortStream, path: str | Path) -> tuple[Path, Path]:
    """Write the records to `path` (format by suffix: .csv, .jsonl, .parquet) and the truth beside it.

    Timestamps are ISO 8601 in UTC. In CSV and JSON Lines, integer fields are written as integers
    and missing values as an empty cell or null. Same stream, same bytes. Returns (data, sidecar).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path.name!r}: use one of {', '.join(FORMATS)}")
    frame = stream.frame
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        _csv_frame(frame).to_csv(path, index=False)
    else:
        with path.open("w", encoding="utf-8", newline="\n") as out:
            for record in frame.to_dict(orient="records"):
                out.write(json.dumps(_json_record(record), ensure_ascii=False) + "\n")
    sidecar = truth_path(path)
    sidecar.write_text(stream.truth_json() + "\n", encoding="utf-8")
    return path, sidecar


def read_truth(path: str | Path) -> tuple[PeriodTruth, ...]:
    """The per-period ground truth written beside a data file (pass the data file or the sidecar)."""
    path = Path(path)
    sidecar = path if path.name.endswith(TRUTH_SUFFIX) else truth_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"no ground-truth sidecar at {sidecar}")
    return StreamTruth.model_validate_json(sidecar.read_text(encoding="utf-8")).periods


def _csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    copy = frame.copy()
    copy["observed_at"] = [stamp.isoformat() for stamp in copy["observed_at"]]
    for column in INTEGER_FIELDS:
        copy[column] = copy[column].astype("Int64")
    return copy


def _json_record(record: dict[str, object]) -> dict[str, object]:
    clean: dict[str, object] = {}
    for key, value in record.items():
        if isinstance(value, float) and math.isnan(value):
            clean[key] = None
        elif isinstance(value, pd.Timestamp):
            clean[key] = value.isoformat()
        elif key in INTEGER_FIELDS and value is not None:
            clean[key] = int(cast(SupportsInt, value))  # a number: NaN was handled above
        else:
            clean[key] = value
    return clean
