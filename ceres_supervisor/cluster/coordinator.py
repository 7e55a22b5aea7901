"""Several machines, one cluster (README: Several machines): each agent publishes its nodes and reads the
others' from the etcd that CeresMeta embeds, the way Patroni agents share their DCS.

Keys, all under `/ceres-supervisor/<cluster>/` (never under CeresMeta's or CeresDB's roots):
- `agents/<host>`: who this agent is, bound to its lease (TTL `agent_ttl`, kept alive at TTL/3,
  revoked on a clean exit so the others see it leave at once);
- `nodes/<node>`: each of its nodes as `/v1/status` shows it, bound to the same lease, written
  when something that matters changed (never more than once per 100 ms);
- `disruptions/<node>`: a disruption slot, taken by one txn that checks the budget against every
  agent's published state at one revision and fails if any of it changed since; held until the
  node is healthy with its shards again; it vanishes with its agent's lease;
- `paused`, `paused/<node>`: operator pauses (README, Maintenance), with no lease.

One watch on the whole prefix keeps `view` current without polling. When the store cannot be
reached or has no quorum, `available` turns false: the planner then makes no stop by choice
(crashes are still restarted), and everything is written again once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import structlog

from ceres_supervisor.adapters import etcd
from ceres_supervisor.cluster.view import (
    AgentRecord,
    StoreView,
    apply,
    down_reason,
    now_text,
    prefix,
    significant,
)
from ceres_supervisor.decisions.budget import COORDINATION_UNAVAILABLE, Budget, blockers, describe
from ceres_supervisor.model.errors import SlotRefused

log = structlog.get_logger(__name__)

NODE_WRITE_MIN_S: Final = 0.1
RETRY_S: Final = 1.0
SLOT_ATTEMPTS: Final = 3
LEASE_EXPIRED: Final = "the agent's lease expired (the store was out of reach too long)"
SIGNIFICANT: Final = (
    "state",
    "reason",
    "container_id",
    "restarts",
    "started_at",
    "last_exit",
    "next_restart_at",
)
"""What makes a node's record worth writing again (a probe's timestamp alone does not)."""


@dataclass
class Identity:
    """Who this agent is; `outdated` changes during a rolling change."""

    host: str
    version: str
    listen: str
    spec_hash: str = ""
    nodes: tuple[str, ...] = ()
    outdated: tuple[str, ...] = ()
    started_at: str = field(default_factory=now_text)

    def record(self) -> AgentRecord:
        return AgentRecord(
            self.host,
            os.getpid(),
            self.version,
            self.listen,
            self.spec_hash,
            self.started_at,
            now_text(),
            self.nodes,
            self.outdated,
        )


class Coordinator:
    """The agent's session with the store: its lease, its records, the watch, the slots."""

    def __init__(
        self,
        cluster: str,
        identity: Identity,
        endpoints: Sequence[str],
        ttl_s: float,
        on_change: Callable[[], None],
    ) -> None:
        self.root = prefix(cluster)
        self.identity = identity
        self.endpoints = list(endpoints)
        self.ttl_s = max(1, round(ttl_s))
        self.on_change = on_change
        self.view = StoreView()
        self.available = False
        self.detail = "not connected yet"
        self.max_unavailable = 1
        self._remote: dict[str, str] = {}
        """The file's nodes on other machines -> their role (set by `budget`)."""
        self._client: etcd.Etcd | None = None
        self._lease = 0
        self._docs: dict[str, dict[str, Any]] = {}
        self._written: dict[str, str] = {}
        self._dirty = asyncio.Event()
        self._held: set[str] = set()
        self._identity_written: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None
        self._closing = False
        self.retries = 0
        """Store calls that failed and were tried again within the lease (a stall, not an outage)."""

    @property
    def endpoint(self) -> str | None:
        return self._client.endpoint if self._client else None

    def _key(self, kind: str, name: str = "") -> bytes:
        return self.root + f"{kind}/{name}".encode() if name else self.root + kind.encode()

    # -- what the loop hands over ----------------------------------------------------------------

    def _down(self, docs: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str | None]]:
        """name -> (role, why it is down or None) of every node the store publishes, and of each node of
        the file on another machine that it does not publish (unknown: counted as down)."""
        down = {name: (role, down_reason(None)) for name, role in self._remote.items()}
        down.update({name: (str(doc.get("role", "")), down_reason(doc)) for name, doc in docs.items()})
        return down

    def publish(self, docs: Mapping[str, dict[str, Any]]) -> None:
        """This cycle's documents of this agent's nodes; written when something significant changed."""
        self._docs = dict(docs)
        changed_nodes = any(self._written.get(n) != significant(d) for n, d in docs.items())
        if changed_nodes or set(self._written) - set(docs) or self._identity_written != self._identity_mark():
            self._dirty.set()

    def _identity_mark(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        i = self.identity
        return i.spec_hash, i.nodes, i.outdated

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
        return Budget(max_unavailable, coordinated, self.available, peers, slots, outdated, differ)

    # -- the session -------------------------------------------------------------------------------

    async def run(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """For ever: connect, keep the lease and the records, follow the watch; on trouble, say so
        (`available` false) and start over."""
        self._client = etcd.Etcd(session, self.endpoints, timeout_s)
        while not self._closing:
            try:
                await self._session(self._client)
            except* etcd.EtcdError as group:
                if not self._closing:  # at a clean exit the revoked lease is expected
                    self._unavailable(str(group.exceptions[0]))
            except* Exception as group:  # a bug here must not take the daemon down
                log.error("coordination_failed", error=repr(group.exceptions[0]), exc_info=group)
                self._unavailable(f"internal error: {group.exceptions[0]!r}")
            # close() comes before the daemon cancels this task, and a cancellation that lands
            # while the session's TaskGroup handles an error is folded into that error (Python
            # 3.11): the flag, not the cancellation, ends the loop, so the daemon always stops.
            if not self._closing:
                await asyncio.sleep(RETRY_S)

    def _unavailable(self, why: str) -> None:
        if self.available or self.detail != why:
            log.warning("coordination_unavailable", error=why)
        self.available, self.detail = False, why
        self.on_change()

    async def _session(self, client: etcd.Etcd) -> None:
        kept_at = time.monotonic()  # the lease, granted or kept alive now, lasts ttl_s from here at least
        if not self._lease or await client.keepalive(self._lease) <= 0:
            self._lease = await client.grant(self.ttl_s)
            self._written.clear()
            self._held.clear()
            self._identity_written = None
        await client.put(
            self._key("agents", self.identity.host), self.identity.record().encode(), self._lease
        )
        snapshot = await client.range(self.root, prefix=True)
        self.view = apply(self.view, self.root, snapshot.kvs, (), snapshot.revision, reset=True)
        self.available, self.detail = True, "ok"
        log.info("coordination_connected", endpoint=client.endpoint, revision=snapshot.revision)
        self.on_change()
        self._dirty.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(client, snapshot.revision + 1), name="coordination-watch")
            group.create_task(self._keep(client, kept_at), name="coordination-lease")

    async def _keep(self, client: etcd.Etcd, kept_at: float) -> None:
        """Keepalive at TTL/3 (with the agent's heartbeat), node records as they change.

        A call that no member answers in time (one slow fsync on a loaded disk, a member
        restarting) is tried again while the lease has more than a third of its TTL left: the agent
        stays available, since its records and slots still stand; past that it gives up, before
        other agents could see its lease expire while it still counted on it."""
        interval = self.ttl_s / 3
        next_beat = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_beat:
                    if await client.keepalive(self._lease) <= 0:
                        raise etcd.EtcdError(LEASE_EXPIRED)
                    kept_at = now
                    await client.put(
                        self._key("agents", self.identity.host), self.identity.record().encode(), self._lease
                    )
                    next_beat = now + interval
                    if not self.available:
                        self.available, self.detail = True, "ok"
                        self.on_change()
                if self._dirty.is_set():
                    self._dirty.clear()
                    try:
                        await self._write_nodes(client)
                    except etcd.EtcdUnavailable:
                        self._dirty.set()  # written at the next try
                        raise
                    await asyncio.sleep(NODE_WRITE_MIN_S)
            except etcd.EtcdUnavailable as err:
                if time.monotonic() + RETRY_S >= kept_at + self.ttl_s * 2 / 3:
                    raise
                self.retries += 1
                log.info("coordination_retry", error=str(err))
                await asyncio.sleep(RETRY_S)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - time.monotonic())):
                    await self._dirty.wait()

    async def _write_nodes(self, client: etcd.Etcd) -> None:
        """The node records that changed, and the agent's own when its file or its outdated nodes
        did (a rolling change must reach the other agents at once, not at the next heartbeat)."""
        ops = []
        written = {}
        identity = self._identity_mark()
        if identity != self._identity_written:
            ops.append(
                etcd.put_request(
                    self._key("agents", self.identity.host), self.identity.record().encode(), self._lease
                )
            )
        for name, doc in self._docs.items():
            mark = significant(doc)
            if self._written.get(name) != mark:
                ops.append(etcd.put_request(self._key("nodes", name), json.dumps(doc).encode(), self._lease))
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

    async def _watch(self, client: etcd.Etcd, start: int) -> None:
        revision = start
        while True:
            try:
                async for batch in client.watch(self.root, revision):
                    puts = [e.kv for e in batch.events if not e.deleted]
                    deletes = [e.kv.key for e in batch.events if e.deleted]
                    if batch.events:
                        self.view = apply(self.view, self.root, puts, deletes, batch.revision)
                        self.on_change()
                    revision = max(revision, batch.revision + 1)
            except etcd.Compacted:
                snapshot = await client.range(self.root, prefix=True)
                self.view = apply(self.view, self.root, snapshot.kvs, (), snapshot.revision, reset=True)
                revision = snapshot.revision + 1
            except (aiohttp.ClientError, OSError, ValueError, etcd.EtcdUnavailable) as err:
                raise etcd.EtcdUnavailable(f"watch: {err}") from None

    async def close(self) -> None:
        """A clean exit: revoke the lease, so every record and slot of this agent goes at once
        (and the session ends: no reconnection after its lease is gone)."""
        self._closing = True
        if self._client is not None and self._lease:
            with contextlib.suppress(etcd.EtcdError):
                await self._client.revoke(self._lease)
            self._lease = 0

    # -- disruption slots (executing.Slots) ----------------------------------------------------------

    async def acquire(self, node: str, role: str, reason: str) -> None:
        """Take `node`'s slot with one txn that re-checks the budget at one revision of the store."""
        client = self._client
        if client is None or not self.available or not self._lease:
            raise SlotRefused(describe([COORDINATION_UNAVAILABLE]))
        key = self._key("disruptions", node)
        try:
            for _attempt in range(SLOT_ATTEMPTS):
                _ok, revision, (nodes, slots) = await client.txn(
                    [],
                    [
                        {"request_range": etcd.range_request(self._key("nodes", ""), True)},
                        {"request_range": etcd.range_request(self._key("disruptions", ""), True)},
                    ],
                )
                seen = apply(StoreView(), self.root, (*nodes.kvs, *slots.kvs), (), revision, reset=True)
                if seen.slots.get(node, {}).get("host") == self.identity.host:
                    self._held.add(node)
                    return
                down = self._down(seen.nodes)
                budget = Budget(
                    self.max_unavailable,
                    True,
                    True,
                    {},
                    {n: str(s.get("host")) for n, s in seen.slots.items()},
                )
                who = blockers(node, role, down, budget)
                if who is not None:
                    raise SlotRefused(describe(who))
                slot = json.dumps(
                    {"host": self.identity.host, "reason": reason, "since": now_text()}
                ).encode()
                taken, _rev, _ranges = await client.txn(
                    [
                        etcd.absent(key),
                        etcd.unchanged_since(self._key("nodes", ""), revision),
                        etcd.unchanged_since(self._key("disruptions", ""), revision),
                    ],
                    [etcd.put_request(key, slot, self._lease)],
                )
                if taken:
                    self._held.add(node)
                    log.info("disruption_slot_taken", node=node, reason=reason)
                    return
        except etcd.EtcdError as err:
            raise SlotRefused(
                describe([f"{COORDINATION_UNAVAILABLE} ({err})"])
            ) from None
        raise SlotRefused(describe(["the cluster changed while the slot was being taken"]))

    async def release(self, releasable: frozenset[str]) -> None:
        """Give back the slots of nodes that are healthy with their shards again."""
        client = self._client
        for node in sorted(self._held & releasable):
            if client is None:
                return
            key = self._key("disruptions", node)
            mine = {"key": etcd.b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(self._lease)}
            with contextlib.suppress(etcd.EtcdError):
                await client.txn([mine], [etcd.delete_request(key)])
                self._held.discard(node)
                log.info("disruption_slot_released", node=node)

    # -- pauses (README, Maintenance) -----------------------------------------------------------------

    async def set_paused(self, nodes: Sequence[str], paused: bool, everything: bool = False) -> None:
        client = self._client
        if client is None:
            raise etcd.EtcdUnavailable("not connected")
        if everything:
            ops = [
                etcd.put_request(self._key("paused"), b"{}")
                if paused
                else etcd.delete_request(self._key("paused"))
            ]
        else:
            value = json.dumps({"since": now_text()}).encode()
            ops = [
                etcd.put_request(self._key("paused", n), value)
                if paused
                else etcd.delete_request(self._key("paused", n))
                for n in nodes
            ]
        await client.txn([], ops)
