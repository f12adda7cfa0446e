"""The admin API's applications and their API keys: create, list, read, change and (softly) delete
an application, its quotas being the super admin's to set; make, list and revoke its keys. An
application the caller does not manage answers exactly as a missing one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...errors import Forbidden, InvalidField, NotFound, QuotaExceeded
from ...tenancy.catalog import MAX_QUOTA, QUOTA_KEYS, Application, Principal
from .context import AdminContext, read_body


class ApplicationsAdmin:
    """The handlers under ``/applications``."""

    def __init__(self, admin: AdminContext) -> None:
        self._admin = admin

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/applications", self.create_application, methods=["POST"]),
            Route("/applications", self.list_applications, methods=["GET"]),
            Route("/applications/{app_id}", self.get_application, methods=["GET"]),
            Route("/applications/{app_id}", self.update_application, methods=["PUT"]),
            Route("/applications/{app_id}", self.delete_application, methods=["DELETE"]),
            Route("/applications/{app_id}/keys", self.create_key, methods=["POST"]),
            Route("/applications/{app_id}/keys", self.list_keys, methods=["GET"]),
            Route("/applications/{app_id}/keys/{key_id}", self.revoke_key, methods=["DELETE"]),
        ]

    def _application(self, request: Request, principal: Principal) -> Application:
        app = self._admin.catalog.applications.get(request.path_params["app_id"])
        if app is None or app.deleted_at is not None or not principal.manages(app.id):
            raise NotFound("No application with that id.")  # the same whether it exists or not
        return app

    # -- applications --------------------------------------------------------------------

    async def create_application(self, request: Request) -> Response:
        """
        summary: Create an application (super admin)
        requestBody: {content: {application/json: {schema: {type: object, required: [name],
          properties: {name: {type: string}, tier: {type: string}}}}}}
        responses: {201: {description: The application}, 401: {description: No key}, 403: {description: Not allowed}}
        """
        principal = self._admin.who(request)
        if not principal.is_super:
            raise Forbidden("Only the super admin (GUEST_ADMIN_API_KEY) creates applications.")
        body = await read_body(request)
        app = replace(self._admin.catalog.new_application(body.get("name"), body.get("tier", "")), **quotas(body))
        await self._admin.running_store.put_application(app)
        return JSONResponse(app.public(), status_code=201)

    async def list_applications(self, request: Request) -> Response:
        """
        summary: The applications this key manages
        responses: {200: {description: '{"applications": [...]}'}}
        """
        principal = self._admin.who(request)
        apps = [app.public() for app in self._admin.catalog.live_applications() if principal.manages(app.id)]
        return JSONResponse({"applications": apps})

    async def get_application(self, request: Request) -> Response:
        """
        summary: One application
        responses: {200: {description: The application}, 404: {description: No such application}}
        """
        return JSONResponse(self._application(request, self._admin.who(request)).public())

    async def update_application(self, request: Request) -> Response:
        """
        summary: Rename an application or change its tier
        responses: {200: {description: The application}}
        """
        principal = self._admin.who(request)
        app = self._application(request, principal)
        body = await read_body(request)
        limits = quotas(body)
        if limits and not principal.is_super:
            raise Forbidden(f"{next(iter(limits))}: an application's quotas are the super admin's to set.")
        fresh = self._admin.catalog.new_application(body.get("name", app.name), body.get("tier", app.tier))
        app = replace(app, name=fresh.name, tier=fresh.tier, **limits)
        await self._admin.running_store.put_application(app)
        return JSONResponse(app.public())

    async def delete_application(self, request: Request) -> Response:
        """
        summary: Delete an application (super admin; soft delete)
        description: Its keys stop working at once and its lines close; the record stays, marked deleted.
        responses: {200: {description: The application, with deleted_at}}
        """
        principal = self._admin.who(request)
        app = self._application(request, principal)
        if not principal.is_super:
            raise Forbidden("Only the super admin deletes applications.")
        app = replace(app, deleted_at=time.time())
        await self._admin.running_store.put_application(app)
        for name, stored in list(self._admin.catalog.lines.items()):
            if stored.get("application_id") == app.id:
                await self._admin.running_store.put_line(name, None)
        await self._admin.sync()
        return JSONResponse(app.public())

    # -- keys ----------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        """
        summary: Make an API key of an application; the key is in this answer only
        requestBody: {content: {application/json: {schema: {type: object, properties: {
          name: {type: string}, role: {type: string, enum: [admin, member]}, tier: {type: string},
          permissions: {type: object, additionalProperties: {type: array, items: {type: string,
            enum: [READ, WRITE, DELETE, MANAGE, WORK]}}}}}}}}
        responses: {201: {description: '{"key": "gq_...", ...}: keep it, it is never shown again'}}
        """
        principal = self._admin.who(request)
        app = self._application(request, principal)
        body = await read_body(request)
        catalog = self._admin.catalog
        live = sum(1 for key in catalog.keys.values() if key.application_id == app.id and key.revoked_at is None)
        if live >= app.max_keys and not principal.is_super:
            raise QuotaExceeded(
                f"Application {app.id!r} has its {app.max_keys} keys (max_keys; revoke one, or ask "
                "the super admin to raise it)."
            )
        key, shown = catalog.new_key(
            app,
            name=body.get("name", ""),
            role=body.get("role", "member"),
            permissions=body.get("permissions"),
            tier=body.get("tier", ""),
        )
        await self._admin.running_store.put_key(key)
        return JSONResponse({**key.public(), "key": shown}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        """
        summary: An application's keys (never the keys themselves)
        responses: {200: {description: '{"keys": [...]}'}}
        """
        app = self._application(request, self._admin.who(request))
        keys = [key.public() for key in self._admin.catalog.keys.values() if key.application_id == app.id]
        return JSONResponse({"keys": keys})

    async def revoke_key(self, request: Request) -> Response:
        """
        summary: Revoke a key, at once on every instance
        responses: {200: {description: The key, with revoked_at}, 404: {description: No such key}}
        """
        app = self._application(request, self._admin.who(request))
        catalog = self._admin.catalog
        key = catalog.keys.get(request.path_params["key_id"])
        if key is None or key.application_id != app.id:
            raise NotFound("No key with that id in this application.")
        if key.revoked_at is None:
            key = catalog.revoked(key)
            await self._admin.running_store.put_key(key)
        return JSONResponse(key.public())


def quotas(body: dict[str, Any]) -> dict[str, Any]:
    """The quota keys of an application's body (the super admin's to set), checked."""
    found = {}
    for key in QUOTA_KEYS:
        if key in body:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
                raise InvalidField(f"{key}={value!r}: must be a whole number from 0 to {MAX_QUOTA}")
            found[key] = value
    return found
