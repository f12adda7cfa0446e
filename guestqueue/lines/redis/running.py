"""The flights this instance runs for a shared line: the runner's own copies (lines/redis/line.py
builds them and keeps this), from their grant to their ending.

The relay (relay.py) keeps them, to write their story again when Redis forgets the line; the
follower (follow.py) stops one when a guest who left its last seat sends a cancel.
"""

from __future__ import annotations

from ...tickets import Flight


class RunningFlights:
    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __repr__(self) -> str:
        return f"RunningFlights({len(self._flights)})"

    def add(self, flight: Flight) -> None:
        self._flights[flight.id] = flight

    def drop(self, flight_id: str) -> None:
        self._flights.pop(flight_id, None)

    def all(self) -> list[Flight]:
        return list(self._flights.values())

    def stop(self, flight_id: str) -> None:
        """Cancel the call of a flight nobody waits for any more (its last guest left elsewhere)."""
        flight = self._flights.get(flight_id)
        if flight is not None and flight.job is not None and not flight.job.done():
            flight.finished = True  # nobody is left to tell
            flight.job.cancel()
