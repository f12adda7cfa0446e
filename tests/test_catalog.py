"""tenancy/catalog.py at unit level: keys shown once and kept hashed, who may do what, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from guestqueue.errors import InvalidField
from guestqueue.tenancy.catalog import ANONYMOUS, PERMISSIONS, SUPER_ADMIN, Catalog


def _catalog_with(role: str = "member", grant: dict[str, list[str]] | None = None) -> tuple[Catalog, str, str]:
    """A catalog with one application and one key; the key as shown once, and the application's id."""
    catalog = Catalog()
    app = catalog.new_application("Shop", tier="paid")
    key, shown = catalog.new_key(app, name="ci", role=role, permissions=grant or {})
    catalog.load([app], [key], {})
    return catalog, shown, app.id


def test_a_key_is_shown_once_and_kept_only_as_a_hash() -> None:
    catalog, shown, app_id = _catalog_with(grant={"shop": ["READ"]})
    [key] = catalog.keys.values()
    assert shown.startswith(f"gq_{key.id}_")
    secret = shown.rsplit("_", 1)[1]
    assert secret not in repr(key) and secret not in str(key.public())
    principal = catalog.principal(shown)
    assert principal is not None and principal.role == "member" and principal.application is not None
    assert principal.application.id == app_id and principal.tier == "paid"


@pytest.mark.parametrize("given", ["", "gq_", "gq_nope_nope", "not-a-key", "gq_{id}_wrong-secret"])
def test_a_wrong_or_unknown_key_has_no_principal(given: str) -> None:
    catalog, _, _ = _catalog_with()
    [key] = catalog.keys.values()
    assert catalog.principal(given.format(id=key.id)) is None


def test_a_revoked_key_and_a_deleted_application_stop_at_once() -> None:
    catalog, shown, _ = _catalog_with()
    [key] = catalog.keys.values()
    catalog.keys[key.id] = catalog.revoked(key)
    assert catalog.principal(shown) is None
    catalog, shown, app_id = _catalog_with()
    catalog.applications[app_id] = replace(catalog.applications[app_id], deleted_at=1.0)
    assert catalog.principal(shown) is None
    assert catalog.live_applications() == []


def test_a_member_may_what_it_was_granted_on_its_own_applications_lines_only() -> None:
    catalog, shown, app_id = _catalog_with(grant={"shop": ["READ", "WORK"], "*": ["WRITE"]})
    member = catalog.principal(shown)
    assert member is not None
    assert member.granted("shop", app_id) == ["READ", "WRITE", "WORK"]
    assert member.granted("other", app_id) == ["WRITE"]  # "*": every line of its application
    assert not member.may("READ", "shop", "app_someone_else"), "another tenant's line"
    assert not member.may("READ", "guest", None), "the deployment's own lines"
    assert not member.manages(app_id)


def test_an_admin_key_manages_its_application_and_the_super_admin_everything() -> None:
    catalog, shown, app_id = _catalog_with(role="admin")
    admin = catalog.principal(shown)
    assert admin is not None and admin.manages(app_id) and not admin.manages("app_other")
    assert admin.granted("any", app_id) == list(PERMISSIONS) and admin.granted("any", "app_other") == []
    assert SUPER_ADMIN.manages("app_other") and SUPER_ADMIN.may("MANAGE", "guest", None)
    assert ANONYMOUS.granted("guest", None) == [] and ANONYMOUS.tier is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, a: c.new_application(""), "name must be a non-empty string"),
        (lambda c, a: c.new_application("x" * 101), "at most 100 characters"),
        (lambda c, a: c.new_application(["Shop"]), "name must be"),
        (lambda c, a: c.new_application("Shop", tier=7), "tier must be"),
        (lambda c, a: c.new_key(a, role="owner"), "role must be one of admin, member"),
        (lambda c, a: c.new_key(a, permissions={"shop": ["FLY"]}), r"permissions\['shop'\]: a list of READ"),
        (lambda c, a: c.new_key(a, permissions=["READ"]), "permissions must be an object"),
    ],
)
def test_bad_names_roles_tiers_and_permissions_are_refused(call: object, message: str) -> None:
    catalog = Catalog()
    app = catalog.new_application("Shop")
    with pytest.raises(InvalidField, match=message):
        call(catalog, app)  # type: ignore[operator]
