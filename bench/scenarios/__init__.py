"""One module per scenario of issue 5; each has ``add_arguments(parser)`` and ``run(args) -> Result``."""

from __future__ import annotations

from types import ModuleType

from . import beyond, compare, dispatch, eta, fairness, logwriter, memory, overhead, scaleout, tenants, waiting

SCENARIOS: dict[str, ModuleType] = {
    "overhead": overhead,
    "waiting": waiting,
    "eta": eta,
    "dispatch": dispatch,
    "logwriter": logwriter,
    "memory": memory,
    "scaleout": scaleout,
    "tenants": tenants,
    "beyond": beyond,
    "compare": compare,
    "fairness": fairness,
}
