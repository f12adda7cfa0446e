"""The admin API (/api/v1/admin): applications and their keys, lines made at run time, and what a
caller may see of them. context.py holds the shared state and checks; applications.py and lines.py
the handlers; api.py the routes and the OpenAPI schema."""

from .api import AdminApi

__all__ = ["AdminApi"]
