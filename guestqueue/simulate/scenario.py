"""A simulation's guests: how many, how often they arrive (Poisson), how long their calls take."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..tickets import Ticket

NAME_CHARS = 32  # of a share's name
RATE_UNITS = {"s": 1.0, "sec": 1.0, "min": 1 / 60, "m": 1 / 60}


class SimulationError(ValueError):
    """A scenario we cannot run; the message names the flag and the value."""


@dataclass(frozen=True)
class Durations:
    """How long one upstream call takes: ``lognormal:MU,SIGMA`` (seconds = exp(N(MU, SIGMA))),
    ``fixed:S`` or ``exponential:MEAN``."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> Durations:
        kind, _, rest = text.partition(":")
        arity = {"lognormal": 2, "fixed": 1, "exponential": 1}.get(kind)
        try:
            params = tuple(float(p) for p in rest.split(",")) if rest else ()
        except ValueError:
            params = ()
        if arity is None or len(params) != arity or not all(math.isfinite(p) for p in params):
            raise SimulationError(
                f"--duration-dist={text!r}: use lognormal:MU,SIGMA, fixed:SECONDS or exponential:MEAN"
            )
        if (
            (kind == "lognormal" and params[1] < 0)
            or (kind == "fixed" and params[0] < 0)
            or (kind == "exponential" and params[0] <= 0)
        ):
            raise SimulationError(f"--duration-dist={text!r}: a spread or duration must not be negative (a mean > 0)")
        return cls(kind, params)

    def draw(self, rng: random.Random) -> float:
        if self.kind == "lognormal":
            return rng.lognormvariate(*self.params)
        if self.kind == "exponential":
            return rng.expovariate(1 / self.params[0])
        return self.params[0]

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(f'{p:g}' for p in self.params)}"


def parse_rate(text: str) -> float:
    """Guests per second from ``R/s`` or ``R/min``."""
    number, _, unit = text.partition("/")
    try:
        rate = float(number) * RATE_UNITS[unit.strip()]
    except (ValueError, KeyError):
        raise SimulationError(f"--arrival-rate={text!r}: use R/s or R/min, e.g. 5/s or 30/min") from None
    if not 0 < rate < math.inf:
        raise SimulationError(f"--arrival-rate={text!r}: must be a finite number above 0")
    return rate


@dataclass(frozen=True)
class ShareMix:
    """Named shares and their weights: a guest is of share k with probability weight_k / total."""

    weights: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, text: str) -> ShareMix:
        weights = []
        for part in text.split(","):
            name, _, weight = part.strip().partition("=")
            try:
                value = float(weight)
            except ValueError:
                value = math.nan
            if not name or len(name) > NAME_CHARS or not 0 < value < math.inf:
                raise SimulationError(f"--shares={text!r}: use NAME=WEIGHT,..., e.g. heavy=10,light=1")
            weights.append((name, value))
        if len({name for name, _ in weights}) != len(weights):
            raise SimulationError(f"--shares={text!r}: a share is named twice")
        return cls(tuple(weights))

    def draw(self, rng: random.Random) -> str:
        names, weights = zip(*self.weights, strict=True)
        return str(rng.choices(names, weights)[0])

    def __str__(self) -> str:
        return ",".join(f"{name}={weight:g}" for name, weight in self.weights)


@dataclass(frozen=True)
class Scenario:
    guests: int
    arrivals_per_s: float
    durations: Durations
    seed: int = 1
    shares: ShareMix | None = None  # named shares guests are drawn from (a fair line's)


@dataclass(slots=True)
class Guest:
    arrival_s: float
    call_s: float  # how long its upstream call takes
    eta_s: float | None = None  # the estimated_wait_sec of its first `queued` event
    eta_range_s: tuple[float, float] | None = None  # ... and its estimated_wait_range_sec
    refused: str | None = None  # the code of the 429/503 it got instead
    ticket: Ticket | None = None
    wait_s: float | None = None  # from joining to its call's start, as the service measured it
    share: str | None = None  # the share it asks in (--shares)
    outcome: str = ""  # `completed`, or the code it ended with (`wait_timeout`, `timeout`, ...)


def quantile(ordered: list[float], q: float) -> float | None:
    """Linear between the closest ranks (numpy's default), to a tenth; None without data."""
    if not ordered:
        return None
    at = (len(ordered) - 1) * q
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (at - low), 1)
