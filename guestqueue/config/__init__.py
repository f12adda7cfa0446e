"""Settings: everything guestqueue can be told, from ``GUEST_*`` variables, ``serve`` flags or code.

settings.py is the one :class:`Settings` (and its checks); line.py and process.py declare its
fields (a line's own, the process's); values.py says how a setting is declared and read.
"""

from .settings import ENV_NAMES, OTHER_VARIABLES, Settings, unknown_variables
from .values import (
    AT_LEAST_ONE,
    OPENAI_RESERVED_PARAMETERS,
    SettingsError,
    cidrs_problem,
    parse_value,
    redis_url_problem,
    shown_redis_url,
)

__all__ = [
    "AT_LEAST_ONE",
    "ENV_NAMES",
    "OPENAI_RESERVED_PARAMETERS",
    "OTHER_VARIABLES",
    "Settings",
    "SettingsError",
    "cidrs_problem",
    "parse_value",
    "redis_url_problem",
    "shown_redis_url",
    "unknown_variables",
]
