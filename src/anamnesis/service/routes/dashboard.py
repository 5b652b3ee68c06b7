"""The dashboard in a browser: sign in with an API key (exchanged for a session cookie), then the
current model, version history, drift timeline with its reports, and jobs. Public only by opt-in,
and then only its aggregate metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from anamnesis.service.auth import AuthenticationError, Principal, authentication_headers, client_address
from anamnesis.service.dashboard import render_dashboard, render_login
from anamnesis.service.deps import RowId, SessionDep, StateDep
from anamnesis.service.routes.drift import report_file
from anamnesis.service.sessions import COOKIE, session_principal
from anamnesis.service.state import ServiceState

router = APIRouter(tags=["dashboard"], include_in_schema=False)
PRIVATE = {"Cache-Control": "no-store"}


def _viewer(request: Request, state: ServiceState) -> Principal | None:
    return session_principal(state.sessions, state.engine, request.cookies.get(COOKIE))


def _local(path: str) -> str:
    """`path` when it is a path of this site (never another site's address), else the dashboard."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _sign_in(next_path: str) -> RedirectResponse:
    return RedirectResponse(f"/login?next={_local(next_path)}", status_code=303)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep, state: StateDep) -> Response:
    """Current model, version history, drift timeline with links to the reports, recent jobs."""
    viewer = _viewer(request, state)
    if viewer is None and not state.settings.dashboard_public:
        return _sign_in("/")
    html = render_dashboard(
        session,
        now=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        report_href=lambda report_id: f"/reports/{report_id}",
        signed_in=viewer.name if viewer else None,
        figures=state.figures,
    )
    return HTMLResponse(html, headers=PRIVATE)


@router.get("/reports/{report_id}", response_class=HTMLResponse)
def dashboard_report(report_id: RowId, request: Request, session: SessionDep, state: StateDep) -> Response:
    """A drift report (aggregate distributions, no note text): for signed-in viewers only."""
    if _viewer(request, state) is None:
        return _sign_in(f"/reports/{report_id}")
    page = report_file(session, report_id)
    page.headers.update(PRIVATE)
    return page


@router.get("/login", response_class=HTMLResponse)
def login_page(state: StateDep, next: str = "/") -> HTMLResponse:
    return HTMLResponse(render_login(problem=None, next_path=_local(next), hours=state.settings.session_hours))


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    state: StateDep,
    key: Annotated[str, Form(max_length=200)],
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    """Exchanges an API key for an HttpOnly, SameSite=Strict session cookie that expires."""
    try:
        principal = state.keys.authenticate(key.strip(), client_address(request.scope))
    except AuthenticationError as error:
        page = render_login(problem=str(error), next_path=_local(next), hours=state.settings.session_hours)
        return HTMLResponse(page, status_code=error.status, headers=authentication_headers(error))
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        COOKIE,
        state.sessions.issue(principal),
        max_age=state.sessions.ttl_s,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
