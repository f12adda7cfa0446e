"""The admin API's lines: create, list, read, change, purge and delete the lines made at run time,
with what a tenant may not do checked here (its application's quotas, the names anonymous callers
reach, an OpenAI model name another line has). Each change is stored, then applied to the running
lines (``sync``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...config import SettingsError
from ...errors import Conflict, Forbidden, InvalidField, QuotaExceeded
from ...linespec import DEFAULT_LINE, SECRET_KEYS, LineSpec, check_models, parse_line
from ...outbound import mask_url
from ...tenancy.catalog import Principal
from .context import AdminContext, read_body


class LinesAdmin:
    """The handlers under ``/lines``."""

    def __init__(self, admin: AdminContext) -> None:
        self._admin = admin

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/lines", self.create_line, methods=["POST"]),
            Route("/lines", self.list_lines, methods=["GET"]),
            Route("/lines/{line}", self.get_line, methods=["GET"]),
            Route("/lines/{line}", self.update_line, methods=["PUT"]),
            Route("/lines/{line}", self.delete_line, methods=["DELETE"]),
            Route("/lines/{line}/purge", self.purge_line, methods=["POST"]),
        ]

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
        catalog = self._admin.catalog
        app = catalog.applications.get(spec.application_id or "")
        if app is None:
            return
        if len(spec.webhooks) > app.max_webhooks_per_line:
            raise QuotaExceeded(
                f"webhooks: application {app.id!r} may have {app.max_webhooks_per_line} per line "
                "(max_webhooks_per_line; the super admin can raise it)."
            )
        owned = sum(1 for stored in catalog.lines.values() if stored.get("application_id") == app.id)
        if new and owned >= app.max_lines:
            raise QuotaExceeded(
                f"Application {app.id!r} has its {app.max_lines} lines (max_lines; the super admin can raise it)."
            )

    def _check_models(self, spec: LineSpec) -> None:
        """The OpenAI model names stay one line's each (web/openai/): 409 if ``spec`` takes another's."""
        lineup = self._admin.lineup
        others = [queue.spec for queue in lineup if queue.name != spec.name] if lineup is not None else []
        try:
            check_models([*others, spec], where="line")
        except SettingsError as exc:
            raise Conflict(str(exc)) from None

    def _parsed(self, name: Any, body: dict[str, Any]) -> LineSpec:
        """A line from the admin API: a tenant's table, whatever the caller (linespec.parse_line)."""
        admin = self._admin
        operator = admin.file_specs.get(name) if isinstance(name, str) else None
        try:
            return parse_line(name, body, admin.settings, where="line", tenant=True, operator=operator)
        except SettingsError as exc:
            raise InvalidField(str(exc)) from None

    async def create_line(self, request: Request) -> Response:
        """
        summary: Create a line (super admin, or an admin key of the application named)
        description: The body takes the keys of a [lines.NAME] table of GUEST_CONFIG, plus name.
        responses: {201: {description: The line}, 409: {description: A line of that name exists}}
        """
        admin = self._admin
        principal = admin.who(request)
        body = await read_body(request)
        name = body.pop("name", None)
        if not principal.manages(body.get("application_id")):
            raise Forbidden("Create lines of your own application only (set application_id).")
        lineup = admin.lineup
        if (lineup is not None and name in lineup) or (isinstance(name, str) and name in admin.catalog.lines):
            raise Conflict(f"A line named {name!r} exists. Change it with PUT /api/v1/admin/lines/{name}.")
        spec = self._parsed(name, body)
        self._check_quotas(spec, principal)
        self._check_models(spec)
        await admin.running_store.put_line(spec.name, spec.stored())
        await admin.sync()
        return JSONResponse(spec.as_dict(), status_code=201)

    async def list_lines(self, request: Request) -> Response:
        """
        summary: The lines this key has any permission on
        responses: {200: {description: '{"lines": [...]}'}}
        """
        principal = self._admin.who(request)
        lineup = self._admin.lineup
        specs = [queue.spec for queue in lineup] if lineup is not None else []
        return JSONResponse(
            {"lines": [spec.as_dict() for spec in specs if principal.granted(spec.name, spec.application_id)]}
        )

    async def get_line(self, request: Request) -> Response:
        """
        summary: One line (READ)
        responses: {200: {description: The line}}
        """
        admin = self._admin
        spec = admin.line_spec(request)
        admin.access.require(request, admin.catalog, "READ", spec.name, spec.application_id)
        return JSONResponse(spec.as_dict())

    async def update_line(self, request: Request) -> Response:
        """
        summary: 'Change a line (MANAGE), e.g. {"mode": "paused"}; at once, on every instance'
        description: Keys left out keep their values; a key set to null goes back to the default.
        responses: {200: {description: The line}}
        """
        admin = self._admin
        spec = admin.line_spec(request)
        principal = admin.access.require(request, admin.catalog, "MANAGE", spec.name, spec.application_id)
        body = await read_body(request)
        if body.get("application_id", spec.application_id) != spec.application_id and not (
            principal.manages(spec.application_id) and principal.manages(body["application_id"])
        ):
            raise Forbidden("Moving a line to another application needs the admin of both.")
        kept = admin.catalog.lines.get(spec.name) or spec.stored()
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
        await admin.running_store.put_line(new.name, new.stored())
        await admin.sync()
        return JSONResponse(new.as_dict())

    async def purge_line(self, request: Request) -> Response:
        """
        summary: Clear a line (MANAGE)
        description: Every guest waiting now, on every instance, ends with `error` code `purged`; running calls finish.
        responses: {200: {description: '{"name": ..., "purged_at": ...}'}}
        """
        admin = self._admin
        spec = admin.line_spec(request)
        admin.access.require(request, admin.catalog, "MANAGE", spec.name, spec.application_id)
        new = replace(spec, purged_at=time.time())
        await admin.running_store.put_line(new.name, new.stored())
        await admin.sync()
        return JSONResponse({"name": new.name, "purged_at": new.purged_at})

    async def delete_line(self, request: Request) -> Response:
        """
        summary: Delete a line made through this API (its application's admin)
        description: Its waiting guests hear `error` shutdown. Lines declared in GUEST_CONFIG cannot be deleted here.
        responses: {200: {description: Deleted}, 409: {description: Declared in GUEST_CONFIG}}
        """
        admin = self._admin
        spec = admin.line_spec(request)
        principal = admin.who(request)
        if not principal.manages(spec.application_id):
            raise Forbidden("Only the line's application admin (or the super admin) deletes it.")
        if spec.name in admin.file_specs:
            raise Conflict(f"Line {spec.name!r} is declared in {admin.settings.config}: remove it there.")
        await admin.running_store.put_line(spec.name, None)
        await admin.sync()
        return JSONResponse({"name": spec.name, "deleted": True})
