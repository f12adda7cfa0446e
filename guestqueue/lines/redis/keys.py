"""Every Redis key and channel of a shared line, in one place (as arq keeps its in one module).

All keys start with the deployment's prefix (GUEST_REDIS_PREFIX), so several
deployments can share one Redis. A script is given its keys as KEYS where it knows them before it
runs; the keys it finds by an id it reads inside (the request of the flight at the front, a job
of a receipt) and the few names beside them are spelled in :data:`SCRIPT_NAMES` only: Python builds
them from it, and every script that needs one gets it from the Lua that :func:`lua_names` writes
(``--! include names``: ``named(prefix, KEY.request, id)``). Scripts spell no key name themselves
(tests/test_layout.py). Names built inside a script are fine on a single Redis or Valkey, not on a
cluster (which the line does not support: its scripts touch keys of many flights at once).
"""

from __future__ import annotations

from dataclasses import dataclass

# The keys (and channels) a script may find or name itself, by what Python and Lua call them.
SCRIPT_NAMES = {
    "beat": "beat",
    "wake": "wake",
    "instance": "instance",
    "request": "request",
    "events": "events",
    "ticket": "ticket",
    "held": "held",
    "holders": "holders",
    "client": "client",
    "sessions": "sessions",
    "session": "session",
    "session_jtis": "session-jtis",
    "session_totals": "session-totals",
    "session_ended": "session-ended",
    "job": "job",
    "job_reports": "job-reports",
    "receipt": "receipt",
    "fair_waiting": "fair-waiting",
}


def lua_names() -> str:
    """The Lua of ``--! include names``: :data:`SCRIPT_NAMES`, and ``named(prefix, kind, id)``."""
    table = ", ".join(f"{name} = '{spelled}'" for name, spelled in SCRIPT_NAMES.items())
    return (
        f"local KEY = {{{table}}}\n"
        "-- A key's name as lines/redis/keys.py spells it: the line's prefix, its kind, and its id if any.\n"
        "local function named(prefix, kind, id)\n"
        "  if kind == nil then error('a key kind lines/redis/keys.py does not name') end\n"
        "  if id == nil then return prefix .. ':' .. kind end\n"
        "  return prefix .. ':' .. kind .. ':' .. id\n"
        "end"
    )


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def seq(self) -> str:
        """The ticket counter: each admitted flight's global number (INCR)."""
        return f"{self.prefix}:seq"

    @property
    def epoch(self) -> str:
        """A random name for this Redis's memory of the line: it changes when Redis forgot
        everything (restarted empty, flushed), so every instance notices and rebuilds the line."""
        return f"{self.prefix}:epoch"

    @property
    def beat(self) -> str:
        """HASH at, ttl: the last heartbeat of any instance (a gap longer than a lease is Redis's, not
        the instances': lines/redis/line.py forgives it)."""
        return self._named("beat")

    @property
    def rebuilding(self) -> str:
        """Set (with an expiry) while the instances rebuild a forgotten line: no start, no new number."""
        return f"{self.prefix}:rebuilding"

    @property
    def ran(self) -> str:
        """SET, written while a forgotten line is rebuilt: flights their runner says started (running or
        lately ended), which a guest's instance that had not heard so must not put back in line."""
        return f"{self.prefix}:ran"

    @property
    def line(self) -> str:
        """ZSET flight id -> rank * TIER_SPAN + its number (a fair line: its tag, scripts/fair.lua): the
        flights waiting, in the order they start."""
        return f"{self.prefix}:line"

    @property
    def fair_counters(self) -> str:
        """HASH share -> the service it received (a fair line's counters, fairness.py)."""
        return f"{self.prefix}:fair-counters"

    @property
    def fair_clock(self) -> str:
        """The tag of a fair line's last start: where a share rejoins when nobody waits."""
        return f"{self.prefix}:fair-clock"

    def fair_waiting(self, share: str) -> str:
        """ZSET flight id -> number: a share's waiting flights (scripts/fair.lua; lazily cleaned)."""
        return self._named("fair_waiting", share)

    @property
    def slots(self) -> str:
        """HASH flight id -> "instance started_ms": the flights running, and who runs them."""
        return f"{self.prefix}:slots"

    @property
    def orphans(self) -> str:
        """HASH flight id -> "instance started_ms": running flights of instances found dead."""
        return f"{self.prefix}:orphans"

    @property
    def pace(self) -> str:
        """Redis time (ms) before which no flight may start."""
        return f"{self.prefix}:pace"

    @property
    def aging(self) -> str:
        """Sorted set: flights of a lower tier, scored by when they are promoted to the highest."""
        return f"{self.prefix}:aging"

    @property
    def releases(self) -> str:
        """List: start times (Redis ms) of the last minute, for a line's release_per_minute."""
        return f"{self.prefix}:releases"

    @property
    def held(self) -> str:
        """Redis time (ms) until which an upstream's Retry-After holds every start."""
        return f"{self.prefix}:held"

    @property
    def retrying(self) -> str:
        """ZSET token -> expiry ms: retries waiting for a pacing turn (they go first)."""
        return f"{self.prefix}:retrying"

    @property
    def instances(self) -> str:
        """ZSET instance id -> lease expiry ms (renewed by each instance's heartbeat)."""
        return f"{self.prefix}:instances"

    def instance_info(self, instance_id: str) -> str:
        """HASH host, pid, started_at of one instance."""
        return self._named("instance", instance_id)

    def request(self, flight_id: str) -> str:
        """HASH what a flight asks upstream, so any instance can run it."""
        return self._named("request", flight_id)

    def flight_events(self, flight_id: str) -> str:
        """STREAM of one flight's events (lines/redis/relay.py)."""
        return self._named("events", flight_id)

    def ticket(self, request_id: str) -> str:
        """HASH one guest request's record: any instance can resume or look it up (places.py)."""
        return self._named("ticket", request_id)

    def held_requests(self, instance_id: str) -> str:
        """SET the request ids an instance holds (or held: reaped after it died)."""
        return self._named("held", instance_id)

    def holders(self, flight_id: str) -> str:
        """SET the instances holding guests of this flight (it stays in line while one does)."""
        return self._named("holders", flight_id)

    @property
    def moved_channel(self) -> str:
        """Channel: [request id, old holder, new holder]: a guest resumed on another instance."""
        return f"{self.prefix}:ticket-moved"

    def answer(self, digest: str) -> str:
        """STRING a cached answer, by the SHA-256 of its cache key (answers.py)."""
        return f"{self.prefix}:answer:{digest}"

    def idempotency(self, client: str, idempotency_key: str) -> str:
        """STRING the request id a client's Idempotency-Key names (the same on every instance)."""
        return f"{self.prefix}:idempotency:{client}:{idempotency_key}"

    def client(self, client: str) -> str:
        """Counter: requests one client has queued or processing, on every instance."""
        return self._named("client", client)

    @property
    def totals(self) -> str:
        """HASH counters of every instance: admitted, outcomes, rejections, wait sums (tally.py)."""
        return f"{self.prefix}:totals"

    @property
    def recent(self) -> str:
        """LIST the latest request ids, newest first (``/queue/history``)."""
        return f"{self.prefix}:recent"

    @property
    def wake(self) -> str:
        """Channel: the line or its slots changed (admit, leave, finish): try to start."""
        return self._named("wake")

    @property
    def events_channel(self) -> str:
        """Channel: a flight's stream has a new event (the message is the flight id)."""
        return f"{self.prefix}:flight-events"

    @property
    def cancel_channel(self) -> str:
        """Channel: stop this flight's call, its last guest left (the message is the flight id)."""
        return f"{self.prefix}:flight-cancel"

    # -- an admission line's sessions (waitingroom/sessions.py; its scripts name them through SCRIPT_NAMES) --

    @property
    def session_ended_channel(self) -> str:
        """Each session's end (its request id): instances forget the sessions they issued that ended."""
        return self._named("session_ended")

    @property
    def sessions(self) -> str:
        """Sorted set: each open session (``s:<jti> <opened ms>``) by its expiry (ms); each holds a slot."""
        return self._named("sessions")

    def session(self, request_id: str) -> str:
        """Hash: one session's jti, flight, exp and state (active, completed, expired, revoked)."""
        return self._named("session", request_id)

    @property
    def session_jtis(self) -> str:
        """Hash: jti -> request id, of the open sessions (revocation by jti)."""
        return self._named("session_jtis")

    @property
    def session_totals(self) -> str:
        """Hash: admitted, completed, expired, revoked."""
        return self._named("session_totals")

    def client_sessions(self, client: str) -> str:
        """Sorted set: the request ids of one client's sessions, by expiry (ms); the client's limit
        counts those still active."""
        return f"{self.prefix}:client-sessions:{client}"

    # -- a pull line's job board (pull/board.py; its scripts name them through SCRIPT_NAMES) --

    @property
    def job_offers(self) -> str:
        """List: the ids of the jobs waiting for a worker, the next at the head."""
        return f"{self.prefix}:job-offers"

    @property
    def job_leases(self) -> str:
        """Sorted set: each live receipt by its lease's end (ms)."""
        return f"{self.prefix}:job-leases"

    @property
    def job_worker_seen(self) -> str:
        """String: when a worker last asked for jobs or reported (Redis time, ms); expires in a day."""
        return f"{self.prefix}:job-worker-seen"

    def job(self, job_id: str) -> str:
        """Hash: one job's request (JSON), its receipt and receive count."""
        return self._named("job", job_id)

    def job_reports(self, job_id: str) -> str:
        """Stream: what the job's workers reported (taken, chunks, complete, fail), read by its owner."""
        return self._named("job_reports", job_id)

    def receipt(self, receipt: str) -> str:
        """String: the job id a receipt leases."""
        return self._named("receipt", receipt)

    def _named(self, name: str, id: str | None = None) -> str:
        """A name of SCRIPT_NAMES, as the scripts' ``named(prefix, KEY.<name>, id)`` spells it too."""
        spelled = f"{self.prefix}:{SCRIPT_NAMES[name]}"
        return spelled if id is None else f"{spelled}:{id}"


# -- the KEYS of the line's scripts, in the order each script reads them --------------------


def admit_keys(keys: Keys, flight_id: str) -> list[str]:
    """scripts/line_admit.lua's."""
    return [
        keys.slots,
        keys.instances,
        keys.orphans,
        keys.line,
        keys.seq,
        keys.pace,
        keys.request(flight_id),
        keys.aging,
        keys.epoch,
        keys.rebuilding,
        keys.fair_counters,
        keys.fair_clock,
    ]


def start_keys(keys: Keys) -> list[str]:
    """scripts/line_start.lua's."""
    return [
        keys.slots,
        keys.instances,
        keys.orphans,
        keys.line,
        keys.pace,
        keys.retrying,
        keys.releases,
        keys.aging,
        keys.epoch,
        keys.rebuilding,
        keys.fair_counters,
        keys.fair_clock,
    ]


def rebuild_keys(keys: Keys) -> list[str]:
    """scripts/line_rebuild.lua's."""
    return [keys.slots, keys.line, keys.seq, keys.pace, keys.aging, keys.ran]


def view_keys(keys: Keys) -> list[str]:
    """scripts/line_view.lua's."""
    return [keys.slots, keys.instances, keys.orphans, keys.line, keys.pace, keys.held, keys.releases, keys.aging]
