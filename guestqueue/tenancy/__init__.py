"""Tenants: applications, their API keys and permissions, and the lines made at run time.

- ``catalog.py``: what an application, a key and a principal are, and who may do what;
- ``store.py``: where the catalog is kept (SQLite, and Redis when instances share it).

The HTTP side is ``web/admin/`` (the admin API) and ``web/access.py`` (who is asking).
"""
