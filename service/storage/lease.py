"""Run ownership: a lease on one run, held by one replica, with a fencing token.

A lease says which replica may write a run, until when (on the database's clock, so
replicas' clocks never matter) and with which token. Every store write carries the
writer's token; the store refuses it unless that token is the run's current lease and the
lease is unexpired, checked in the write's own transaction. A takeover raises the token,
so a replica that was paused or cut off past its lease can never write again with the
token it held, even if it wakes up convinced it still owns the run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """One replica's hold on one run.

    Attributes:
        run_id: the run.
        owner: the holding replica's id.
        url: the holding replica's advertised URL (where writes for the run go).
        token: the fencing token; it grows by one at every takeover of the run.
        ttl_s: how long the lease lasts after its last acquire or renewal.
    """

    run_id: str
    owner: str
    url: str
    token: int
    ttl_s: float
