"""What every handler of the admin API shares: the catalog store, the running lines and the outbox
(set while the app runs), who is asking, which line a caller may see, and the request body read as
JSON. The handlers are in api.py (the routes, who am I, callback errors), applications.py
(applications and their keys) and lines.py (lines).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from ...config import Settings
from ...errors import InvalidField, InvalidJSON, NotFound, ShuttingDown, Unauthorized, UnsupportedMediaType
from ...linespec import LINE_NAME, LineSpec
from ...lineup import Lineup
from ...tenancy.catalog import Catalog, Principal
from ...tenancy.store import CatalogStore
from ...webhooks import Outbox
from ..access import Access

MAX_ADMIN_BODY_BYTES = 65_536


class AdminContext:
    """The admin API's collaborators; ``store``, ``lineup`` and ``outbox`` are set while the app runs."""

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

    @property
    def running_store(self) -> CatalogStore:
        if self.store is None:
            raise ShuttingDown("guestqueue is not running (was its lifespan started?).")
        return self.store

    @property
    def catalog(self) -> Catalog:
        return self.running_store.catalog

    def who(self, request: Request) -> Principal:
        principal = self.access.principal(request, self.catalog)
        if principal.role == "anonymous":
            raise Unauthorized("The admin API needs an API key (X-API-Key or Authorization: Bearer).")
        return principal

    def line_spec(self, request: Request, *, anonymous: bool = False) -> LineSpec:
        """The line named in the path, if the caller may see it (a public line, or one it has a
        permission on): otherwise exactly the answer for a missing one, so private lines cannot be
        probed. The admin API needs a key (401 first), save ``anonymous`` routes."""
        name = request.path_params["line"]
        principal = self.access.principal(request, self.catalog) if anonymous else self.who(request)
        lineup = self.lineup
        queue = lineup.queues.get(name) if lineup is not None else None
        spec = queue.spec if queue is not None else self._broken(name)
        if spec is None or not (spec.public or principal.granted(spec.name, spec.application_id)):
            raise NotFound(f"There is no line named {name!r}.")
        return spec

    def _broken(self, name: str) -> LineSpec | None:
        """A kept line that does not run (it no longer opens): still the admin API's to fix or delete."""
        stored = self.catalog.lines.get(name)
        if stored is None or not LINE_NAME.fullmatch(name):
            return None
        application_id = stored.get("application_id")
        return LineSpec(
            name=name,
            settings=self.settings,
            public=False,
            application_id=application_id if isinstance(application_id, str) else None,
        )


async def read_body(request: Request) -> dict[str, Any]:
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
