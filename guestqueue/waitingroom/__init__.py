"""Waiting rooms: an admission line lets guests into a protected application, ``max_active`` at once.

- ``sessions.py``: an admitted guest's session holds one of the line's slots until it is
  completed, revoked or expires (in memory; ``redissessions.py``: shared through Redis);
- ``tokens.py``: the signed token (JWT) a guest is admitted with, and its keys (JWKS).

The line's keys are ``linespec.Admission``; the worker pool admits through
``workers.Admitter``; the HTTP side (``join``, ``complete``, ``.well-known/jwks.json``)
is ``web/waitingroom.py``.
"""
