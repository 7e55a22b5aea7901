"""What an agent writes to the store besides its own records: disruption slots (each taken by one
txn that re-checks the budget), cluster-wide claims (one rolling operation, one scheduled backup)
and the operator's pause records. A part of `Coordinator`, which holds the session they need (its
client, its lease, its fresh view): see `coordinator` for the keys and the rules of freshness.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog

from ceres_supervisor.adapters import etcd
from ceres_supervisor.cluster.view import Identity, StoreView, apply, now_text, puts, settled_slots
from ceres_supervisor.decisions.budget import COORDINATION_UNAVAILABLE, Budget, blockers, describe
from ceres_supervisor.model.errors import SlotRefused

log = structlog.get_logger(__name__)

SLOT_ATTEMPTS: Final = 3


class StoreWrites:
    """Slots, claims and pauses, written through the session of the `Coordinator` this is part of."""

    root: bytes
    identity: Identity
    max_unavailable: int
    connected: bool
    _client: etcd.Store | None
    _lease: int
    _held: set[str]

    @property
    def available(self) -> bool:
        raise NotImplementedError

    @property
    def why_unavailable(self) -> str:
        raise NotImplementedError

    def _key(self, kind: str, name: str = "") -> bytes:
        raise NotImplementedError

    def _down(self, docs: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str | None]]:
        raise NotImplementedError

    def _lease_to_write(self) -> int:
        """The lease a record is written under. None once close() revoked it: a request built after
        that would carry lease 0, which etcd takes as "no lease", and the key would outlive the
        agent for good (a slot holding the budget for ever)."""
        if not self._lease:
            raise etcd.EtcdUnavailable("no lease: the session was closed")
        return self._lease

    # -- disruption slots (executor.Slots) -----------------------------------------------------------

    async def acquire(self, node: str, role: str, reason: str) -> None:
        """Take `node`'s slot with one txn that re-checks the budget at one revision of the store:
        it fails if any key it read changed or vanished (an agent whose lease expired in between
        takes its records with it: its nodes then count as down), or a new one appeared."""
        client = self._client
        if client is None or not self.available or not self._lease:
            raise SlotRefused(describe([COORDINATION_UNAVAILABLE]))
        key = self._key("disruptions", node)
        prefixes = [self._key("nodes", ""), self._key("disruptions", ""), self._key("agents", "")]
        try:
            for _attempt in range(SLOT_ATTEMPTS):
                _ok, revision, ranges = await client.txn(
                    [], [{"request_range": etcd.range_request(p, True)} for p in prefixes]
                )
                read = [kv for r in ranges for kv in r.kvs]
                seen = apply(StoreView(), self.root, puts(read), revision, reset=True)
                settled = settled_slots(seen)
                mine = seen.slots.get(node, {}).get("host") == self.identity.host
                if mine and node not in settled:
                    self._held.add(node)  # a retry of the stop it was taken for
                    return
                # A new stop, or one more of a node started again since its slot was taken (down again
                # by itself, it counted by its record meanwhile): the budget is checked again and the
                # slot written anew, so it blocks the others until this stop is over too.
                budget = Budget(
                    self.max_unavailable,
                    True,
                    True,
                    {},
                    {n: str(s.get("host")) for n, s in seen.slots.items()},
                    settled=settled,
                )
                who = blockers(node, role, self._down(seen.nodes), budget)
                if who is not None:
                    raise SlotRefused(describe(who))
                slot = json.dumps(
                    {"host": self.identity.host, "reason": reason, "since": now_text()}
                ).encode()
                compare = [] if mine else [etcd.absent(key)]
                compare += [etcd.unchanged_since(p, revision) for p in prefixes]
                compare += [etcd.unchanged(kv.key, kv.mod_revision) for kv in read]
                taken, _rev, _ranges = await client.txn(
                    compare, [etcd.put_request(key, slot, self._lease_to_write())]
                )
                if taken:
                    self._held.add(node)
                    log.info("disruption_slot_taken", node=node, reason=reason)
                    return
        except etcd.EtcdError as err:
            raise SlotRefused(describe([f"{COORDINATION_UNAVAILABLE} ({err})"])) from None
        raise SlotRefused(describe(["the cluster changed while the slot was being taken"]))

    async def release(self, releasable: frozenset[str]) -> None:
        """Give back the slots of nodes that are healthy with their shards again."""
        client = self._client
        for node in sorted(self._held & releasable):
            if client is None:
                return
            key = self._key("disruptions", node)
            with contextlib.suppress(etcd.EtcdError):
                await client.txn([self._mine(key)], [etcd.delete_request(key)])
                self._held.discard(node)
                log.info("disruption_slot_released", node=node)

    def _mine(self, key: bytes) -> dict[str, str]:
        return {"key": etcd.b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(self._lease)}

    # -- cluster-wide claims (one rolling operation, one scheduled backup) ------------------------------

    async def claim(self, name: str, doc: Mapping[str, Any]) -> str | None:
        """Hold `name` for this agent, bound to its lease. None when this agent holds it (now or
        already); else the host that does. Raises etcd.EtcdError when the store cannot be reached."""
        client = self._client
        if client is None or not self._lease or not self.connected:
            raise etcd.EtcdUnavailable(self.why_unavailable)
        key = self._key(name)
        value = json.dumps({**doc, "host": self.identity.host, "since": now_text()}).encode()
        taken, _rev, ranges = await client.txn(
            [etcd.absent(key)],
            [etcd.put_request(key, value, self._lease)],
            [{"request_range": etcd.range_request(key)}],
        )
        if taken:
            return None
        holders = [kv for r in ranges for kv in r.kvs]
        if holders and holders[0].lease == self._lease:
            return None
        try:
            held_by = json.loads(holders[0].value).get("host") if holders else None
        except ValueError:
            held_by = None
        return str(held_by or "another agent")

    async def update_claim(self, name: str, doc: Mapping[str, Any]) -> bool:
        """Rewrite a claim this agent holds (what it says changed, e.g. a halted upgrade); False when
        it does not hold it. Raises etcd.EtcdError when the store cannot be reached."""
        client = self._client
        if client is None or not self._lease:
            return False
        key = self._key(name)
        value = json.dumps({"since": now_text(), **doc, "host": self.identity.host}).encode()
        taken, _rev, _ranges = await client.txn(
            [self._mine(key)], [etcd.put_request(key, value, self._lease)]
        )
        return taken

    async def unclaim(self, name: str) -> None:
        client = self._client
        if client is None or not self._lease:
            return
        key = self._key(name)
        with contextlib.suppress(etcd.EtcdError):
            await client.txn([self._mine(key)], [etcd.delete_request(key)])

    # -- pauses -----------------------------------------------------------------------------------------

    async def write_pauses(
        self, nodes: Sequence[str], paused: bool, everything: bool, resumed: Sequence[str] = ()
    ) -> int:
        """Pause records: the whole cluster (`everything`) or `nodes`; with `resumed`, also explicit
        resumes of those nodes (a `resume --all` clears every node's pause as well). Returns the
        store's revision after the write."""
        client = self._client
        if client is None or not self.connected:
            raise etcd.EtcdUnavailable(self.why_unavailable)
        record = {"since": now_text(), "by": self.identity.host}
        ops = []
        if everything:
            ops.append(
                etcd.put_request(self._key("paused"), json.dumps({**record, "paused": paused}).encode())
            )
        for name in nodes:
            ops.append(
                etcd.put_request(self._key("paused", name), json.dumps({**record, "paused": paused}).encode())
            )
        for name in resumed:
            ops.append(
                etcd.put_request(self._key("paused", name), json.dumps({**record, "paused": False}).encode())
            )
        _ok, revision, _ranges = await client.txn([], ops)
        return revision

    async def restore_pauses(self, nodes: Sequence[str], everything: bool) -> int:
        """Pause records this agent's file holds and the store has none of (it came back empty):
        each written only where no record exists, so a resume another agent wrote meanwhile, not
        seen here yet, is never overwritten. Returns the store's revision after the last write."""
        client = self._client
        if client is None or not self.connected:
            raise etcd.EtcdUnavailable(self.why_unavailable)
        value = json.dumps({"since": now_text(), "by": self.identity.host, "paused": True}).encode()
        keys = [self._key("paused")] if everything else []
        keys += [self._key("paused", name) for name in nodes]
        revision = 0
        for key in keys:
            _ok, revision, _ranges = await client.txn([etcd.absent(key)], [etcd.put_request(key, value)])
        return revision
