"""The request log's buffer: the rows :meth:`RequestLog.record` and
:meth:`RequestLog.record_rejection` leave for the writer (batches.py), so callers never wait on
SQLite. Recording snapshots the ticket into a tuple (rows.py) and appends it.

Rejected rows are sampled: at most one row per client per ``REJECTION_ROW_EVERY_S``; the next row
of that client carries how many were left out (``"suppressed": n``), and
:attr:`RowBuffer.rejections_unlogged` counts them all (exact totals per reason are in
``/metrics`` anyway).

The buffer holds at most ``max_rows`` rows, so a log that cannot keep up or cannot write never
takes the process down with it. Beyond it a *new* request's row (its admission and, later, its
start and end) or a rejection row is dropped and counted in :attr:`RowBuffer.rows_dropped`; the
start and end of a request whose admission is already buffered are always kept, since dropping
them would leave its row open (and later called ``abandoned``). Those are at most two per live
request, which admission bounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from ..tickets import Status, Ticket
from .rows import admission_row, change_row, rejection_row

logger = logging.getLogger("guestqueue.requestlog")

REJECTION_ROW_EVERY_S = 1.0  # per client
REJECTION_CLIENTS = 10_000  # clients whose last rejection row is remembered (least recent forgotten first)
REJECTION_MEMORY_S = 60.0  # ... and for how long, to carry their suppressed count into their next row

Row = tuple[Any, ...]


@dataclass(slots=True)
class _Sampled:
    row_at: float  # monotonic time of this client's last rejection row
    suppressed: int = 0  # rejections since then that got no row


class RowBuffer:
    def __init__(self, instance_id: str, max_rows: int, wake: asyncio.Event) -> None:
        """``wake``: the writer's, set when rows come in."""
        self._instance_id = instance_id
        self._max_rows = max_rows
        self._wake = wake
        self._inserts: list[Row] = []
        self._updates: list[Row] = []
        self._writing = 0  # rows of the batch being written: still in memory, still count against the buffer
        self._unlogged: set[str] = set()  # live requests whose admission row was dropped
        self._sampled: TTLCache[str, _Sampled] = TTLCache(maxsize=REJECTION_CLIENTS, ttl=REJECTION_MEMORY_S)
        self.rows_dropped = 0
        self.last_drop_at: float | None = None  # monotonic
        self.rejections_unlogged = 0

    @property
    def backlog(self) -> int:
        return len(self._inserts) + len(self._updates) + self._writing

    def dropped_within(self, seconds: float) -> bool:
        return self.last_drop_at is not None and time.monotonic() - self.last_drop_at < seconds

    def record(self, ticket: Ticket, line: str) -> None:
        if ticket.status is Status.QUEUED:
            if self.backlog >= self._max_rows:
                self._unlogged.add(ticket.id)
                self._dropped()
                return
            self._inserts.append(admission_row(ticket, self._instance_id, line))
        elif ticket.id in self._unlogged:
            if ticket.done:
                self._unlogged.discard(ticket.id)
            return
        else:
            self._updates.append(change_row(ticket, self._instance_id))
        self._wake.set()

    def record_rejection(self, client: str, query: str, code: str, line: str) -> None:
        now = time.monotonic()
        sampled = self._sampled.get(client)
        if sampled is not None and now - sampled.row_at < REJECTION_ROW_EVERY_S:
            sampled.suppressed += 1  # in place: assigning would restart the entry's TTL
            self.rejections_unlogged += 1
            return
        if self.backlog >= self._max_rows:
            self._dropped()
            return
        self._sampled[client] = _Sampled(now)
        suppressed = sampled.suppressed if sampled is not None else 0
        self._inserts.append(rejection_row(client, query, code, suppressed, self._instance_id, line))
        self._wake.set()

    # -- the writer's side --------------------------------------------------------------

    def take(self) -> tuple[list[Row], list[Row]]:
        """The next batch (INSERTs, UPDATEs): every row buffered. It counts in the backlog until
        :meth:`written`, or :meth:`put_back`."""
        inserts, updates = self._inserts, self._updates
        self._inserts, self._updates = [], []
        self._writing = len(inserts) + len(updates)
        return inserts, updates

    def written(self) -> None:
        self._writing = 0

    def put_back(self, inserts: list[Row], updates: list[Row]) -> None:
        """A batch not written: first in the next one, in order."""
        self._writing = 0
        self._inserts[:0] = inserts
        self._updates[:0] = updates
        self._wake.set()

    def _dropped(self) -> None:
        if not self.rows_dropped:
            logger.error("request log buffer full (%d rows): dropping new rows", self._max_rows)
        self.rows_dropped += 1
        self.last_drop_at = time.monotonic()
