"""Applications, their API keys and permissions, and the lines created at run time (seeds 001, 002).

An application owns lines and keys. A key is shown once, when it is made
(``gq_<id>_<secret>``); only the SHA-256 of its secret is kept, and a key is
checked by its public id, then by comparing hashes in constant time (a wrong
key, known id or not, costs one hash and one comparison, like a right one).

Permissions, per key and per line (seed 002's set)::

    READ     status, history, request lookups and metrics of the line
    WRITE    ask (chat) on a line that is not public
    DELETE   cancel others' requests
    MANAGE   change the line (mode, settings), purge it
    WORK     take a pull line's jobs and answer them (a pull worker's key)

``"*"`` grants them on every line of the key's application. Roles (seed 001):
the super admin (``GUEST_ADMIN_API_KEY``) may do everything; an application
admin key everything within its application; a member key what it is granted.

The catalog is held in memory and kept by a :class:`~guestqueue.tenancy.store.CatalogStore`:
SQLite (the request log's file) and, with ``GUEST_REDIS_URL``, Redis, from which
every instance reloads it within a second of a change.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import InvalidField

PERMISSIONS = ("READ", "WRITE", "DELETE", "MANAGE", "WORK")
QUOTA_KEYS = ("max_lines", "max_keys", "max_webhooks_per_line")
MAX_QUOTA = 10_000
ROLES = ("admin", "member")
ALL_LINES = "*"
KEY_PREFIX = "gq_"
MAX_NAME_CHARS = 100
# A well-formed hash that no secret has: unknown key ids are compared against it (same cost).
_NO_SUCH_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True, slots=True)
class Application:
    id: str
    name: str
    tier: str = ""  # the tier of its keys that name none
    created_at: float = field(default_factory=time.time)
    deleted_at: float | None = None
    # Quotas (QUOTA_KEYS), the super admin's to set: what one tenant may hold.
    max_lines: int = 20
    max_keys: int = 50
    max_webhooks_per_line: int = 5

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    application_id: str
    secret_hash: str  # sha256 hex of the secret part; the key itself is never kept
    name: str = ""
    role: str = "member"
    permissions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # line or "*" -> permissions
    tier: str = ""
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None

    def public(self) -> dict[str, Any]:
        """As the API shows it: never the hash."""
        out = asdict(self)
        del out["secret_hash"]
        out["permissions"] = {line: list(granted) for line, granted in self.permissions.items()}
        out["hint"] = f"{KEY_PREFIX}{self.id}_…"
        return out


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the super admin, a key of an application, or nobody (no key)."""

    role: str  # super_admin | admin | member | anonymous
    key: ApiKey | None = None
    application: Application | None = None

    @property
    def is_super(self) -> bool:
        return self.role == "super_admin"

    @property
    def tier(self) -> str | None:
        if self.key is None:
            return None
        return self.key.tier or (self.application.tier if self.application else "") or None

    def may(self, permission: str, line: str, owner: str | None) -> bool:
        """May do ``permission`` on ``line``, owned by application ``owner`` (None: the deployment's)."""
        if self.is_super:
            return True
        if self.key is None or owner is None or owner != self.key.application_id:
            return False
        if self.role == "admin":
            return True
        granted = (*self.key.permissions.get(line, ()), *self.key.permissions.get(ALL_LINES, ()))
        return permission in granted

    def granted(self, line: str, owner: str | None) -> list[str]:
        return [permission for permission in PERMISSIONS if self.may(permission, line, owner)]

    def manages(self, application_id: str | None) -> bool:
        """May change this application (its keys, its lines)."""
        return self.is_super or (
            self.role == "admin" and self.key is not None and application_id == self.key.application_id
        )

    def describe(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "key": self.key.public() if self.key else None,
            "application": self.application.public() if self.application else None,
            "tier": self.tier,
        }


ANONYMOUS = Principal("anonymous")
SUPER_ADMIN = Principal("super_admin")


class Catalog:
    """The applications, keys and run-time lines, in memory (the store keeps and shares them)."""

    def __init__(self) -> None:
        self.applications: dict[str, Application] = {}
        self.keys: dict[str, ApiKey] = {}
        self.lines: dict[str, dict[str, Any]] = {}  # name -> the line's stored keys (linespec.LineSpec.stored)

    def __repr__(self) -> str:
        return f"Catalog(applications={len(self.applications)}, keys={len(self.keys)}, lines={len(self.lines)})"

    def load(
        self, applications: Iterable[Application], keys: Iterable[ApiKey], lines: Mapping[str, dict[str, Any]]
    ) -> None:
        self.applications = {app.id: app for app in applications}
        self.keys = {key.id: key for key in keys}
        self.lines = dict(lines)

    # -- who is asking ---------------------------------------------------------------

    def principal(self, given: str) -> Principal | None:
        """The principal of an application key, or None (unknown, revoked, deleted application).
        Constant time in the secret: the hash is always computed and always compared."""
        key_id, secret = _split(given)
        key = self.keys.get(key_id)
        expected = key.secret_hash if key is not None else _NO_SUCH_HASH
        matches = hmac.compare_digest(_hash(secret), expected)
        if key is None or not matches or key.revoked_at is not None:
            return None
        application = self.applications.get(key.application_id)
        if application is None or application.deleted_at is not None:
            return None
        return Principal(key.role, key, application)

    # -- changes (the caller stores them) --------------------------------------------

    def new_application(self, name: Any, tier: Any = "") -> Application:
        return Application(id=f"app_{secrets.token_hex(6)}", name=_name(name), tier=_tier(tier))

    def new_key(
        self,
        application: Application,
        *,
        name: str = "",
        role: str = "member",
        permissions: Mapping[str, Iterable[str]] | None = None,
        tier: str = "",
    ) -> tuple[ApiKey, str]:
        """A new key and its one showing: ``gq_<id>_<secret>``."""
        if role not in ROLES:
            raise InvalidField(f"role must be one of {', '.join(ROLES)}")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        key = ApiKey(
            id=key_id,
            application_id=application.id,
            secret_hash=_hash(secret),
            name=_name(name, required=False),
            role=role,
            permissions=_permissions(permissions or {}),
            tier=_tier(tier),
        )
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    def revoked(self, key: ApiKey) -> ApiKey:
        return replace(key, revoked_at=time.time())

    def live_applications(self) -> list[Application]:
        return [app for app in self.applications.values() if app.deleted_at is None]


def _split(given: str) -> tuple[str, str]:
    body = given.removeprefix(KEY_PREFIX)
    key_id, _, secret = body.partition("_")
    return key_id, secret


def _hash(secret: str) -> str:
    # The secret is 256 random bits: a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _name(value: Any, *, required: bool = True) -> str:
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > MAX_NAME_CHARS:
        raise InvalidField(
            f"name must be a {'non-empty ' if required else ''}string of at most {MAX_NAME_CHARS} characters"
        )
    return value.strip()


def _tier(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 32:
        raise InvalidField("tier must be a tier name (a string of at most 32 characters)")
    return value


def _permissions(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise InvalidField('permissions must be an object like {"line-name": ["READ", "WRITE"], "*": ["READ"]}')
    out: dict[str, tuple[str, ...]] = {}
    for line, granted in value.items():
        if (
            not isinstance(line, str)
            or not isinstance(granted, list | tuple)
            or any(p not in PERMISSIONS for p in granted)
        ):
            raise InvalidField(f"permissions[{line!r}]: a list of {', '.join(PERMISSIONS)}")
        out[line] = tuple(dict.fromkeys(granted))
    return out
