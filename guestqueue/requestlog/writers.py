"""The processes that write one log file: each beats a heartbeat into ``instances``, and the open
rows of one that stopped beating (or, on the same host, whose process is gone) are closed as
``abandoned``. A live neighbour's rows are never touched. This is the log's own liveness, on the
file: it holds for processes that share the file without Redis too (design.md, "Request log")."""

from __future__ import annotations

import os
import socket
import time

import aiosqlite

from .schema import ABANDON, FORGET_DEAD, HEARTBEAT, LEAVE, NEIGHBOURS

HEARTBEATS_PER_TTL = 3  # an instance that missed three heartbeats in a row is dead


async def abandon_dead(db: aiosqlite.Connection, instance_id: str, started_at: float, ttl_s: float) -> int:
    """Beat our own heart, then close the open rows of instances that stopped beating; how many."""
    now, host = time.time(), socket.gethostname()
    await db.execute(HEARTBEAT, (instance_id, host, os.getpid(), started_at, now))
    # A neighbour on this host whose process is gone is dead now, not in a TTL: a restart
    # after a crash closes the crashed run's rows at once.
    for neighbour, pid in await db.execute_fetchall(NEIGHBOURS, (host, instance_id)):
        if not _process_exists(pid):
            await db.execute(LEAVE, (neighbour,))
    alive_since = {"now": now, "alive_since": now - ttl_s}
    cursor = await db.execute(ABANDON, alive_since)
    await db.execute(FORGET_DEAD, alive_since)
    return cursor.rowcount


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
