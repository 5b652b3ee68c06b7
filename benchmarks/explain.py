"""A worked explanation on a real trained model, and what explanations cost, through the service itself.

Usage: python benchmarks/explain.py [--train-records 600] [--steps 32] [--records 8]
Writes docs/benchmarks/explain.json (docs/explain.md quotes it). Needs the machine alone (it trains).

1. Trains version 1 as `anamnesis train` does (the project's own path, `bench_policy.train_first_version`):
   the shipped MiniLM fine-tuned on `--train-records` records of the generated `stable` cohort; its
   held-out accuracy and calibration are those stored on the version.
2. Serves it (`create_app`, in process) and asks POST /v1/explain, with an admin key, about records of
   another seed of the same cohort (never trained on): the first one with `compare_to` its runner-up
   plan and 5 neighbours (the worked example, with the record's true label); the neighbour index of
   the version is built by that first request (its build time is reported).
3. Costs, each request timed end to end (wall) and by the process's CPU time: one record, a request of
   `--records` records, the same with `compare_to` (twice the integrals), at `--steps` steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlmodel import Session

from anamnesis.cohort import generate
from anamnesis.learner.modeling import load_base_classifier
from anamnesis.service.app import create_app
from anamnesis.service.bench_policy import BENCHMARK_KEY, ReplayStream, train_first_version
from anamnesis.service.settings import Settings
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import ApiRole
from anamnesis.storage.repository import create_api_key

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
TRAIN_SEED, QUERY_SEED = 11, 12
NOT_FIELDS = {"patient_id", "site", "observed_at", "period", "note", "label"}


def _queries(count: int) -> list[dict[str, Any]]:
    """Records of the stable cohort drawn with another seed than the training records, with their true label."""
    frame = generate("stable", periods=1, per_period=count, seed=QUERY_SEED).frame
    records = []
    for row in frame.to_dict("records"):
        fields = {
            name: value
            for name, value in row.items()
            if name not in NOT_FIELDS and value is not None and not (isinstance(value, float) and math.isnan(value))
        }
        records.append({"record": {"note": row["note"], "site": row["site"], "fields": fields}, "label": row["label"]})
    return records


def _timed(client: TestClient, key: str, body: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    answer = client.post("/v1/explain", json=body, headers={"X-API-Key": key})
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert answer.status_code == 200, answer.text
    return answer.json(), wall, cpu


def _cost(answer: dict[str, Any], wall: float, cpu: float, records: int) -> dict[str, Any]:
    checks = [e["attribution"]["completeness"] for e in answer["explanations"]]
    checks += [e["contrast"]["completeness"] for e in answer["explanations"] if e["contrast"]]
    return {
        "records": records,
        "integrals": len(checks),
        "wall_s": round(wall, 2),
        "ms_per_record": round(wall * 1000 / records),
        "cpu_ms_per_record": round(cpu * 1000 / records),
        "max_abs_delta": max(abs(c["delta"]) for c in checks),
        "max_abs_difference": max(abs(c["output"] - c["baseline_output"]) for c in checks),
        "all_within_tolerance": all(c["within_tolerance"] for c in checks),
    }


def _worked(answer: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
    explanation = answer["explanations"][0]
    words = explanation["attribution"]["words"]
    contrast = explanation["contrast"]
    return {
        "note": query["record"]["note"],
        "fields": query["record"]["fields"],
        "true_label": query["label"],
        "predicted": explanation["label"],
        "confidence": round(explanation["confidence"], 4),
        "probabilities": dict(sorted(explanation["probabilities"].items(), key=lambda item: -item[1])[:4]),
        "uncertain": explanation["uncertain"],
        "uncertain_reason": explanation["uncertain_reason"],
        "words_for": [(w["text"], w["attribution"]) for w in sorted(words, key=lambda w: -w["attribution"])[:8]],
        "words_against": [(w["text"], w["attribution"]) for w in sorted(words, key=lambda w: w["attribution"])[:5]],
        "fields_attribution": sorted(
            ((f["name"], f["attribution"]) for f in explanation["attribution"]["fields"]), key=lambda item: -item[1]
        ),
        "completeness": explanation["attribution"]["completeness"],
        "note_chars_read": explanation["attribution"]["note_chars_read"],
        "truncated": explanation["attribution"]["truncated"],
        "contrast": None
        if contrast is None
        else {
            "compare_to": contrast["compare_to"],
            "margin": contrast["completeness"]["output"],
            "words_for": [
                (w["text"], w["attribution"]) for w in sorted(contrast["words"], key=lambda w: -w["attribution"])[:6]
            ],
            "fields_attribution": sorted(
                ((f["name"], f["attribution"]) for f in contrast["fields"]), key=lambda item: -item[1]
            ),
        },
        "neighbours": [
            {k: n[k] for k in ("label", "period", "site", "similarity")} for n in explanation["similar"]["neighbours"]
        ],
        "agreement": explanation["similar"]["agreement"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-records", type=int, default=600)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--records", type=int, default=8)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            home=Path(folder) / "home",
            database_url=None,
            patient_key=BENCHMARK_KEY.decode(),
            explain_steps=args.steps,
            explain_max_records=max(8, args.records),
            explain_records_per_minute=10_000,
            explain_index_wait_s=600.0,
        )
        stream = ReplayStream.of_cohort(generate("stable", periods=1, per_period=args.train_records, seed=TRAIN_SEED))
        started = time.perf_counter()
        first = train_first_version(settings.home, stream.periods["1"], settings, load_base_classifier)
        print(f"trained in {time.perf_counter() - started:.0f} s: {first}", flush=True)
        engine = create_db_engine(settings.storage_config())
        with Session(engine) as session:
            _, key = create_api_key(session, name="bench", role=ApiRole.admin, actor="benchmark")
        engine.dispose()
        queries = _queries(1 + args.records)
        with TestClient(create_app(settings)) as client:
            version = client.get("/v1/models/current", headers={"X-API-Key": key}).json()
            example = queries[0]
            answered = client.post("/v1/predict", json=example["record"], headers={"X-API-Key": key}).json()
            predicted = answered["predictions"][0]
            ranked = sorted(predicted["probabilities"], key=lambda label: -predicted["probabilities"][label])
            body = {"records": [example["record"]], "compare_to": ranked[1], "neighbours": 5}
            answer, wall, cpu = _timed(client, key, body)
            index = answer["neighbour_index"]
            print(f"worked example in {wall:.1f} s (index: {index})", flush=True)
            costs: dict[str, Any] = {}
            one, wall, cpu = _timed(client, key, {"records": [queries[1]["record"]], "neighbours": 5})
            costs["one_record"] = _cost(one, wall, cpu, 1)
            request = [q["record"] for q in queries[1 : 1 + args.records]]
            many, wall, cpu = _timed(client, key, {"records": request, "neighbours": 5})
            costs["request"] = _cost(many, wall, cpu, len(request))
            contrasted, wall, cpu = _timed(client, key, {"records": request, "neighbours": 5, "compare_to": ranked[1]})
            costs["request_with_compare_to"] = _cost(contrasted, wall, cpu, len(request))
            print(json.dumps(costs), flush=True)
            agreement = sum(e["label"] == q["label"] for e, q in zip(many["explanations"], queries[1:], strict=False))

    results = {
        "command": f"python benchmarks/explain.py --train-records {args.train_records} --steps {args.steps} "
        f"--records {args.records}",
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "model": f"all-MiniLM-L6-v2 fine-tuned on {args.train_records} records of the stable cohort "
        f"(seed {TRAIN_SEED}), as `anamnesis train` trains it; served runtime {version['runtime']}",
        "version": {
            "training_s": first["training_s"],
            "held_out_accuracy": first["held_out_accuracy"],
            "promoted_by_gate": first["promoted_by_gate"],
            "calibration": version["calibration"],
        },
        "n_steps": args.steps,
        "neighbour_index": index,
        "worked_example": _worked(answer, example),
        "request_correct": f"{agreement} of {len(request)}",
        "costs": costs,
    }
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "explain.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
