"""One line shared by several instances through Redis (``GUEST_REDIS_URL``).

- ``line.py``: the line (admission, leaving, views); ``starts.py``: its one atomic
  start and its limits; ``pacer.py``: Retry-After holds and retry turns;
- ``instances.py``: this instance's lease and the dead instances' calls; ``wake.py``:
  waking the workers; ``rebuild.py``: giving back a line Redis forgot;
  ``records.py``: a flight's request, so any instance can run it;
- ``relay.py`` and ``follow.py``: a flight's events, sent by the instance running it
  and applied by the instances holding its guests (``running.py``: the calls it runs);
- ``places.py``: each request's record, so any instance can take a guest over;
- ``tally.py``, ``answers.py``: every instance's totals and recent requests, the
  shared answer cache;
- ``keys.py``: every key name under the line's prefix (the scripts' too);
- ``boundary.py``: the one place that knows what redis-py raises.

The Lua the scripts run is in ``guestqueue/scripts``.
"""
