"""What the service says about itself: health, status, history, one request's state.

Read-only views for the web layer and monitors, over one instance's service or,
with a shared line, over every instance (the line's view, the shared totals and
request records).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import LineUnavailable
from .service import QueueService
from .tickets import Status
from .waitingroom.sessions import Sessions


class QueueViews:
    def __init__(self, service: QueueService, sessions: Sessions | None = None) -> None:
        self._service = service
        self._sessions = sessions  # an admission line's: its sessions in /queue/status

    @property
    def accepting(self) -> bool:
        return self._service.accepting

    async def status_changed(self) -> None:
        await self._service.status_changed()

    def snapshot(self) -> dict[str, Any]:
        """``/queue/status`` as of the line's freshest view (for monitors, several times a second)."""
        service = self._service
        view = service.line.peek()
        out = {
            "queue_size": view.size,
            "active_requests": view.active,
            "max_concurrent": service.settings.max_concurrent_requests,
            "max_queue_size": service.settings.max_queue_size,
            # Waiting guests beside free slots are waiting for this: the pacing, or an upstream's pause.
            "next_start_sec": round(max(view.next_start_s, view.held_s), 1),
            **service.stats.as_dict(),
        }
        if view.instances:
            out["instances"] = list(view.instances)
        if self._sessions is not None:
            out["sessions"] = self._sessions.counts()
        if service.spec.fairness == "fair":
            # /queue/status may be public: how evenly, never who (the metrics name the shares).
            fair = service.line.shares.snapshot()
            out["fairness"] = {**fair, "service": sorted(fair["service"].values(), reverse=True)}
        return out

    async def health(self) -> tuple[str, dict[str, Any]]:
        """``ok``, ``degraded`` (upstream failing or holding us off, log behind) or ``unavailable``
        (shutting down, or the shared line unreachable)."""
        service = self._service
        problems = [problem for check in service.health_checks for problem in check()]
        try:
            view = await service.positions.refresh()
        except LineUnavailable as exc:
            problems.append(str(exc))
            view, reachable = service.positions.view, False
        else:
            reachable = True
        if view.held_s > 0:
            problems.append(f"upstream asked us to wait: no new calls for {math.ceil(view.held_s)} s")
        status = "unavailable" if not (service.accepting and reachable) else "degraded" if problems else "ok"
        return status, {
            "status": status,
            "problems": problems,
            "upstream": service.upstream_kind,
            "queue_size": view.size,
            "active_requests": view.active,
        }

    async def status(self) -> dict[str, Any]:
        """The body of ``/queue/status``, from a fresh view of the line (and, shared, every
        instance's totals)."""
        service = self._service
        await service.positions.refresh()
        out = self.snapshot()
        if service.tally is not None:
            out.update((await service.tally.stats(service.stats)).as_dict())
        return out

    async def history(self) -> list[dict[str, Any]]:
        """The body of ``/queue/history``: the latest requests, newest first, of every instance."""
        service = self._service
        return await service.tally.recent() if service.tally is not None else service.registry.recent()

    async def lookup(self, request_id: str) -> dict[str, Any] | None:
        """The body of ``/queue/request/{id}``, for a request held here or by another instance."""
        service = self._service
        ticket = service.registry.get(request_id)
        if ticket is not None:
            flight = ticket.flight
            if flight is not None and ticket.status is Status.QUEUED:
                view = await service.positions.refresh()  # exact now, not as last reported
                flight.position = view.position(flight.id) or flight.position
            return ticket.summary()
        record = await service.places.load(request_id)
        if record is None:
            return None
        out: dict[str, Any] = record.summary()
        if record.status is Status.QUEUED:
            out["queue_position"] = (await service.positions.refresh()).position(record.flight_id)
        return out
