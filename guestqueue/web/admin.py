"""The admin API under ``/api/v1/admin``: applications, their API keys, lines, and who am I.

Every change is stored (tenancy/store.py) and applied to the running lines at
once; other instances apply it within a second. Errors are the usual JSON
``{"error", "code"}``. The OpenAPI description is at ``/api/v1/admin/openapi.json``
(generated from the YAML in each handler's docstring by Starlette's SchemaGenerator).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

from ..config import Settings, SettingsError
from ..errors import (
    Conflict,
    Forbidden,
    InvalidField,
    InvalidJSON,
    NotFound,
    QuotaExceeded,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
)
from ..linespec import DEFAULT_LINE, LINE_NAME, SECRET_KEYS, LineSpec, check_models, parse_line
from ..lineup import Lineup
from ..outbound import mask_url
from ..tenancy.catalog import MAX_QUOTA, QUOTA_KEYS, Application, Catalog, Principal
from ..tenancy.store import CatalogStore
from ..webhooks import Outbox
from .access import Access

SCHEMAS = SchemaGenerator(
    {
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
)
MAX_ADMIN_BODY_BYTES = 65_536


class AdminApi:
    """Handlers of the admin API; ``store`` and ``lineup`` are set while the app runs."""

    def __init__(
        self, settings: Settings, access: Access, file_specs: dict[str, LineSpec], sync: Callable[[], Awaitable[None]]
    ) -> None:
        self.settings = settings
        self.access = access
        self.file_specs = file_specs
        self.sync = sync  # make the running lines what the catalog says
        self.store: CatalogStore | None = None
        self.lineup: Lineup | None = None
        self.outbox: Outbox | None = None

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
            Route("/lines", self.create_line, methods=["POST"]),
            Route("/lines", self.list_lines, methods=["GET"]),
            Route("/lines/{line}", self.get_line, methods=["GET"]),
            Route("/lines/{line}", self.update_line, methods=["PUT"]),
            Route("/lines/{line}", self.delete_line, methods=["DELETE"]),
            Route("/lines/{line}/purge", self.purge_line, methods=["POST"]),
            Route("/callback_errors", self.callback_errors, methods=["GET"]),
            Route("/auth/me", self.me, methods=["GET"]),
            Route("/auth/permissions/{line}", self.permissions, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"], include_in_schema=False),
        ]

    # -- plumbing ------------------------------------------------------------------------

    @property
    def _store(self) -> CatalogStore:
        if self.store is None:
            raise ShuttingDown("guestqueue is not running (was its lifespan started?).")
        return self.store

    @property
    def _catalog(self) -> Catalog:
        return self._store.catalog

    def _who(self, request: Request) -> Principal:
        principal = self.access.principal(request, self._catalog)
        if principal.role == "anonymous":
            raise Unauthorized("The admin API needs an API key (X-API-Key or Authorization: Bearer).")
        return principal

    def _application(self, request: Request, principal: Principal) -> Application:
        app = self._catalog.applications.get(request.path_params["app_id"])
        if app is None or app.deleted_at is not None or not principal.manages(app.id):
            raise NotFound("No application with that id.")  # the same whether it exists or not
        return app

    def _spec(self, request: Request, *, anonymous: bool = False) -> LineSpec:
        """The line named in the path, if the caller may see it (a public line, or one it has a
        permission on): otherwise exactly the answer for a missing one, so private lines cannot be
        probed. The admin API needs a key (401 first), save ``anonymous`` routes."""
        name = request.path_params["line"]
        principal = self.access.principal(request, self._catalog) if anonymous else self._who(request)
        lineup = self.lineup
        queue = lineup.queues.get(name) if lineup is not None else None
        spec = queue.spec if queue is not None else self._broken(name)
        if spec is None or not (spec.public or principal.granted(spec.name, spec.application_id)):
            raise NotFound(f"There is no line named {name!r}.")
        return spec

    def _broken(self, name: str) -> LineSpec | None:
        """A kept line that does not run (it no longer opens): still the admin API's to fix or delete."""
        stored = self._catalog.lines.get(name)
        if stored is None or not LINE_NAME.fullmatch(name):
            return None
        application_id = stored.get("application_id")
        return LineSpec(
            name=name,
            settings=self.settings,
            public=False,
            application_id=application_id if isinstance(application_id, str) else None,
        )

    def _check_quotas(self, spec: LineSpec, principal: Principal, *, old: LineSpec | None = None) -> None:
        """What an application may hold (its quotas, set by the super admin), and the names anonymous
        callers reach by default (``guest``; a public line's OpenAI model name): the super admin's."""
        if principal.is_super:
            return
        new = old is None
        if new and spec.name == DEFAULT_LINE:
            raise Forbidden(f"Line {DEFAULT_LINE!r} is the default chat page's: only the super admin makes it.")
        changed_alias = old is None or (old.public, old.openai_model) != (spec.public, spec.openai_model)
        if spec.public and spec.openai_model and changed_alias:
            raise Forbidden(
                "openai_model on a public line is a model name anyone may ask: only the super admin "
                "sets it (or make the line private: public = false)."
            )
        app = self._catalog.applications.get(spec.application_id or "")
        if app is None:
            return
        if len(spec.webhooks) > app.max_webhooks_per_line:
            raise QuotaExceeded(
                f"webhooks: application {app.id!r} may have {app.max_webhooks_per_line} per line "
                "(max_webhooks_per_line; the super admin can raise it)."
            )
        owned = sum(1 for stored in self._catalog.lines.values() if stored.get("application_id") == app.id)
        if new and owned >= app.max_lines:
            raise QuotaExceeded(
                f"Application {app.id!r} has its {app.max_lines} lines (max_lines; the super admin can raise it)."
            )

    def _check_models(self, spec: LineSpec) -> None:
        """The OpenAI model names stay one line's each (web/openai.py): 409 if ``spec`` takes another's."""
        others = [queue.spec for queue in self.lineup if queue.name != spec.name] if self.lineup is not None else []
        try:
            check_models([*others, spec], where="line")
        except SettingsError as exc:
            raise Conflict(str(exc)) from None

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(SCHEMAS.get_schema(routes=request.app.routes))

    # -- applications --------------------------------------------------------------------

    async def create_application(self, request: Request) -> Response:
        """
        summary: Create an application (super admin)
        requestBody: {content: {application/json: {schema: {type: object, required: [name],
          properties: {name: {type: string}, tier: {type: string}}}}}}
        responses: {201: {description: The application}, 401: {description: No key}, 403: {description: Not allowed}}
        """
        principal = self._who(request)
        if not principal.is_super:
            raise Forbidden("Only the super admin (GUEST_ADMIN_API_KEY) creates applications.")
        body = await _body(request)
        app = replace(self._catalog.new_application(body.get("name"), body.get("tier", "")), **quotas(body))
        await self._store.put_application(app)
        return JSONResponse(app.public(), status_code=201)

    async def list_applications(self, request: Request) -> Response:
        """
        summary: The applications this key manages
        responses: {200: {description: '{"applications": [...]}'}}
        """
        principal = self._who(request)
        apps = [app.public() for app in self._catalog.live_applications() if principal.manages(app.id)]
        return JSONResponse({"applications": apps})

    async def get_application(self, request: Request) -> Response:
        """
        summary: One application
        responses: {200: {description: The application}, 404: {description: No such application}}
        """
        return JSONResponse(self._application(request, self._who(request)).public())

    async def update_application(self, request: Request) -> Response:
        """
        summary: Rename an application or change its tier
        responses: {200: {description: The application}}
        """
        principal = self._who(request)
        app = self._application(request, principal)
        body = await _body(request)
        limits = quotas(body)
        if limits and not principal.is_super:
            raise Forbidden(f"{next(iter(limits))}: an application's quotas are the super admin's to set.")
        fresh = self._catalog.new_application(body.get("name", app.name), body.get("tier", app.tier))
        app = replace(app, name=fresh.name, tier=fresh.tier, **limits)
        await self._store.put_application(app)
        return JSONResponse(app.public())

    async def delete_application(self, request: Request) -> Response:
        """
        summary: Delete an application (super admin; soft delete)
        description: Its keys stop working at once and its lines close; the record stays, marked deleted.
        responses: {200: {description: The application, with deleted_at}}
        """
        principal = self._who(request)
        app = self._application(request, principal)
        if not principal.is_super:
            raise Forbidden("Only the super admin deletes applications.")
        app = replace(app, deleted_at=time.time())
        await self._store.put_application(app)
        for name, stored in list(self._catalog.lines.items()):
            if stored.get("application_id") == app.id:
                await self._store.put_line(name, None)
        await self.sync()
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
        principal = self._who(request)
        app = self._application(request, principal)
        body = await _body(request)
        live = sum(1 for key in self._catalog.keys.values() if key.application_id == app.id and key.revoked_at is None)
        if live >= app.max_keys and not principal.is_super:
            raise QuotaExceeded(
                f"Application {app.id!r} has its {app.max_keys} keys (max_keys; revoke one, or ask "
                "the super admin to raise it)."
            )
        key, shown = self._catalog.new_key(
            app,
            name=body.get("name", ""),
            role=body.get("role", "member"),
            permissions=body.get("permissions"),
            tier=body.get("tier", ""),
        )
        await self._store.put_key(key)
        return JSONResponse({**key.public(), "key": shown}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        """
        summary: An application's keys (never the keys themselves)
        responses: {200: {description: '{"keys": [...]}'}}
        """
        app = self._application(request, self._who(request))
        keys = [key.public() for key in self._catalog.keys.values() if key.application_id == app.id]
        return JSONResponse({"keys": keys})

    async def revoke_key(self, request: Request) -> Response:
        """
        summary: Revoke a key, at once on every instance
        responses: {200: {description: The key, with revoked_at}, 404: {description: No such key}}
        """
        app = self._application(request, self._who(request))
        key = self._catalog.keys.get(request.path_params["key_id"])
        if key is None or key.application_id != app.id:
            raise NotFound("No key with that id in this application.")
        if key.revoked_at is None:
            key = self._catalog.revoked(key)
            await self._store.put_key(key)
        return JSONResponse(key.public())

    # -- lines ---------------------------------------------------------------------------

    async def create_line(self, request: Request) -> Response:
        """
        summary: Create a line (super admin, or an admin key of the application named)
        description: The body takes the keys of a [lines.NAME] table of GUEST_CONFIG, plus name.
        responses: {201: {description: The line}, 409: {description: A line of that name exists}}
        """
        principal = self._who(request)
        body = await _body(request)
        name = body.pop("name", None)
        if not principal.manages(body.get("application_id")):
            raise Forbidden("Create lines of your own application only (set application_id).")
        if (self.lineup is not None and name in self.lineup) or (isinstance(name, str) and name in self._catalog.lines):
            raise Conflict(f"A line named {name!r} exists. Change it with PUT /api/v1/admin/lines/{name}.")
        spec = self._parsed(name, body)
        self._check_quotas(spec, principal)
        self._check_models(spec)
        await self._store.put_line(spec.name, spec.stored())
        await self.sync()
        return JSONResponse(spec.as_dict(), status_code=201)

    async def list_lines(self, request: Request) -> Response:
        """
        summary: The lines this key has any permission on
        responses: {200: {description: '{"lines": [...]}'}}
        """
        principal = self._who(request)
        lineup = self.lineup
        specs = [queue.spec for queue in lineup] if lineup is not None else []
        return JSONResponse(
            {"lines": [spec.as_dict() for spec in specs if principal.granted(spec.name, spec.application_id)]}
        )

    async def get_line(self, request: Request) -> Response:
        """
        summary: One line (READ)
        responses: {200: {description: The line}}
        """
        spec = self._spec(request)
        self.access.require(request, self._catalog, "READ", spec.name, spec.application_id)
        return JSONResponse(spec.as_dict())

    async def update_line(self, request: Request) -> Response:
        """
        summary: 'Change a line (MANAGE), e.g. {"mode": "paused"}; at once, on every instance'
        description: Keys left out keep their values; a key set to null goes back to the default.
        responses: {200: {description: The line}}
        """
        spec = self._spec(request)
        principal = self.access.require(request, self._catalog, "MANAGE", spec.name, spec.application_id)
        body = await _body(request)
        if body.get("application_id", spec.application_id) != spec.application_id and not (
            principal.manages(spec.application_id) and principal.manages(body["application_id"])
        ):
            raise Forbidden("Moving a line to another application needs the admin of both.")
        kept = self._catalog.lines.get(spec.name) or spec.stored()
        # What GET showed, sent back (masked): unchanged.
        if body.get("upstream_url") == mask_url(str(kept.get("upstream_url", ""))):
            del body["upstream_url"]
        for secret in SECRET_KEYS:
            if body.get(secret) == "***":
                del body[secret]
        if (
            "upstream_url" in body
            and body["upstream_url"] != kept.get("upstream_url")
            and "upstream_api_key" not in body
        ):
            kept = {key: value for key, value in kept.items() if key != "upstream_api_key"}  # never to another host
        merged = {**kept, **body}
        merged = {key: value for key, value in merged.items() if value is not None}
        merged.pop("name", None)
        new = self._parsed(spec.name, merged)
        self._check_quotas(new, principal, old=spec)
        self._check_models(new)
        await self._store.put_line(new.name, new.stored())
        await self.sync()
        return JSONResponse(new.as_dict())

    async def purge_line(self, request: Request) -> Response:
        """
        summary: Clear a line (MANAGE)
        description: Every guest waiting now, on every instance, ends with `error` code `purged`; running calls finish.
        responses: {200: {description: '{"name": ..., "purged_at": ...}'}}
        """
        spec = self._spec(request)
        self.access.require(request, self._catalog, "MANAGE", spec.name, spec.application_id)
        new = replace(spec, purged_at=time.time())
        await self._store.put_line(new.name, new.stored())
        await self.sync()
        return JSONResponse({"name": new.name, "purged_at": new.purged_at})

    async def delete_line(self, request: Request) -> Response:
        """
        summary: Delete a line made through this API (its application's admin)
        description: Its waiting guests hear `error` shutdown. Lines declared in GUEST_CONFIG cannot be deleted here.
        responses: {200: {description: Deleted}, 409: {description: Declared in GUEST_CONFIG}}
        """
        spec = self._spec(request)
        principal = self._who(request)
        if not principal.manages(spec.application_id):
            raise Forbidden("Only the line's application admin (or the super admin) deletes it.")
        if spec.name in self.file_specs:
            raise Conflict(f"Line {spec.name!r} is declared in {self.settings.config}: remove it there.")
        await self._store.put_line(spec.name, None)
        await self.sync()
        return JSONResponse({"name": spec.name, "deleted": True})

    async def callback_errors(self, request: Request) -> Response:
        """
        summary: Webhook deliveries given up after every retry, newest last (super admin)
        responses: {200: {description: '{"errors": [{delivery_id, line, event, url, attempts, last_error,
          failed_at}], "results": {delivered, retried, failed}}'}}
        """
        if not self._who(request).is_super:
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
        return JSONResponse(self._who(request).describe())

    async def permissions(self, request: Request) -> Response:
        """
        summary: The caller's permissions on one line
        responses: {200: {description: '{"line": ..., "permissions": ["READ", ...]}'}}
        """
        spec = self._spec(request, anonymous=True)
        principal = self.access.principal(request, self._catalog)
        return JSONResponse({"line": spec.name, "permissions": principal.granted(spec.name, spec.application_id)})

    def _parsed(self, name: Any, body: dict[str, Any]) -> LineSpec:
        """A line from the admin API: a tenant's table, whatever the caller (linespec.parse_line)."""
        operator = self.file_specs.get(name) if isinstance(name, str) else None
        try:
            return parse_line(name, body, self.settings, where="line", tenant=True, operator=operator)
        except SettingsError as exc:
            raise InvalidField(str(exc)) from None


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


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_ADMIN_BODY_BYTES:
        raise InvalidField(f"The body is larger than {MAX_ADMIN_BODY_BYTES} bytes.")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if raw.strip() and media_type != "application/json" and not media_type.endswith("+json"):
        # A form or text/plain body is what any web page can send across sites without asking.
        raise UnsupportedMediaType("Send the body as JSON with Content-Type: application/json.")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise InvalidJSON("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidJSON("The body must be a JSON object.")
    return body
