"""The SQLite request log: the schema and its migrations (schema.py), and the batching log (log.py)."""

from .log import LineRows, RequestLog
from .schema import LogUnavailable, check, migrate

__all__ = ["LineRows", "LogUnavailable", "RequestLog", "check", "migrate"]
