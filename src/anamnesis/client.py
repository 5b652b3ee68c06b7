"""A typed Python client of the anamnesis API, so an integrator does not hand-write requests.

    from anamnesis.client import AnamnesisClient

    with AnamnesisClient("http://127.0.0.1:8000", api_key=key) as api:
        answer = api.predict([{"note": "Stage IV adenocarcinoma, EGFR exon 19 deletion.", "fields": {"age": 64}}])
        api.send_labels([{"prediction_id": answer.predictions[0].prediction_id, "label": "targeted_therapy"}])
        check = api.wait_for_job(api.queue_drift_check(reason="labels arrived").id)

Requests and answers are the service's own pydantic schemas (`anamnesis.service.schemas`), so a
request the server would refuse is refused here first, naming the field. An answer with an error
status raises `ApiError` with the status and the server's message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from anamnesis.service.schemas import (
    IngestResponse,
    JobPublic,
    JobRequest,
    LabelItem,
    LabelsRequest,
    LabelsResponse,
    ModelDetail,
    ModelVersionPublic,
    Page,
    PredictItem,
    PredictResponse,
    RecordItem,
    RecordsRequest,
)
from anamnesis.storage.schemas import DriftReportPublic

Answer = TypeVar("Answer", bound=BaseModel)
FINISHED = frozenset({"succeeded", "failed"})


class ApiError(Exception):
    """The service answered with an error status; `message` is its explanation (never a patient's text)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class AnamnesisClient:
    """The API over one HTTP connection pool; pass `http` (an `httpx.Client`, e.g. FastAPI's
    TestClient) instead of `base_url` to reuse a configured one."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str,
        timeout: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:
        if (base_url is None) == (http is None):
            raise ValueError("give either base_url or http")
        self._owned = http is None
        self._http = http if http is not None else httpx.Client(base_url=str(base_url), timeout=timeout)
        self._headers = {"X-API-Key": api_key}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    # --- predictions and ground truth --------------------------------------------------------------

    def predict(self, records: Sequence[PredictItem | Mapping[str, Any]]) -> PredictResponse:
        """Label, probabilities, model version and a prediction id for each record, in order."""
        items = [PredictItem.model_validate(record) for record in records]
        return self._send(
            "POST",
            "/v1/predict",
            PredictResponse,
            body=[item.model_dump(mode="json", exclude_none=True) for item in items],
        )

    def send_labels(self, labels: Sequence[LabelItem | Mapping[str, Any]]) -> LabelsResponse:
        """Ground truth that arrived later, each by `prediction_id` or `record_id` (admin key)."""
        request = LabelsRequest(labels=[LabelItem.model_validate(label) for label in labels])
        return self._send("POST", "/v1/labels", LabelsResponse, body=request.model_dump(mode="json", exclude_none=True))

    def add_records(self, records: Sequence[RecordItem | Mapping[str, Any]]) -> IngestResponse:
        """Records, labeled or not, stored once each (admin key)."""
        request = RecordsRequest(records=[RecordItem.model_validate(record) for record in records])
        return self._send(
            "POST", "/v1/records", IngestResponse, body=request.model_dump(mode="json", exclude_none=True)
        )

    # --- models, drift, jobs -----------------------------------------------------------------------

    def models(self, *, limit: int = 100, offset: int = 0) -> Page[ModelVersionPublic]:
        return self._send("GET", "/v1/models", Page[ModelVersionPublic], params={"limit": limit, "offset": offset})

    def model(self, version_id: int | None = None) -> ModelDetail:
        """One version with its accuracy matrix, lineage and gate decision; the production one by default."""
        path = "/v1/models/current" if version_id is None else f"/v1/models/{version_id}"
        return self._send("GET", path, ModelDetail)

    def drift_reports(self, *, limit: int = 50, offset: int = 0) -> Page[DriftReportPublic]:
        return self._send("GET", "/v1/drift", Page[DriftReportPublic], params={"limit": limit, "offset": offset})

    def drift_report(self, report_id: int) -> DriftReportPublic:
        return self._send("GET", f"/v1/drift/{report_id}", DriftReportPublic)

    def jobs(self, *, limit: int = 50, offset: int = 0) -> Page[JobPublic]:
        return self._send("GET", "/v1/jobs", Page[JobPublic], params={"limit": limit, "offset": offset})

    def job(self, job_id: int) -> JobPublic:
        return self._send("GET", f"/v1/jobs/{job_id}", JobPublic)

    def queue_drift_check(self, *, reason: str | None = None) -> JobPublic:
        """Queues a drift check (admin key); while one is queued, the waiting one is returned instead."""
        return self._send("POST", "/v1/jobs/drift-check", JobPublic, body=JobRequest(reason=reason).model_dump())

    def queue_retrain(self, *, reason: str | None = None) -> JobPublic:
        """Queues a model update (admin key); while one is queued, the waiting one is returned instead."""
        return self._send("POST", "/v1/jobs/retrain", JobPublic, body=JobRequest(reason=reason).model_dump())

    def wait_for_job(self, job_id: int, *, timeout: float = 900.0, poll: float = 1.0) -> JobPublic:
        """The job once it succeeded or failed; TimeoutError naming the job after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.status in FINISHED:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:.0f} s")
            time.sleep(poll)

    def ready(self) -> bool:
        """Whether the service answers and serves a model (`/readyz`)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    # --- transport ---------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        answer: type[Answer],
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Answer:
        response = self._http.request(method, path, json=body, params=params, headers=self._headers)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message(response))
        return answer.model_validate(response.json())


def _message(response: httpx.Response) -> str:
    try:
        content = response.json()
    except ValueError:
        return response.reason_phrase or "error"
    if isinstance(content, dict):
        detail = content.get("detail", content.get("error"))
        if isinstance(detail, list):  # a validation error: where and what, never the value
            return "; ".join(f"{'.'.join(map(str, item.get('loc', ())))}: {item.get('msg')}" for item in detail)
        if detail is not None:
            return str(detail)
    return response.reason_phrase or "error"
