"""An in-memory etcd that speaks the coordinator's `Store` interface, for unit tests.

It keeps etcd's semantics where the coordinator depends on them: one global revision, keys with
create/mod revisions and leases, leases that expire on the monotonic clock and take their keys
with them, transactions whose comparisons follow etcd's rules (a range compares every key in it,
an empty range compares a zero key-value: a deleted key's mod revision is 0), and watches that
deliver each change in revision order, from the revision they start at (the changes since then
first, as etcd replays its history; no compaction). Members are names: each client talks to them in order and
fails over, and a test can freeze one (calls through it fail, a watch on it goes quiet).

`Gate` lets a test order the calls of several clients step by step (every interleaving of two
slot acquisitions, say).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ceres_supervisor.adapters.etcd import EtcdUnavailable, KeyValue, Range, WatchBatch, WatchEvent


def _d(text: str | None) -> bytes:
    return base64.b64decode(text or "")


@dataclass
class _Lease:
    ttl_s: int
    expires_at: float


@dataclass
class _Watch:
    start: bytes
    end: bytes
    endpoint: str
    queue: asyncio.Queue[WatchBatch] = field(default_factory=asyncio.Queue)


class MemoryEtcd:
    """The store: shared by every client of a test."""

    def __init__(self, endpoints: Sequence[str] = ("m0", "m1", "m2")) -> None:
        self.endpoints = list(endpoints)
        self.revision = 1
        self.kvs: dict[bytes, KeyValue] = {}
        self.leases: dict[int, _Lease] = {}
        self.frozen: set[str] = set()
        self.watches: list[_Watch] = []
        self.history: list[WatchBatch] = []
        """Every change, one batch each, in revision order: what a watch from an older revision replays."""
        self._next_lease = 100

    def has(self, key: bytes) -> bool:
        """Whether `key` exists now (leases that ran out have taken their keys)."""
        self.expire()
        return key in self.kvs

    # -- time --
    def expire(self) -> None:
        now = time.monotonic()
        for lease_id in [i for i, lease in self.leases.items() if lease.expires_at <= now]:
            self.revoke(lease_id)

    def revoke(self, lease_id: int) -> None:
        self.leases.pop(lease_id, None)
        gone = [k for k, kv in self.kvs.items() if kv.lease == lease_id]
        if gone:
            self.revision += 1
            for key in gone:
                self._delete(key)

    # -- writes (each a new revision) --
    def _put(self, key: bytes, value: bytes, lease: int) -> None:
        old = self.kvs.get(key)
        created = old.create_revision if old else self.revision
        kv = KeyValue(key, value, created, self.revision, lease)
        self.kvs[key] = kv
        self._notify(WatchEvent(False, kv))

    def _delete(self, key: bytes) -> None:
        if self.kvs.pop(key, None) is not None:
            self._notify(WatchEvent(True, KeyValue(key, b"", 0, self.revision, 0)))

    def _notify(self, event: WatchEvent) -> None:
        batch = WatchBatch(self.revision, (event,))
        self.history.append(batch)
        for watch in self.watches:
            if watch.start <= event.kv.key < watch.end:
                watch.queue.put_nowait(batch)

    def in_range(self, key: bytes, end: bytes | None) -> list[KeyValue]:
        if end is None:
            return [self.kvs[key]] if key in self.kvs else []
        return [kv for k, kv in sorted(self.kvs.items()) if key <= k < end]

    def compare(self, c: dict[str, Any]) -> bool:
        key = _d(c["key"])
        end = _d(c["range_end"]) if c.get("range_end") else None
        kvs = self.in_range(key, end) or [KeyValue(key, b"", 0, 0, 0)]
        target = c["target"]
        field_name = {"CREATE": "create_revision", "MOD": "mod_revision", "LEASE": "lease"}[target]
        wanted = int(c.get(field_name if target != "LEASE" else "lease", 0))
        result = c["result"]
        for kv in kvs:
            have = getattr(kv, field_name)
            ok = {
                "EQUAL": have == wanted,
                "LESS": have < wanted,
                "GREATER": have > wanted,
                "NOT_EQUAL": have != wanted,
            }[result]
            if not ok:
                return False
        return True

    def op(self, request: dict[str, Any]) -> Range | None:
        if "request_range" in request:
            r = request["request_range"]
            key = _d(r["key"])
            end = _d(r["range_end"]) if r.get("range_end") else None
            return Range(tuple(self.in_range(key, end)), self.revision)
        if "request_put" in request:
            r = request["request_put"]
            self._put(_d(r["key"]), _d(r["value"]), int(r.get("lease", 0)))
            return None
        if "request_delete_range" in request:
            self._delete(_d(request["request_delete_range"]["key"]))
            return None
        raise ValueError(f"unknown request {request}")


Gate = Callable[[str, str], Awaitable[None]]
"""(client name, operation) -> awaited before the operation runs. A txn is named by its shape:
"read" (ranges only), "guarded" (with comparisons), "write" (unconditional writes)."""


class MemoryClient:
    """One agent's client of `store`: fails over between the members, like `etcd.Etcd`."""

    def __init__(self, store: MemoryEtcd, name: str = "a", gate: Gate | None = None) -> None:
        self.store = store
        self.name = name
        self.gate = gate
        self._first = 0
        self.calls: list[str] = []

    @property
    def endpoint(self) -> str:
        return self.store.endpoints[self._first % len(self.store.endpoints)]

    def other_endpoint(self, than: str) -> str:
        endpoints = self.store.endpoints
        return endpoints[(endpoints.index(than) + 1) % len(endpoints)] if than in endpoints else endpoints[0]

    async def _enter(self, what: str) -> None:
        self.calls.append(what)
        if self.gate is not None:
            await self.gate(self.name, what)
        await asyncio.sleep(0)
        self.store.expire()
        for i in range(len(self.store.endpoints)):
            endpoint = self.store.endpoints[(self._first + i) % len(self.store.endpoints)]
            if endpoint not in self.store.frozen:
                self._first = self.store.endpoints.index(endpoint)
                return
        raise EtcdUnavailable("no member answers")

    async def range(self, key: bytes, prefix: bool = False) -> Range:
        await self._enter("range")
        end = key[:-1] + bytes([key[-1] + 1]) if prefix else None
        return Range(tuple(self.store.in_range(key, end)), self.store.revision)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        await self._enter("put")
        if lease and lease not in self.store.leases:
            raise EtcdUnavailable("requested lease not found")
        self.store.revision += 1
        self.store._put(key, value, lease)
        return self.store.revision

    async def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> tuple[bool, int, list[Range]]:
        reads_only = all("request_range" in r for r in success)
        await self._enter("read" if reads_only and not compare else "guarded" if compare else "write")
        ok = all(self.store.compare(c) for c in compare)
        branch = success if ok else failure
        leases = {int(r["request_put"].get("lease", 0)) for r in branch if "request_put" in r} - {0}
        if leases - set(self.store.leases):  # etcd fails the whole txn, as it does a put
            raise EtcdUnavailable("requested lease not found")
        if any("request_range" not in r for r in branch):
            self.store.revision += 1
        ranges = [r for r in (self.store.op(request) for request in branch) if r is not None]
        return ok, self.store.revision, ranges

    async def grant(self, ttl_s: int) -> int:
        await self._enter("grant")
        self.store._next_lease += 1
        lease_id = self.store._next_lease
        self.store.leases[lease_id] = _Lease(ttl_s, time.monotonic() + ttl_s)
        return lease_id

    async def keepalive(self, lease: int) -> int:
        await self._enter("keepalive")
        held = self.store.leases.get(lease)
        if held is None:
            return 0
        held.expires_at = time.monotonic() + held.ttl_s
        return held.ttl_s

    async def revoke(self, lease: int) -> None:
        await self._enter("revoke")
        self.store.revoke(lease)

    async def watch(
        self, prefix: bytes, start_revision: int, endpoint: str | None = None
    ) -> AsyncIterator[WatchBatch]:
        await self._enter("watch")
        member = endpoint or self.endpoint
        w = _Watch(prefix, prefix[:-1] + bytes([prefix[-1] + 1]), member)
        for past in self.store.history:  # no await until the watch is registered: nothing is missed
            if past.revision >= start_revision and w.start <= past.events[0].kv.key < w.end:
                w.queue.put_nowait(past)
        self.store.watches.append(w)
        try:
            while True:
                batch = await w.queue.get()
                while True:  # a partitioned member: nothing comes through until it heals
                    if member not in self.store.frozen:
                        break
                    await asyncio.sleep(0.05)
                yield batch
        finally:
            self.store.watches.remove(w)
