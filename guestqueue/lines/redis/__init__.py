"""One line shared by several instances through Redis (``GUEST_REDIS_URL``).

- ``line.py``: the line and its pacer (admission, the one atomic start, views,
  heartbeats, dead instances, rebuilding a line Redis forgot);
- ``relay.py``: a flight's events from the instance running it to the instances
  holding its guests (a stream per flight);
- ``places.py``: each request's record, so any instance can take a guest over;
- ``tally.py``, ``answers.py``: every instance's totals and recent requests, the
  shared answer cache;
- ``keys.py``: every key name under the line's prefix;
- ``boundary.py``: the one place that knows what redis-py raises.

The Lua the scripts run is in ``guestqueue/scripts``.
"""
