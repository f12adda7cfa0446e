"""The SQLite request log: one row per request, written in batches, never waited on.

- ``log.py``: :class:`RequestLog`, opened and closed with the process, a listener of every line;
- ``buffer.py``: the rows waiting in memory (bounded; refusals sampled per client);
- ``batches.py``: the one writer task (batches, heartbeat, retention);
- ``rows.py``: what each row holds; ``writers.py``: the liveness of the processes sharing a file;
- ``schema.py``: the file's tables and numbered migrations (the catalog's and the outbox's too).
"""

from .log import LineRows, RequestLog
from .schema import LogUnavailable, check, migrate

__all__ = ["LineRows", "LogUnavailable", "RequestLog", "check", "migrate"]
