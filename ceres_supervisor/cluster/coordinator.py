"""Several machines, one cluster: each agent publishes its own nodes and reads the others' from the
etcd that CeresMeta embeds, the way Patroni agents share their DCS.

Keys, all under `/ceres-supervisor/<cluster>/` (never under CeresMeta's or CeresDB's roots):
- `agents/<host>`: who this agent is and where its API is reached (`advertise`), bound to its
  lease (TTL `agent_ttl`, kept alive at TTL/3, revoked on a clean exit so the others see it leave
  at once);
- `nodes/<node>`: each of its nodes as `/v1/status` shows it, bound to the same lease, written
  when something that matters changed (never more than once per 100 ms);
- `disruptions/<node>`: a disruption slot, taken by one txn that checks the budget against every
  agent's published state at one revision and fails if any key it read changed or vanished since;
  held until the node is healthy with its shards again; it vanishes with its agent's lease;
- `operation`, `backup`: cluster-wide single-holder claims (a rolling operation, the scheduled
  backup), bound to the holder's lease;
- `paused`, `paused/<node>`: operator pause records (`operations.pauses`), with no lease.

A fresh view. One watch on the whole prefix keeps `view` current without polling; it must prove
itself: every heartbeat (this agent's record, written every TTL/3) has to come back through the
watch, and the view is then known complete as of that write (`confirmed_at`). A watch that does
not bring a heartbeat back within 2/3 of the TTL is abandoned for another member, and a view not
confirmed for a whole TTL is unavailable: `available` turns false, the planner makes no stop by
choice (crashes are still restarted) and no pause is mirrored from it. The watch also asks for a
member with a leader (etcd's `hasleader`), so a member cut from its quorum ends it at once.

Liveness tied to progress (as Patroni ties its leader key to its loop). The lease is renewed only
while the daemon's reconcile loop completes cycles (`progress`): a loop that has not completed one
for 2/3 of the TTL + 1 s stops the renewals, and so does a Docker Engine that could not be observed
for ENGINE_LOST_TTLS times the TTL. The lease then expires within a TTL, every record and slot of
this agent goes with it, and the other agents count its nodes as down (`unknown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import structlog

from ceres_supervisor.adapters import etcd
from ceres_supervisor.cluster.view import (
    Identity,
    StoreView,
    apply,
    down_reason,
    heartbeat_only,
    prefix,
    puts,
    settled_slots,
    significant,
)
from ceres_supervisor.cluster.writes import StoreWrites
from ceres_supervisor.decisions.budget import Budget

log = structlog.get_logger(__name__)

NODE_WRITE_MIN_S: Final = 0.1
RETRY_S: Final = 1.0
ENGINE_LOST_TTLS: Final = 3
"""A Docker Engine unobservable this many TTLs: the agent stops renewing its lease (its slots go)."""
LEASE_EXPIRED: Final = "the agent's lease expired (the store was out of reach too long)"


class WatchStalled(etcd.EtcdUnavailable):
    """The watch broke, or did not bring this agent's own heartbeat back in time: the next session
    follows another member."""


class Coordinator(StoreWrites):
    """The agent's session with the store: its lease, its records, the watch, the slots."""

    def __init__(
        self,
        cluster: str,
        identity: Identity,
        ttl_s: float,
        on_change: Callable[[], None],
    ) -> None:
        self.root = prefix(cluster)
        self.identity = identity
        self.ttl_s = max(1, round(ttl_s))
        self.on_change = on_change
        self.view = StoreView()
        self.confirmed_at: float | None = None
        """Monotonic time as of which the store confirmed the view complete (see the docstring)."""
        self.connected = False
        self.detail = "not connected yet"
        self.max_unavailable = 1
        self.retries = 0
        """Store calls that failed and were tried again within the lease (a stall, not an outage)."""
        self._remote: dict[str, str] = {}
        """The file's nodes on other machines -> their role (set by `budget`)."""
        self._client: etcd.Store | None = None
        self._lease = 0
        self._docs: dict[str, dict[str, Any]] = {}
        self._written: dict[str, str] = {}
        self._dirty = asyncio.Event()
        self._held: set[str] = set()
        self._identity_written: tuple[object, ...] | None = None
        self._awaiting: list[tuple[int, float]] = []
        """Heartbeats written and not yet seen through the watch: (revision, when written)."""
        self._watch_endpoint: str | None = None
        self._progress_at = time.monotonic()
        self._engine_lost_since: float | None = None
        self._withheld: str | None = None
        self._closing = False

    @property
    def endpoint(self) -> str | None:
        return self._client.endpoint if self._client else None

    @property
    def watching(self) -> str | None:
        """The member the watch follows."""
        return self._watch_endpoint or self.endpoint

    @property
    def view_age_s(self) -> float | None:
        return None if self.confirmed_at is None else time.monotonic() - self.confirmed_at

    @property
    def available(self) -> bool:
        """The session holds and the view is fresh: what every stop by choice needs."""
        age = self.view_age_s
        return self.connected and age is not None and age <= self.ttl_s

    @property
    def why_unavailable(self) -> str:
        if not self.connected:
            return self.detail
        age = self.view_age_s
        if age is None or age > self.ttl_s:
            return f"the store's view is {'unconfirmed' if age is None else f'{age:.0f}s old'}"
        return "ok"

    def _key(self, kind: str, name: str = "") -> bytes:
        return self.root + f"{kind}/{name}".encode() if name else self.root + kind.encode()

    # -- what the loop hands over ----------------------------------------------------------------

    def progress(self, engine_error: str | None) -> None:
        """A reconcile cycle completed (with or without Docker): the lease may be renewed."""
        now = time.monotonic()
        self._progress_at = now
        if engine_error is None:
            self._engine_lost_since = None
        elif self._engine_lost_since is None:
            self._engine_lost_since = now

    def _why_not_renew(self, now: float) -> str | None:
        stalled = now - self._progress_at
        if stalled > self.ttl_s * 2 / 3 + 1:
            return f"the reconcile loop completed no cycle for {stalled:.0f}s"
        if (
            self._engine_lost_since is not None
            and now - self._engine_lost_since > ENGINE_LOST_TTLS * self.ttl_s
        ):
            return f"the Docker Engine could not be observed for {now - self._engine_lost_since:.0f}s"
        return None

    def _down(self, docs: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str | None]]:
        """name -> (role, why it is down or None) of every node the store publishes, and of each node of
        the file on another machine that it does not publish (unknown: counted as down)."""
        down = {name: (role, down_reason(None)) for name, role in self._remote.items()}
        down.update({name: (str(doc.get("role", "")), down_reason(doc)) for name, doc in docs.items()})
        return down

    @property
    def published(self) -> Mapping[str, dict[str, Any]]:
        """The documents of this agent's nodes last handed over."""
        return self._docs

    def publish(self, docs: Mapping[str, dict[str, Any]]) -> None:
        """This cycle's documents of this agent's nodes; written when something significant changed."""
        self._docs = dict(docs)
        changed_nodes = any(self._written.get(n) != significant(d) for n, d in docs.items())
        if changed_nodes or set(self._written) - set(docs) or self._identity_written != self.identity.mark():
            self._dirty.set()

    def budget(
        self,
        max_unavailable: int,
        coordinated: bool,
        roles: Mapping[str, str],
        local: set[str],
        spec_hash: str,
    ) -> Budget:
        """The disruption budget as the store shows the other machines' nodes. `roles`: every node of
        this agent's file -> its role; `local`: the ones this agent runs."""
        self.max_unavailable = max_unavailable
        self._remote = {name: role for name, role in roles.items() if name not in local}
        view = self.view
        peers = {name: why for name, why in self._down(view.nodes).items() if name not in local}
        outdated = frozenset(n for a in view.agents.values() for n in a.outdated if n not in local)
        slots = {name: str(slot.get("host", "?")) for name, slot in view.slots.items()}
        others = {host: a.spec_hash for host, a in view.agents.items() if host != self.identity.host}
        differ = None
        if any(h != spec_hash for h in others.values()):
            differ = ", ".join(
                f"{host} {h}" for host, h in sorted({**others, self.identity.host: spec_hash}.items())
            )
        return Budget(
            max_unavailable,
            coordinated,
            self.available,
            peers,
            slots,
            outdated,
            differ,
            settled=settled_slots(view),
        )

    def newer_file(self) -> str | None:
        """Another agent whose file has a higher generation than this one's, or None."""
        mine = self.identity.generation
        newer = sorted((a.generation, h) for h, a in self.view.agents.items() if a.generation > mine)
        if not newer:
            return None
        generation, host = newer[-1]
        return f"{host} runs generation {generation}, this file is generation {mine}"

    # -- the session -------------------------------------------------------------------------------

    async def run(self, client: etcd.Store) -> None:
        """For ever: connect, keep the lease and the records, follow the watch; on trouble, say so
        (`connected` false) and start over."""
        self._client = client
        while not self._closing:
            try:
                await self._session(client)
            except* etcd.EtcdError as group:
                if not self._closing:  # at a clean exit the revoked lease is expected
                    error = group.exceptions[0]
                    if isinstance(error, WatchStalled):
                        self._watch_endpoint = client.other_endpoint(self._watch_endpoint or client.endpoint)
                    self._unavailable(str(error))
            except* Exception as group:  # a bug here must not take the daemon down
                log.error("coordination_failed", error=repr(group.exceptions[0]), exc_info=group)
                self._unavailable(f"internal error: {group.exceptions[0]!r}")
            # close() comes before the daemon cancels this task, and a cancellation that lands
            # while the session's TaskGroup handles an error is folded into that error (Python
            # 3.11): the flag, not the cancellation, ends the loop, so the daemon always stops.
            if not self._closing:
                await asyncio.sleep(RETRY_S)

    def _unavailable(self, why: str) -> None:
        if self.connected or self.detail != why:
            log.warning("coordination_unavailable", error=why)
        self.connected, self.detail = False, why
        self.on_change()

    async def _session(self, client: etcd.Store) -> None:
        kept_at = time.monotonic()  # the lease, granted or kept alive now, lasts ttl_s from here at least
        why = self._why_not_renew(kept_at)
        if why is not None:
            raise etcd.EtcdUnavailable(f"lease not renewed: {why}")
        if not self._lease or await client.keepalive(self._lease) <= 0:
            self._lease = await client.grant(self.ttl_s)
            self._written.clear()
            self._held.clear()
            self._identity_written = None
        await client.put(
            self._key("agents", self.identity.host), self.identity.record().encode(), self._lease
        )
        asked_at = time.monotonic()
        snapshot = await client.range(self.root, prefix=True)  # linearizable: complete as of now
        self.view = apply(self.view, self.root, puts(snapshot.kvs), snapshot.revision, reset=True)
        self.confirmed_at, self._awaiting = asked_at, []
        self.connected, self.detail = True, "ok"
        self._withheld = None
        watching = self._watch_endpoint = self._watch_endpoint or client.endpoint
        log.info(
            "coordination_connected", endpoint=client.endpoint, watch=watching, revision=snapshot.revision
        )
        self.on_change()
        self._dirty.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(client, snapshot.revision + 1, watching), name="coordination-watch")
            group.create_task(self._keep(client, kept_at), name="coordination-lease")

    async def _keep(self, client: etcd.Store, kept_at: float) -> None:
        """Keepalive and heartbeat at TTL/3 while the loop makes progress, node records as they
        change, and the watch held to account for every heartbeat.

        A call that no member answers in time (one slow fsync on a loaded disk, a member
        restarting) is tried again while the lease has more than a third of its TTL left: the agent
        stays available, since its records and slots still stand; past that it gives up, before
        other agents could see its lease expire while it still counted on it."""
        interval = self.ttl_s / 3
        next_beat = 0.0
        while not self._closing:
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + interval
                    why = self._why_not_renew(now)
                    if why is not None:
                        if self._withheld != why.split(" for ")[0]:
                            log.warning("coordination_lease_withheld", reason=why)
                            self._withheld = why.split(" for ")[0]
                    else:
                        if self._withheld is not None:
                            log.info("coordination_lease_renewed_again")
                            self._withheld = None
                        if await client.keepalive(self._lease) <= 0:
                            raise etcd.EtcdError(LEASE_EXPIRED)
                        kept_at = now
                        written = await client.put(
                            self._key("agents", self.identity.host),
                            self.identity.record().encode(),
                            self._lease_to_write(),
                        )
                        self._awaiting.append((written, now))
                if self._awaiting and time.monotonic() - self._awaiting[0][1] > self.ttl_s * 2 / 3:
                    raise WatchStalled(
                        f"the watch on {self._watch_endpoint or client.endpoint} did not bring back this "
                        f"agent's heartbeat within {self.ttl_s * 2 / 3:.1f}s"
                    )
                if self._dirty.is_set() and self._withheld is None:
                    self._dirty.clear()
                    try:
                        await self._write_nodes(client)
                    except etcd.EtcdUnavailable:
                        self._dirty.set()  # written at the next try
                        raise
                    await asyncio.sleep(NODE_WRITE_MIN_S)
            except WatchStalled:
                raise
            except etcd.EtcdUnavailable as err:
                if time.monotonic() + RETRY_S >= kept_at + self.ttl_s * 2 / 3:
                    raise
                self.retries += 1
                log.info("coordination_retry", error=str(err))
                await asyncio.sleep(RETRY_S)
                continue
            wake = next_beat
            if self._awaiting:
                wake = min(wake, self._awaiting[0][1] + self.ttl_s * 2 / 3 + 0.05)
            delay = max(0.0, wake - time.monotonic())
            if self._withheld is not None:
                # No renewal, so no record is written: a change waits for the next beat. (Waiting on
                # `_dirty`, set and never cleared here, would return at once without yielding.)
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._dirty.wait()

    async def _write_nodes(self, client: etcd.Store) -> None:
        """The node records that changed, and the agent's own when its file or its outdated nodes
        did (a rolling change must reach the other agents at once, not at the next heartbeat)."""
        ops = []
        written = {}
        identity = self.identity.mark()
        if identity != self._identity_written:
            ops.append(
                etcd.put_request(
                    self._key("agents", self.identity.host),
                    self.identity.record().encode(),
                    self._lease_to_write(),
                )
            )
        for name, doc in self._docs.items():
            mark = significant(doc)
            if self._written.get(name) != mark:
                value = json.dumps(doc).encode()
                ops.append(etcd.put_request(self._key("nodes", name), value, self._lease_to_write()))
                written[name] = mark
        gone = set(self._written) - set(self._docs)
        ops += [etcd.delete_request(self._key("nodes", name)) for name in sorted(gone)]
        if not ops:
            return
        await client.txn([], ops)
        for name in gone:
            self._written.pop(name, None)
        self._written.update(written)
        self._identity_written = identity

    async def _watch(self, client: etcd.Store, start: int, endpoint: str) -> None:
        """Changes applied one by one in revision order; a heartbeat of ours that comes back
        confirms the view as of when it was written."""
        revision = start
        try:
            async for batch in client.watch(self.root, revision, endpoint):
                if batch.events:
                    before = self.view
                    self.view = apply(
                        self.view, self.root, [(e.deleted, e.kv) for e in batch.events], batch.revision
                    )
                    if not heartbeat_only(before, self.view):
                        self.on_change()
                seen = max([batch.revision, *(e.kv.mod_revision for e in batch.events)])
                confirmed = [at for rev, at in self._awaiting if rev <= seen]
                if confirmed:
                    self.confirmed_at = max(confirmed)
                    self._awaiting = [(rev, at) for rev, at in self._awaiting if rev > seen]
                revision = max(revision, seen + 1)
        except etcd.Compacted as err:
            raise etcd.EtcdUnavailable(f"watch: {err}") from None  # the session reads everything again
        except (aiohttp.ClientError, OSError, ValueError, etcd.EtcdUnavailable) as err:
            raise WatchStalled(f"watch on {endpoint}: {err}") from None
        raise WatchStalled(f"watch on {endpoint} ended")

    async def close(self) -> None:
        """A clean exit: revoke the lease, so every record, slot and claim of this agent goes at
        once (and the session ends: no reconnection after its lease is gone)."""
        self._closing = True
        if self._client is not None and self._lease:
            with contextlib.suppress(etcd.EtcdError):
                await self._client.revoke(self._lease)
            self._lease = 0
