"""The dashboard in a browser: sign in with an API key (exchanged for a session cookie), then the
current model, version history, drift timeline with its reports, and jobs. Public only by opt-in,
and then only its aggregate metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from anamnesis.service.auth import AuthenticationError, Principal, authentication_headers, client_address
from anamnesis.service.checking import CheckForm, CheckFormError, explain_request, form_fields
from anamnesis.service.dashboard import render_check, render_dashboard, render_login
from anamnesis.service.deps import ExplainingDep, RowId, SessionDep, StateDep
from anamnesis.service.explaining.errors import ExplainRateLimitedError
from anamnesis.service.explaining.explainer import explain
from anamnesis.service.predicting.errors import DatabaseUnavailableError, NoModelError
from anamnesis.service.predicting.runtime import LoadedModel
from anamnesis.service.routes.drift import report_file
from anamnesis.service.schemas import ExplainResponse
from anamnesis.service.sessions import COOKIE, session_principal
from anamnesis.service.state import ServiceState
from anamnesis.storage.models import ApiRole

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


def _check_page(
    state: ServiceState,
    viewer: Principal,
    form: CheckForm,
    *,
    answer: ExplainResponse | None = None,
    problems: list[str] | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    model: LoadedModel | None = state.registry.current
    with Session(state.engine) as session:
        html = render_check(
            session,
            signed_in=viewer.name,
            admin=viewer.allows(ApiRole.admin),
            form=form,
            fields=form_fields(model.bundle.encoding.fields if model else None, form.fields),
            labels=model.labels if model else (),
            answer=answer,
            problems=problems or [],
        )
    return HTMLResponse(html, status_code=status, headers={**PRIVATE, **(headers or {})})


@router.get("/check", response_class=HTMLResponse)
def check_page(request: Request, state: StateDep) -> Response:
    """The "check a prediction" form: a record's note and the fields the served model reads."""
    viewer = _viewer(request, state)
    if viewer is None:
        return _sign_in("/check")
    return _check_page(state, viewer, CheckForm.of({}))


@router.post("/check", response_class=HTMLResponse)
async def check_prediction(request: Request, state: StateDep, explaining: ExplainingDep) -> Response:
    """One record explained as POST /v1/explain explains it (audited the same way), shown on the page."""
    viewer = await run_in_threadpool(_viewer, request, state)
    if viewer is None:
        return _sign_in("/check")
    sent = await request.form(max_files=0, max_fields=200)
    form = CheckForm.of({key: value for key, value in sent.items() if isinstance(value, str)})
    problems: list[str] = []
    status, headers = 200, {}
    answer = None
    try:
        model = state.registry.require()
        body = explain_request(form)
        if body.compare_to is not None and body.compare_to not in model.labels:
            raise CheckFormError([f"compare_to: not a class of the served model version {model.version_id}"])
        answer = await explain(state, explaining, body, viewer, model)
    except CheckFormError as error:
        problems, status = error.problems, 422
    except ExplainRateLimitedError as error:
        problems, status, headers = [str(error)], 429, {"Retry-After": str(error.retry_after_s)}
    except (NoModelError, DatabaseUnavailableError) as error:
        problems, status = [str(error)], 503
    return await run_in_threadpool(
        _check_page, state, viewer, form, answer=answer, problems=problems, status=status, headers=headers
    )


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
