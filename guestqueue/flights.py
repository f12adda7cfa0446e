"""This instance's flights, each in one place: in line (``waiting``), started and not ended
(``running``), and by cache key while an identical question may still ride it (single-flight)."""

from __future__ import annotations

from . import clock
from .tickets import Flight


class Flights:
    def __init__(self) -> None:
        self.waiting: dict[str, Flight] = {}  # by id; positions.py tells their guests their place
        self.running: dict[str, Flight] = {}
        self._by_key: dict[str, Flight] = {}

    def __repr__(self) -> str:
        return f"Flights(waiting={len(self.waiting)}, running={len(self.running)})"

    @property
    def keyed(self) -> int:
        """How many flights an identical question could still ride (0 once the line is drained)."""
        return len(self._by_key)

    def get(self, flight_id: str) -> Flight | None:
        return self.waiting.get(flight_id) or self.running.get(flight_id)

    def riding(self, key: str | None) -> Flight | None:
        """The live flight an identical question (same cache key) may ride."""
        return self._by_key.get(key) if key is not None else None

    def joined(self, flight: Flight) -> None:
        """The line has ``flight`` now (or it started already, on another instance)."""
        if not flight.started:
            self.waiting[flight.id] = flight
            flight.joined_mono = clock.monotonic()  # positions.py: in line before a view was asked
        if flight.key is not None:
            self._by_key[flight.key] = flight

    def adopted(self, flight: Flight) -> None:
        """A flight of a request taken over from another instance."""
        self.waiting[flight.id] = flight

    def started(self, flight: Flight) -> None:
        self.waiting.pop(flight.id, None)
        self.running[flight.id] = flight
        flight.started_mono = clock.monotonic()

    def finished(self, flight: Flight) -> bool:
        """``flight`` ended, or nobody rides it any more; True if it was still in line."""
        flight.finished = True
        was_waiting = self.waiting.pop(flight.id, None) is not None
        self.running.pop(flight.id, None)
        if flight.key is not None and self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]
        return was_waiting
