"""Does a CeresDB node hold its shards, and if not, is it only waiting? Pure (README, What each state means).

CeresMeta, not CeresDB, reopens shards, at its own pace (`docs/real-servers.md` section 7):
- CeresDB takes a shard lock with a create-if-absent txn and fails `OpenShard` while any lock on
  the shard exists, e.g. the previous incarnation's, whose lease lives until its TTL; the lock's
  value is the endpoint, the same for both incarnations, so only the lock's etcd lease tells them
  apart (a lease first seen before the container started belongs to an earlier run);
- meta's scheduler ticks every 5 s; at 1.2.2 it reopens one shard per tick for the whole cluster,
  from 1.2.4 it batches (META v1.2.4 static_topology_shard_scheduler.go, procedures appended up to
  `procedureExecutingBatchSize`);
- the scheduler learns that a shard is open only from the node's next heartbeat (every 2/3 of
  `ceresdb.lease`, HDB v1.2.2 cluster/src/cluster_impl.rs `start_heartbeat_loop`, nothing sent
  after an open); until then it submits the same shard again, so at 1.2.2 each shard costs up to
  a tick plus a heartbeat interval;
- up to 1.2.7 the first assigned node that is offline aborts the whole pass, so nothing reopens
  anywhere while one is down; 2.0.0 skips offline nodes.

So a node is `lease_lost` only when meta is ready (the caller checks), meta assigns it shards, one
of them has no lock at all, nothing of the above explains the wait, and the scheduler would have
reopened it by now; it is restarted once that has held for `lease_grace`, measured between two
readings. Everything else is `reopening`, with the rule that holds it in the detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal

from ceres_supervisor.model.observed import LeaseView
from ceres_supervisor.model.versions import Pace

State = Literal["held", "reopening", "lost", "unknown", "unassigned"]


@dataclass(frozen=True)
class Memory:
    """What the judgement remembers of a node between readings."""

    first_seen: tuple[tuple[int, float], ...] = ()
    """(lease id, wall time it was first seen on one of the node's locks), for current locks."""
    reopen_since: float | None = None
    """Monotonic reading time since which a missing shard has nothing to wait for but meta."""
    progress: int = 0
    """Shards the current run had locked at `reopen_since` (more means meta is moving)."""
    lost_since: float | None = None
    """Reading time when the scheduler's time ran out (the grace is measured from here)."""


@dataclass(frozen=True)
class Context:
    """What the rest of the cluster says about the wait (computed by the planner)."""

    pace: Pace
    offline: tuple[str, ...]
    """Other nodes meta assigns shards to that are offline now."""
    pending: int
    """Shards cluster-wide assigned to a node but not locked by it."""
    old_locks: tuple[int, ...]
    """Shards anywhere still locked by an earlier incarnation of their node."""
    grace_s: float


@dataclass(frozen=True)
class Judgement:
    state: State
    shards: tuple[int, ...]
    """Shards locked by the node's current run."""
    detail: str | None
    memory: Memory
    restart: bool = False
    """Lost for `lease_grace` (between readings): restart it."""
    lost_for_s: float = 0.0


def classify(
    view: LeaseView, endpoint: str, started: datetime | None, memory: Memory
) -> tuple[dict[int, int], dict[int, int], Memory]:
    """(shards locked by the current run, shards locked by an earlier one, memory) of a node.

    A lock belongs to an earlier run when its lease was first seen before the container started.
    Leases never seen before are dated to this reading."""
    known = dict(memory.first_seen)
    mine = view.locked_by(endpoint)
    stamp = view.checked_at.timestamp()
    first_seen = tuple(sorted((lease, known.get(lease, stamp)) for lease in set(mine.values())))
    dates = dict(first_seen)
    start = started.timestamp() if started is not None else float("-inf")
    current = {s: lease for s, lease in mine.items() if dates[lease] >= start}
    earlier = {s: lease for s, lease in mine.items() if dates[lease] < start}
    return current, earlier, replace(memory, first_seen=first_seen)


def _ids(shards: object) -> str:
    return ",".join(str(s) for s in sorted(shards))  # type: ignore[call-overload]


SERVED: Final = frozenset({"Ready", "Frozen"})
"""Statuses of CeresDB's `/debug/shards` under which a shard is open and serves."""


def judge(
    view: LeaseView | None,
    endpoint: str,
    started: datetime | None,
    run_seen_at: float,
    memory: Memory,
    context: Context,
    served: Mapping[int, str] | None = None,
) -> Judgement:
    """The node's shard state from one reading. See the module docstring for the rules. `served`:
    the node's own `/debug/shards` (1.2.5+), when read: a shard it locked but has not opened
    (Init, Opening: its tables are still opening, or one failed and CeresMeta retries it) is
    waited for, not held."""
    if view is None:
        return Judgement("unknown", (), "shard locks not read yet", memory)
    if view.at < run_seen_at:
        detail = "waiting for a shard-lock reading since the container started"
        return Judgement("reopening", (), detail, memory)
    if view.error is not None:
        # Neither resets nor advances any clock: an unreadable etcd proves nothing either way.
        return Judgement("unknown", (), view.error, memory)
    current, earlier, memory = classify(view, endpoint, started, memory)
    mine = tuple(sorted(current))
    assigned = view.assigned.get(endpoint)
    if not assigned:
        detail = "no shards assigned yet" if not view.assigned else "meta assigns no shards to this node"
        return Judgement("unassigned", mine, detail, replace(memory, reopen_since=None, lost_since=None))
    waiting = [s for s in assigned if s not in current]
    status = served or {}
    opening = [] if served is None else [s for s in assigned if s in current and status.get(s) not in SERVED]
    if not waiting and opening:
        states = ", ".join(f"{s} {status.get(s, 'not open')}" for s in opening)
        detail = f"shards {states}: locked, not open yet (CeresMeta retries a shard whose open failed)"
        return Judgement("reopening", mine, detail, replace(memory, reopen_since=None, lost_since=None))
    if not waiting:
        return Judgement("held", mine, None, replace(memory, reopen_since=None, lost_since=None))
    missing = [s for s in waiting if s not in view.locks]
    held_back = replace(memory, reopen_since=None, lost_since=None)
    if not missing:
        old = [s for s in waiting if s in earlier]
        detail = (
            f"shards {_ids(old)} still locked by the previous run until its lease expires"
            if old
            else f"shards {_ids(waiting)} locked by another endpoint"
        )
        return Judgement("reopening", mine, detail, held_back)
    pace = context.pace
    if pace.offline_blocks and context.offline:
        detail = (
            f"shards {_ids(missing)} wait: CeresMeta {pace.label} reopens nothing while "
            f"{', '.join(context.offline)} is offline"
        )
        return Judgement("reopening", mine, detail, held_back)
    if pace.one_per_tick and context.old_locks:
        detail = (
            f"shards {_ids(missing)} wait: CeresMeta {pace.label} reopens one shard per tick, and shards "
            f"{_ids(context.old_locks)} are still locked by a previous run"
        )
        return Judgement("reopening", mine, detail, held_back)
    since = memory.reopen_since
    if since is None or len(mine) > memory.progress:
        since, memory = view.at, replace(memory, reopen_since=view.at, progress=len(mine), lost_since=None)
    due = since + pace.seconds(context.pending)
    if view.at < due:
        detail = (
            f"shards {_ids(missing)} not locked yet; CeresMeta {pace.label} should reopen them "
            f"within {due - view.at:.0f}s"
        )
        return Judgement("reopening", mine, detail, memory)
    lost_since = memory.lost_since if memory.lost_since is not None else view.at
    memory = replace(memory, lost_since=lost_since)
    lost_for = view.at - lost_since
    detail = f"shards {_ids(missing)} not reopened although CeresMeta {pace.label} should have by now"
    return Judgement("lost", mine, detail, memory, restart=lost_for >= context.grace_s, lost_for_s=lost_for)
