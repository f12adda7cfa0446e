"""Webhooks (seed 001's callbacks): a line's events POSTed to its subscribers, signed, retried,
never lost to a restart.

A line lists its subscribers in its spec::

    [[lines.support.webhooks]]
    url = "https://example.com/hooks/guestqueue"
    events = ["completed", "failed"]
    secret = "a long random string"

Each delivery is one JSON POST with ``X-Guestqueue-Event``, ``X-Guestqueue-Delivery`` (its id,
the same on every attempt: receivers drop repeats) and ``X-Guestqueue-Signature:
sha256=<hex HMAC-SHA256 of the body with the secret>``. Delivery never delays a guest: events go
to an outbox (a row in the request log's SQLite file, written before the first attempt), then to
its URL's lane: a lane sends in order, one attempt at a time, and ends when it runs dry; lanes run
side by side, ``MAX_IN_FLIGHT`` attempts at most in all. So a hanging receiver holds up its own
URL only (issue 20: it held every other tenant's deliveries back 10 s per event). A failed attempt
(no answer, or not 2xx) is tried again, at the back of its lane, up to ``RETRIES`` times with
exponential backoff and jitter; one that fails them all is kept with its last error
(``GET /api/v1/admin/callback_errors``). Rows still pending at a restart are sent then.

With Redis (several instances) the outbox is shared instead: a pending delivery is a hash entry
and a due time in a sorted set under ``{prefix}:webhooks:``; any instance claims due deliveries
(a claim is a short lease: an instance that dies mid-attempt leaves it to another), so pending
deliveries survive the death of the instance that made them. Claimed deliveries go to the
claiming instance's lanes: one URL gets one attempt at a time from each instance.

``outbox.py`` sends (lanes, attempts, signing, retries); ``keeping.py`` (SQLite) and ``shared.py``
(Redis) keep the deliveries; ``line.py`` is a line's listener and threshold watcher, and the
shared event stream.
"""

from .line import EventStream, LineWebhooks
from .outbox import MAX_IN_FLIGHT, Outbox, signature

__all__ = ["MAX_IN_FLIGHT", "EventStream", "LineWebhooks", "Outbox", "signature"]
