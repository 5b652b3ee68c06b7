"""The API's documentation pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), with their scripts and
styles served by this service: neither page loads anything from another host, so both work offline.

The assets are the ones the `fastapi-offline` package vendors (Swagger UI 5 and ReDoc 2); only its
static folder is used, the pages are FastAPI's own (`get_swagger_ui_html`, `get_redoc_html`). Swagger
UI 4, as in `swagger-ui-bundle`, cannot render the OpenAPI 3.1 document FastAPI writes. ReDoc's
script names one image on its vendor's site (the logo of its "API docs by Redocly" link), which it
would load on every page: it is served here with that address replaced by an empty local image. Like
`/openapi.json`, the pages need no key (docs/reliability.md): they describe the API, not its data.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_PATH = "/docs-assets"
SWAGGER_UI_PARAMETERS = {
    # No badge that asks the public validator about the document: nothing leaves for another host.
    "validatorUrl": None,
    "deepLinking": True,
    "showExtensions": True,
    "showCommonExtensions": True,
}

REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"

router = APIRouter(include_in_schema=False)


def _urls(request: Request) -> tuple[str, str, str]:
    """The document's and the assets' addresses, below the app's root path when it has one."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    openapi = request.app.openapi_url or "/openapi.json"
    return f"{root}{openapi}", f"{root}{ASSETS_PATH}", str(request.app.title)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over /openapi.json, every asset local."""
    openapi, assets, title = _urls(request)
    return get_swagger_ui_html(
        openapi_url=openapi,
        title=f"{title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over /openapi.json, every asset local (no web fonts from another host)."""
    openapi, assets, title = _urls(request)
    return get_redoc_html(
        openapi_url=openapi,
        title=f"{title} - ReDoc",
        redoc_js_url=f"{assets}/redoc.standalone.js",
        redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False,
    )


@cache
def _redoc_script() -> bytes:
    return (ASSETS / "redoc.standalone.js").read_text(encoding="utf-8").replace(REDOC_LOGO, EMPTY_IMAGE).encode()


@router.get(f"{ASSETS_PATH}/redoc.standalone.js")
def redoc_script() -> Response:
    """ReDoc's script without the one address of another host it would load (its vendor's logo)."""
    return Response(_redoc_script(), media_type="text/javascript; charset=utf-8")


# After the route above, which it would otherwise shadow.
router.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")
