"""``guestqueue simulate``: a line's real admission, pacing and wait estimates against a simulated
upstream, on a virtual clock, to choose its limits before going live::

    guestqueue simulate --line guest --guests 500 --arrival-rate 5/s --duration-dist lognormal:2,0.5

What is real: the in-memory line, the service (admission and its refusals, the
wait limit), the worker pool, the pacing limiter and the wait estimator, built
by :func:`~guestqueue.runtime.open_queue` from the line's settings as
``guestqueue serve`` reads them. What is simulated: the guests (Poisson
arrivals, each asking its own question and staying connected until its end),
and the upstream, whose call sleeps for a drawn duration and answers one
chunk (as many characters as 200 a second of the call: its service on a fair
line, with ``--shares``). No Redis, no HTTP, no request log.

The event loop is looptime's: when nothing is ready to run, its clock jumps to
the next timer instead of sleeping, so an hour of line runs in seconds. Every
duration guestqueue measures is read from the loop's clock (clock.py).
"""

from .command import add_arguments, main
from .run import Result, SimulatedUpstream, simulate, what_if
from .scenario import Durations, Guest, Scenario, ShareMix, SimulationError, parse_rate

__all__ = [
    "Durations",
    "Guest",
    "Result",
    "Scenario",
    "ShareMix",
    "SimulatedUpstream",
    "SimulationError",
    "add_arguments",
    "main",
    "parse_rate",
    "simulate",
    "what_if",
]
