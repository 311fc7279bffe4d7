"""Every Redis key the service writes, laid out so that a Redis Cluster can hold them.

A Redis Cluster keeps each key in one of 16,384 hash slots, spread over its masters, and a
script (or a multi-key command) may touch keys of one slot only. Where several keys must be
read or written together, they share a *hash tag* (the part in ``{...}``), which alone picks
the slot. The same layout serves one Redis, so the two differ below this module, not above it.

* **Per stream** (``{<id>}``): its events, its record (owner and worker), its attachment mark.
  A stream's per-token writes land on its own slot, so the work of many streams spreads over
  every master, whoever their users are.
* **Per user** (``{u:<user key>}``): the open-stream slots, the token quota and the request rate
  (the ``limits`` package's keys and flask-limiter's, through :func:`user_tag` as their key), so
  that a user's admission checks all land on one master; and the index of the user's streams.
* **Per deployment** (``{axrisi}``): the workers' leases, their synced times and when the dataset
  first met a worker. Each worker touches them once a second (its heartbeat), and readers only
  when a stream is unknown or its worker silent: never per token, never per request.
* **Per worker**: its stop requests (one key, one blocking reader).
"""

from __future__ import annotations

DEPLOYMENT = "{axrisi}"

WORKERS = f"axrisi:{DEPLOYMENT}:workers"
"""Sorted set: worker id -> when its lease lapses (ms since the epoch)."""
SYNCED = f"axrisi:{DEPLOYMENT}:synced"
"""Hash: worker id -> a time (ms) before which every stream it started is in Redis."""
BOOT = f"axrisi:{DEPLOYMENT}:boot"
"""When this Redis dataset first met a worker (ms): a young dataset may have lost streams."""


def events(stream_id: int) -> str:
    """Stream: the stream's events, one entry per flush (:mod:`axrisi.shared.mirror`)."""
    return f"axrisi:{{{stream_id}}}:events"


def record(stream_id: int) -> str:
    """String ``"<owner> <worker>"``: who may read the stream, and which worker generates it.
    Written with ``SET NX`` when the id is handed out, which is what makes ids unique."""
    return f"axrisi:{{{stream_id}}}:record"


def attached(stream_id: int) -> str:
    """Present while a reader follows the stream through Redis (the generating worker's grace)."""
    return f"axrisi:{{{stream_id}}}:attached"


def user_tag(user_key: str) -> str:
    """The hash tag of a user's keys; also the key the rate limit and token quota count under,
    so that ``limits``' own keys (``LIMITS:LIMITER/{u:...}/...``) land in the user's slot."""
    return f"{{u:{user_key}}}"


def stream_slots(user_key: str) -> str:
    """Sorted set: the user's open-stream leases, scored by expiry."""
    return f"axrisi:{user_tag(user_key)}:streams"


def listed(user_key: str) -> str:
    """Sorted set: the user's streams (``Listed`` members, scored by their start), the newest
    :data:`LISTED_KEEP` of them, for ``GET /api/streams`` (:mod:`axrisi.shared.listing`)."""
    return f"axrisi:{user_tag(user_key)}:listed"


LISTED_KEEP = 100
"""Members kept per user: the 50 a list shows, with room for ones that expired meanwhile."""


def stops(worker: str) -> str:
    """List: stream ids that another worker or instance asks this worker to stop."""
    return f"axrisi:stops:{worker}"


def record_value(owner: str, worker: str) -> str:
    return f"{owner} {worker}"
