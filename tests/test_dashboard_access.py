"""The dashboard is private by default: an API key is exchanged for an HttpOnly, SameSite=Strict
session cookie that expires and ends with its key; the public view is an opt-in with aggregate
metrics only, never a report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from anamnesis.service.app import create_app
from anamnesis.service.auth import Principal
from anamnesis.service.jobs import JobContext, run_now
from anamnesis.service.sessions import COOKIE, SessionSigner
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import ApiRole, JobKind
from anamnesis.storage.repository import revoke_api_key
from tests.factories import store, toy_records
from tests.service_fixtures import LABELS, Keys, installation, settings_for

DRIFT = {"min_rows": 10, "text": {"content": False, "descriptors": ["text_length"]}}


@pytest.fixture
def deployed(sqlite_config: StorageConfig) -> Iterator[tuple[StorageConfig, Keys, int]]:
    engine, keys = installation(sqlite_config)
    store(engine, toy_records(LABELS[:3], 20, period="2", seed=5))
    check = run_now(
        JobContext.here(settings_for(sqlite_config, drift=DRIFT, drift_window=50), engine),
        kind=JobKind.drift_check,
        actor="test",
        reason="test",
        config={},
    )
    report_id = check.metrics["drift_report_id"]
    engine.dispose()
    yield sqlite_config, keys, report_id


def test_without_a_session_every_page_asks_to_sign_in(deployed) -> None:
    config, _, report_id = deployed
    with TestClient(create_app(settings_for(config)), follow_redirects=False) as client:
        for path in ("/", f"/reports/{report_id}"):
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == f"/login?next={path}"
        assert 'name="key"' in client.get("/login").text
        forged = client.get(f"/reports/{report_id}", cookies={COOKIE: "1.99999999999.deadbeef"})
        assert forged.status_code == 303


def test_a_key_signs_in_with_a_strict_httponly_expiring_cookie_that_ends_with_the_key(deployed) -> None:
    config, keys, report_id = deployed
    with TestClient(create_app(settings_for(config)), follow_redirects=False) as client:
        wrong = client.post("/login", data={"key": "anm_wrong", "next": "/"})
        assert wrong.status_code == 401 and "invalid API key" in wrong.text and COOKIE not in wrong.cookies
        signed = client.post("/login", data={"key": keys.predict, "next": f"/reports/{report_id}"})
        assert signed.status_code == 303 and signed.headers["location"] == f"/reports/{report_id}"
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
        page = client.get("/")
        assert page.status_code == 200 and "Sign out" in page.text and f'href="/reports/{report_id}"' in page.text
        assert page.headers["cache-control"] == "no-store"
        report = client.get(f"/reports/{report_id}")
        assert report.status_code == 200 and "anamnesis drift check" in report.text
        with Session(create_db_engine(config)) as session:
            revoke_api_key(session, key_id=_key_id(client), actor="test")
        assert client.get("/").status_code == 303  # the session ended with its key, at once


def _key_id(client: TestClient) -> int:
    token = client.cookies[COOKIE]
    return int(token.split(".")[0])


def test_sign_in_never_redirects_to_another_site(deployed) -> None:
    config, keys, _ = deployed
    with TestClient(create_app(settings_for(config)), follow_redirects=False) as client:
        for target in ("//evil.example/x", "https://evil.example/", "\\\\evil.example"):
            answer = client.post("/login", data={"key": keys.predict, "next": target})
            assert answer.headers["location"] == "/", target


def test_a_session_expires_and_a_forged_signature_is_refused() -> None:
    signer = SessionSigner(b"secret", ttl_s=60)
    token = signer.issue(Principal(key_id=7, name="lab", role=ApiRole.predict), now=1000.0)
    assert signer.key_id(token, now=1059.0) == 7 and signer.key_id(token, now=1060.0) is None
    _, expires, mac = token.split(".")
    assert signer.key_id(f"8.{expires}.{mac}", now=1000.0) is None
    assert SessionSigner(b"other", ttl_s=60).key_id(token, now=1000.0) is None


def test_the_public_view_is_an_opt_in_with_aggregate_metrics_and_no_reports(deployed) -> None:
    config, _, report_id = deployed
    with TestClient(create_app(settings_for(config, dashboard_public=True)), follow_redirects=False) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="public-view"' in page.text and 'id="current-version">v1<' in page.text
        assert "/reports/" not in page.text
        assert client.get(f"/reports/{report_id}").status_code == 303


def test_the_figures_are_drawn_again_only_when_what_they_show_changed(deployed) -> None:
    config, keys, _ = deployed
    with TestClient(create_app(settings_for(config))) as client:
        client.post("/login", data={"key": keys.predict})
        figures = client.app.state.service.figures
        for _ in range(3):
            assert "data:image/png;base64," in client.get("/").text
        assert figures.draws == 1
        engine = create_db_engine(config)
        store(engine, toy_records(LABELS[:3], 5, period="3", seed=6))
        run_now(
            JobContext.here(settings_for(config, drift=DRIFT, drift_window=50), engine),
            kind=JobKind.drift_check,
            actor="test",
            reason="a new report",
            config={},
        )
        engine.dispose()
        client.get("/")
        client.get("/")
        assert figures.draws == 2
