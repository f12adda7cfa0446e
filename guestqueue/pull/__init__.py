"""Pull workers: a line whose calls remote workers come and take, as jobs (SQS style).

- ``board.py``: the job board (offer, receive with a lease, report, extend) in memory,
  and what a job looks like to a worker;
- ``redisboard.py``: the same board shared by several instances through Redis;
- ``upstream.py``: the line's upstream adapter, which offers each call on the board
  and turns the worker's reports into the guest's answer;
- ``worker.py``: ``guestqueue worker``, a worker that serves a Python workflow.

The HTTP side (``/jobs/receive``, ``/jobs/{receipt}/...``) is ``web/jobs.py``.
"""
