"""Named lines: what each line is (its upstream, limits, pacing, mode, tiers, waiting room).

keys.py declares every key a line takes, once; values.py reads the keys that are more than a
number (webhooks, the schedule); spec.py is a line as it runs (:class:`LineSpec`); parse.py reads
a line from the TOML file (``GUEST_CONFIG``) or the admin API's JSON body.
"""

from .keys import POLICY_KEYS, SECRET_KEYS, SETTING_KEYS
from .parse import check_models, key_bounds, load_lines, parse_line
from .spec import DEFAULT_LINE, LINE_NAME, Admission, LineSpec, default_line
from .values import Webhook, Window

__all__ = [
    "DEFAULT_LINE",
    "LINE_NAME",
    "POLICY_KEYS",
    "SECRET_KEYS",
    "SETTING_KEYS",
    "Admission",
    "LineSpec",
    "Webhook",
    "Window",
    "check_models",
    "default_line",
    "key_bounds",
    "load_lines",
    "parse_line",
]
