"""`anamnesis bench serve`: latency and throughput of the API against a naive baseline, in one run.

- service: `anamnesis serve --api-only` with the production path (micro-batching, the runtime
  chosen at promotion: ONNX int8 when it matches PyTorch, background prediction writes).
- naive: a FastAPI endpoint that tokenises and calls the PyTorch model once per request.
- bare: the PyTorch model's forward pass on one note, in this process, no HTTP.
The model is the shipped MiniLM with a 7-class head (latency does not depend on the head's
weights). The load generator shares the machine's cores with the server under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field
from sqlmodel import Session

from anamnesis.cohort import Plan, generate
from anamnesis.learner.modeling import BASE_MODEL_NAME, load_base_classifier, save_bundle
from anamnesis.service.predicting.runtime import LoadedModel, PyTorchRuntime, choose_runtime
from anamnesis.storage.artifacts import write_artifact
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import ApiRole, row_id
from anamnesis.storage.repository import create_api_key, create_model_version, promote_model_version

if TYPE_CHECKING:
    from fastapi import FastAPI

LABELS = tuple(plan.value for plan in Plan if plan != Plan.antibody_drug_conjugate)
Say = Callable[[str], None]


def _notes(count: int) -> list[dict[str, Any]]:
    frame = generate("stable", periods=1, per_period=count, seed=3).frame
    fields = ("age", "sex", "stage", "ecog", "egfr", "pdl1_tps")
    return [
        {"note": row["note"], "fields": {f: row[f] for f in fields if row[f] is not None and row[f] == row[f]}}
        for row in frame.to_dict("records")
    ]


def _install(home: Path) -> tuple[StorageConfig, str]:
    config = StorageConfig.embedded(home)
    engine = create_db_engine(config)
    upgrade(engine)
    bundle = load_base_classifier(LABELS)
    folder, digest = write_artifact(config.artifacts_dir, "bench-model", lambda f: save_bundle(bundle, f))
    with Session(engine) as session:
        version = create_model_version(
            session,
            parent_id=None,
            base_model=BASE_MODEL_NAME,
            learner_config={},
            artifact_path=str(folder),
            artifact_sha256=digest,
            label_map=LABELS,
            metrics=lambda _version_id: {},
            data_window={},
            job_id=None,
            actor="bench",
        )
        runtime = choose_runtime(version, bundle, [], artifacts_dir=config.artifacts_dir, max_length=128).model_dump(
            mode="json"
        )
        promote_model_version(session, version_id=row_id(version), actor="bench", reason="benchmark", runtime=runtime)
        _, key = create_api_key(session, name="bench", role=ApiRole.predict, actor="bench")
    engine.dispose()
    return config, key


def _base_model() -> LoadedModel:
    """The untrained base classifier behind the same batched inference the service uses, in PyTorch."""
    bundle = load_base_classifier(LABELS)
    return LoadedModel(version_id=0, bundle=bundle, runtime=PyTorchRuntime(bundle), max_length=128)


def bare_forward_ms(samples: list[dict[str, Any]], repeats: int = 30) -> float:
    model = _base_model()
    timings = []
    for index in range(repeats + 5):
        item = samples[index % len(samples)]
        started = time.perf_counter()
        model.predict([item["note"]], [item["fields"]])
        if index >= 5:
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


async def _load(
    url: str, headers: dict[str, str], samples: list[dict[str, Any]], concurrency: int, requests: int
) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    counter = iter(range(requests))
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def user() -> None:
            nonlocal failures
            for index in counter:
                started = time.perf_counter()
                response = await client.post(url, json=samples[index % len(samples)], headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "requests": requests,
        "failures": failures,
        "throughput_rps": round(requests / wall, 2),
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p99_ms": percentile(0.99),
    }


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer")


def _server(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own commands
        args,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_bench(*, levels: tuple[int, ...], requests_per_level: dict[int, int], say: Say) -> dict[str, Any]:
    samples = _notes(200)
    results: dict[str, Any] = {"levels": list(levels)}
    with tempfile.TemporaryDirectory(prefix="anamnesis-bench-") as folder:
        root = Path(folder)
        config, key = _install(root / "home")
        say("measuring the bare PyTorch forward pass ...")
        results["bare_forward_ms"] = round(bare_forward_ms(samples), 1)
        env = {
            **os.environ,
            "ANAMNESIS_HOME": str(config.home),
            "ANAMNESIS_DATABASE_URL": config.database_url,
            "ANAMNESIS_PATIENT_KEY": "bench",
        }
        env.pop("ANAMNESIS_RUNTIME", None)
        servers = {
            "service": (
                [sys.executable, "-m", "anamnesis.service.cli", "serve", "--api-only", "--port", "8811"],
                "http://127.0.0.1:8811",
                "/v1/predict",
                "/readyz",
            ),
            "naive": (
                [sys.executable, "-m", "anamnesis.service.bench_serve", "naive", "8812"],
                "http://127.0.0.1:8812",
                "/predict",
                "/healthz",
            ),
        }
        for name, (command, base, path, health) in servers.items():
            say(f"starting the {name} server ...")
            process = _server(command, env, root / f"{name}.log")
            try:
                _wait_healthy(base + health, process)
                asyncio.run(_load(base + path, {"X-API-Key": key}, samples, 4, 20))  # warm up
                results[name] = {}
                for concurrency in levels:
                    measured = asyncio.run(
                        _load(base + path, {"X-API-Key": key}, samples, concurrency, requests_per_level[concurrency])
                    )
                    results[name][str(concurrency)] = measured
                    say(f"  {name} c={concurrency}: {measured}")
                if name == "service":
                    results["service_runtime"] = httpx.get(base + "/readyz").json().get("runtime")
            finally:
                process.terminate()
                process.wait(timeout=60)
    service, naive = results["service"], results["naive"]
    top = str(max(levels))
    results["throughput_ratio_at_max_concurrency"] = round(
        service[top]["throughput_rps"] / naive[top]["throughput_rps"], 2
    )
    results["p50_c1_over_bare_forward"] = round(service["1"]["p50_ms"] / results["bare_forward_ms"], 2)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return results


def write_reports(results: dict[str, Any], folder: Path, command: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    results = {**results, "command": command}
    json_path, md_path = folder / "serve.json", folder / "serve.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    top = str(max(results["levels"]))
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{command}` ({results['machine']}). The load generator runs on the same cores.",
        "",
        f"Model: the shipped MiniLM with a 7-class head, notes of the cohort simulator (max 128 tokens). "
        f"Service runtime: **{results.get('service_runtime')}**. Bare PyTorch forward of one note: "
        f"**{results['bare_forward_ms']} ms** (median).",
        "",
        "| server | concurrency | requests | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("service", "naive"):
        for level in results["levels"]:
            r = results[name][str(level)]
            lines.append(
                f"| {name} | {level} | {r['requests']} | {r['throughput_rps']} | {r['p50_ms']} | "
                f"{r['p95_ms']} | {r['p99_ms']} | {r['failures']} |"
            )
    ratio, p50 = results["throughput_ratio_at_max_concurrency"], results["p50_c1_over_bare_forward"]
    lines += [
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| throughput at concurrency {top} at least 3x the naive baseline | {ratio}x | "
        f"{'yes' if ratio >= 3 else 'no'} |",
        f"| p50 at concurrency 1 at most 1.2x the bare forward time | {p50}x | {'yes' if p50 <= 1.2 else 'no'} |",
        "",
    ]
    md_path.write_text("\n".join(lines))
    return [json_path, md_path]


class NaiveItem(BaseModel):
    note: str
    fields: dict[str, Any] = Field(default_factory=dict)


def naive_app() -> FastAPI:
    """The baseline: one PyTorch forward per request, no batching, no background work."""
    from fastapi import FastAPI

    model = _base_model()
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(item: NaiveItem) -> dict[str, Any]:
        probabilities = model.predict([item.note], [item.fields]).probabilities[0]
        best = int(probabilities.argmax())
        return {"label": LABELS[best], "confidence": float(probabilities[best])}

    return app


if __name__ == "__main__" and sys.argv[1:2] == ["naive"]:
    import uvicorn

    uvicorn.run(naive_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
