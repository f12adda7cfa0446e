"""The admin API under ``/api/v1/admin``: applications, their API keys, lines, and who am I.

Every change is stored (tenancy/store.py) and applied to the running lines at
once; other instances apply it within a second. Errors are the usual JSON
``{"error", "code"}``. The OpenAPI description is at ``/api/v1/admin/openapi.json``
(generated from the YAML in each handler's docstring by Starlette's SchemaGenerator).

This module holds the routes, who am I and the callback errors; the rest is in
applications.py (applications and keys), lines.py (lines) and context.py
(what they share: who is asking, which lines they may see, the JSON body).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...errors import Forbidden
from .applications import ApplicationsAdmin
from .context import AdminContext
from .lines import LinesAdmin

OPENAPI_BASE = {
    "openapi": "3.0.0",
    "info": {"title": "guestqueue admin API", "version": "1"},
    "servers": [{"url": "/api/v1/admin"}],  # the paths below are relative to the admin API's mount
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
    },
    "security": [{"apiKey": []}, {"bearer": []}],
}


class AdminApi(AdminContext):
    """Handlers of the admin API; ``store``, ``lineup`` and ``outbox`` are set while the app runs."""

    def routes(self) -> list[BaseRoute]:
        return [
            *ApplicationsAdmin(self).routes(),
            *LinesAdmin(self).routes(),
            Route("/callback_errors", self.callback_errors, methods=["GET"]),
            Route("/auth/me", self.me, methods=["GET"]),
            Route("/auth/permissions/{line}", self.permissions, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"], include_in_schema=False),
        ]

    async def openapi(self, request: Request) -> Response:
        # Imported here: Starlette's schemas import PyYAML (0.07 s of every start) for this one page.
        from starlette.schemas import SchemaGenerator

        return JSONResponse(SchemaGenerator(OPENAPI_BASE).get_schema(routes=request.app.routes))

    async def callback_errors(self, request: Request) -> Response:
        """
        summary: Webhook deliveries given up after every retry, newest last (super admin)
        responses: {200: {description: '{"errors": [{delivery_id, line, event, url, attempts, last_error,
          failed_at}], "results": {delivered, retried, failed}}'}}
        """
        if not self.who(request).is_super:
            raise Forbidden("Only the super admin reads the callback errors.")
        outbox = self.outbox
        return JSONResponse(
            {"errors": await outbox.failed() if outbox else [], "results": outbox.results if outbox else {}}
        )

    # -- who am I ------------------------------------------------------------------------

    async def me(self, request: Request) -> Response:
        """
        summary: The caller's role, key, application and tier
        responses: {200: {description: Who you are}}
        """
        return JSONResponse(self.who(request).describe())

    async def permissions(self, request: Request) -> Response:
        """
        summary: The caller's permissions on one line
        responses: {200: {description: '{"line": ..., "permissions": ["READ", ...]}'}}
        """
        spec = self.line_spec(request, anonymous=True)
        principal = self.access.principal(request, self.catalog)
        return JSONResponse({"line": spec.name, "permissions": principal.granted(spec.name, spec.application_id)})
