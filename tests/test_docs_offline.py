"""/docs and /redoc work without internet: every script, style and icon comes from this service, and
in real headless Chromium, with every other host unreachable, Swagger UI lists every operation."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from anamnesis.service.app import create_app
from anamnesis.storage.config import StorageConfig
from tests.processes import environment, free_port, running, wait_for
from tests.service_fixtures import settings_for
from tests.test_dashboard_browser import Browser

ASSET_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""")


def _references(html: str) -> list[str]:
    return [first or second for first, second in ASSET_REFERENCE.findall(html)]


def _operations(spec: dict) -> set[tuple[str, str]]:
    methods = {"get", "post", "put", "patch", "delete", "head", "options"}
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in methods}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_need_no_key_and_load_nothing_from_another_host(
    sqlite_config: StorageConfig, page: str
) -> None:
    with TestClient(create_app(settings_for(sqlite_config))) as client:
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        html = response.text
        references = _references(html)
        assert references, html
        # Only paths of this site: no scheme, no host, no protocol-relative `//host/...`.
        assert all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
        assert "http://" not in html and "https://" not in html and "fonts.googleapis" not in html
        for reference in references:
            asset = client.get(reference)
            assert asset.status_code == 200, reference
        scripts = [ref for ref in references if ref.endswith(".js")]
        assert scripts and all(len(client.get(ref).content) > 100_000 for ref in scripts)
        spec = client.get("/openapi.json").json()
    assert not any(path in spec["paths"] for path in ("/docs", "/redoc")), "the pages are not API operations"
    assert not any(path.startswith("/docs-assets") for path in spec["paths"])


def test_the_asset_folder_serves_its_files_only_and_redoc_without_its_vendors_logo(
    sqlite_config: StorageConfig,
) -> None:
    with TestClient(create_app(settings_for(sqlite_config))) as client:
        assert client.get("/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        assert client.get("/docs-assets/../core.py").status_code == 404
        assert client.get("/docs-assets/%2e%2e/core.py").status_code == 404
        assert client.get("/docs-assets/nothing.js").status_code == 404
        redoc = client.get("/docs-assets/redoc.standalone.js")
        assert redoc.headers["content-type"].startswith("text/javascript") and len(redoc.content) > 100_000
        assert b"cdn.redoc.ly" not in redoc.content  # its vendor's logo, replaced by an empty local image


@pytest.mark.slow
def test_swagger_ui_and_redoc_list_every_operation_in_chromium_with_other_hosts_unreachable(
    sqlite_config: StorageConfig, tmp_path: Path
) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    with running(
        ["serve", "--api-only", "--port", str(port)], environment(sqlite_config), tmp_path / "serve.log", port=port
    ):
        spec = httpx.get(f"{origin}/openapi.json", timeout=30).json()
        # Every host but this one resolves to nothing: a page that needed the internet would stay blank.
        browser = Browser(tmp_path / "profile", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        try:
            browser.call("Network.enable")
            browser.call("Page.navigate", url=f"{origin}/docs")
            listed = wait_for(
                lambda: browser.evaluate(
                    "Array.from(document.querySelectorAll('.opblock')).map(block => ["
                    "block.querySelector('.opblock-summary-method').innerText,"
                    "block.querySelector('.opblock-summary-path').dataset.path])"
                ),
                30,
                message="Swagger UI's operations",
            )
            errors = browser.evaluate("document.querySelectorAll('.errors-wrapper, .loading-container').length")
            browser.open(f"{origin}/redoc", until="Continual-learning treatment-plan classifier")
            redoc_operations = browser.evaluate("document.querySelectorAll('[data-section-id*=\"operation/\"]').length")
            browser.evaluate("1")  # reads the events that arrived meanwhile
        finally:
            browser.close()
    assert {(method, path) for method, path in listed} == _operations(spec)
    assert errors == 0
    assert redoc_operations >= len(_operations(spec))
    requested = [
        str(event["params"]["request"]["url"])
        for event in browser.events
        if event["method"] == "Network.requestWillBeSent"
    ]
    assert any(url.endswith("/docs-assets/swagger-ui-bundle.js") for url in requested)
    assert any(url.endswith("/docs-assets/redoc.standalone.js") for url in requested)
    outside = [url for url in requested if not url.startswith((origin + "/", "data:", "blob:"))]
    assert outside == []
    failed = [event for event in browser.events if event["method"] == "Network.loadingFailed"]
    assert failed == []
