"""The CeresDB stand-in's shards: their etcd locks, the shard set the heartbeat reports, and
OpenShard as each version handles it.

OpenShard (HDB v1.2.2:server/src/grpc/meta_event_service/mod.rs:249-296; v1.2.7 the same file
:98-101,299-336; v2.0.0 src/server/src/grpc/meta_event_service/mod.rs:102-108,357-378):

1. Take the shard lock: grant a lease of `shard_lock_lease_ttl_sec`, then one create-if-absent txn
   of `<root_path>/<cluster>/shards/<id, 20 digits>` = protobuf ShardLockValue{node_name}. A lock
   that exists fails the open (the previous incarnation's, until its TTL runs out); one this process
   holds is "already granted". 2.0.0 with `enable_shard_lock_fast_reacquire` first reuses a lock whose
   value is this node's own name and whose lease still lives: the predecessor's lease id (HDB v2.0.0:
   src/cluster/src/shard_lock_manager.rs:423-480,512-545).
2. Fetch the shard's tables from meta (GetTablesOfShards through `meta_addr`) and put the shard in
   the shard set; every OpenShard carries the shard view version + 1, newer than the set's, so every
   one fetches again (v1.2.2 cluster/src/cluster_impl.rs:238-288; v1.2.5 :233-284). Up to 1.2.4 a
   failed fetch is the call's error, the lock stays. From 1.2.5 it is retried: 10 more tries 5 s
   apart (future_ext RetryConfig{max_retries: 10, interval: 5s}); 2.0.0 backs off from 1 s up to 5 s
   (randomly, base 2); when every try failed the node panics and exits 1, its locks left to their TTL.
3. Open the shard's tables. Up to 1.2.4 a failure is only the call's error: the shard stays in the
   set, the heartbeat reports it open, and meta never opens it again (catalog/src/table_operator.rs:
   82-93). From 1.2.5 the shard goes Init -> Opening -> Ready and stays Opening when an open fails;
   the heartbeat reports every shard that is not Ready (or Frozen) as PartialOpen (v1.2.5
   cluster/src/shard_set.rs:89-120, meta_client/src/types.rs:170-216,270-284).

Held locks are kept alive every TTL/3; one whose lease expired closes its shard (on_lock_expired) and
the process keeps running. The stand-in has no tables: how long a shard's tables take to open, or
whether they fail, comes from the `open-slow`, `open-fail` and `wal-replay` hooks.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import common
import etcdv3

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
RETRIES = 10


def _log(message: str, **fields: object) -> None:
    common.log("ceresdb", message, **fields)


class MetaError(Exception):
    """A call to meta failed (transport error or an error header)."""


@dataclass
class Shard:
    id: int
    version: int
    status: str = "Init"
    """Init | Opening | Ready | Frozen (meta_client::types::ShardStatus, from 1.2.5)."""

    def info(self) -> dict[str, object]:
        """ShardInfo as serde serialises it (GET /debug/shards)."""
        return {"id": self.id, "role": "Leader", "version": self.version, "status": self.status}

    @property
    def is_opened(self) -> bool:
        return self.status in ("Ready", "Frozen")


def retry_sleeps() -> list[float]:
    """The sleeps between the 11 tries of the fetch: 5 s each up to 1.2.7; 2.0.0's Backoff: the first
    1 s, then uniform in [1, 2 x the previous), at most 5 s (future_ext/src/retry.rs:85-103)."""
    if not V2:
        return [5.0] * RETRIES
    sleeps, upcoming = [], 1.0
    for _ in range(RETRIES):
        sleeps.append(upcoming)
        upcoming = min(5.0, random.uniform(1.0, upcoming * 2))
    return sleeps


class Shards:
    def __init__(
        self,
        endpoint: str,
        root_path: str,
        cluster: str,
        lock_ttl: int,
        etcd_addrs: list[str],
        fast_reacquire: bool,
        meta_call: Callable[..., dict[str, object]],
    ) -> None:
        self.endpoint, self.root_path, self.cluster, self.lock_ttl = endpoint, root_path, cluster, lock_ttl
        self.fast_reacquire = fast_reacquire
        self.meta_call = meta_call
        self.lock = threading.Lock()
        self.locks: dict[int, tuple[int, float]] = {}  # shard -> (lease, last successful keepalive)
        self.set: dict[int, Shard] = {}
        self.tables_open: set[int] = set()
        self.operators: dict[int, threading.Lock] = {}
        self.rpc_timeout_s = max(
            1.0, lock_ttl / 6
        )  # etcd_client rpc_timeout (HDB v2.0.0 cluster/src/config.rs:101-103)
        self.etcd = [etcdv3.Client(a, timeout_s=self.rpc_timeout_s) for a in etcd_addrs]

    def key(self, shard: int) -> bytes:
        return f"{self.root_path}/{self.cluster}/shards/{shard:020d}".encode()

    def call(self, fn_name: str, *args: object) -> object:
        """Try each etcd endpoint in turn (the client connects lazily: wrong addresses fail here)."""
        error: Exception | None = None
        for client in self.etcd:
            try:
                return getattr(client, fn_name)(*args)
            except etcdv3.EtcdError as err:
                error = err
        raise etcdv3.EtcdError(str(error))

    # -- what the heartbeat and /debug/shards report --
    def heartbeat_infos(self) -> list[dict[str, object]]:
        with self.lock:
            shards = sorted(self.set.values(), key=lambda s: s.id)
        infos = []
        for shard in shards:
            info: dict[str, object] = {"id": shard.id, "role": "Leader", "version": shard.version}
            if VERSION >= (1, 2, 5):
                info["status"] = "Ready" if shard.is_opened else "PartialOpen"
            infos.append(info)
        return infos

    def infos(self) -> list[dict[str, object]]:
        with self.lock:
            return [s.info() for s in sorted(self.set.values(), key=lambda s: s.id)]

    def held(self) -> list[int]:
        with self.lock:
            return sorted(self.locks)

    # -- OpenShard --
    def open_shard(self, shard_id: int, version: int) -> str | None:
        """Handle one OpenShard: None on success, else the error meta gets back."""
        _log("Receive open shard request", shard_id=shard_id, version=version)
        error = self.acquire_lock(shard_id)
        if error is not None:
            _log("Failed to open shard", shard_id=shard_id, err=error)
            return error
        if VERSION < (1, 2, 5):
            try:
                shard = self.cluster_open(shard_id, version)
            except MetaError as err:
                error = f"fail to open shards in cluster, cause: Failed to open shard, shard_id:{shard_id}, err:{err}"
                _log("Failed to open shard", shard_id=shard_id, err=error)
                return error
            error = self.open_tables(shard)
        else:
            shard = self.cluster_open_retrying(shard_id, version)
            error = self.open_with_status(shard)
        if error is not None:
            _log("Failed to open shard", shard_id=shard_id, err=error)
            return error
        _log("Handle open shard success", shard_id=shard_id)
        return None

    def cluster_open(self, shard_id: int, version: int) -> Shard:
        with self.lock:
            current = self.set.get(shard_id)
        if current is not None and current.version == version:
            _log("No need to open the exactly same shard again", shard_id=shard_id)
            return current
        if current is not None and current.version > version:
            raise MetaError(f"open a shard with a smaller version, curr:{current.version}, new:{version}")
        answer = self.meta_call("GetTablesOfShards", shard_ids=[shard_id])
        tables = answer.get("tables_by_shard") or {}
        assert isinstance(tables, dict)
        entry = tables.get(str(shard_id))
        if not isinstance(entry, dict):
            raise MetaError("shard tables are missing from the response")
        info = entry.get("shard_info") or {}
        assert isinstance(info, dict)
        shard = Shard(shard_id, int(str(info.get("version", 0))))
        with self.lock:
            self.set[shard_id] = shard
        return shard

    def cluster_open_retrying(self, shard_id: int, version: int) -> Shard:
        """retry_async around cluster.open_shard; every try failed: the node panics (exit 1)."""
        for pause in [*retry_sleeps(), None]:
            try:
                return self.cluster_open(shard_id, version)
            except MetaError as err:
                _log("Open shard failed", id=shard_id, err=err)
            if pause is not None:
                common.sleep_scaled(pause)
        _panic_exit("Open shard failed and we have to panic otherwise this shard wont be assigned again.")
        raise AssertionError("unreachable")

    def open_with_status(self, shard: Shard) -> str | None:
        """Shard::open: one open at a time per shard (try_lock), only when not opened yet."""
        with self.lock:
            operator = self.operators.setdefault(shard.id, threading.Lock())
        if not operator.acquire(blocking=False):
            return f"fail to open shard, id:{shard.id}, cause: Failed to get shard operator lock"
        try:
            with self.lock:
                if shard.is_opened:
                    return f"fail to open shard, id:{shard.id}, cause: Shard is already in opening"
                shard.status = "Opening"
            error = self.open_tables(shard)
            if error is None:
                with self.lock:
                    shard.status = "Ready"
            return error
        finally:
            operator.release()

    def open_tables(self, shard: Shard) -> str | None:
        """The shard's tables, as the hooks say (none exist): open ones again cost nothing."""
        started = time.monotonic()
        with self.lock:
            already = shard.id in self.tables_open
        if not already:
            wait_open_hook(shard.id)
            if open_fault(shard.id).get("fail"):
                cost = int((time.monotonic() - started) * 1000)
                _log(
                    "Open shard finish",
                    shard_id=shard.id,
                    cost_ms=cost,
                    success_count=0,
                    missing_table_count=0,
                    open_table_errs="[Failed to open table]",
                )
                return (
                    f"failed to open shard, cause: Failed to open shard, some tables open failed, shard id:{shard.id}, "
                    "missing_table_count:0, open_err_count:1"
                )
            with self.lock:
                if shard.id in self.set:
                    self.tables_open.add(shard.id)
        _log(
            "Open shard finish",
            shard_id=shard.id,
            cost_ms=int((time.monotonic() - started) * 1000),
            success_count=0,
            missing_table_count=0,
            open_table_errs="[]",
        )
        return None

    # -- the shard lock --
    def acquire_lock(self, shard: int) -> str | None:
        with self.lock:
            if shard in self.locks:
                _log("Shard lock is already granted", shard_id=shard)
                return None
        if common.read_fault() == "freeze-lease":  # the etcd client is stuck: the RPC times out
            time.sleep(self.rpc_timeout_s)
            return f"fail to acquire shard lock, cause: Failed to grant lease, shard_id:{shard}, err: timeout"
        value = etcdv3.encode_shard_lock(self.endpoint)
        lease = self.fast_acquire(shard, value) if self.fast_reacquire else None
        if lease is not None:
            _log("Shard lock is acquired fast", shard_id=shard, lease=lease)
        else:
            try:
                lease = int(str(self.call("grant", self.lock_ttl)))
            except etcdv3.EtcdError as err:
                return (
                    f"fail to acquire shard lock, cause: Failed to grant lease, shard_id:{shard}, err:{err}"
                )
            try:
                created = self.call("create_if_absent", self.key(shard), value, lease)
            except etcdv3.EtcdError as err:
                return f"fail to acquire shard lock, cause: Failed to create lock in etcd, shard_id:{shard}, err:{err}"
            if not created:
                # The granted lease is not revoked: it just runs out (as in the real server).
                return f"fail to acquire shard lock, cause: Failed to execute txn of create lock, shard_id:{shard}."
        with self.lock:
            self.locks[shard] = (lease, time.monotonic())
        return None

    def fast_acquire(self, shard: int, value: bytes) -> int | None:
        """maybe_fast_acquire_lock: the lock key with this node's own value and a live lease."""
        try:
            rows = self.call("range_prefix", self.key(shard))
            assert isinstance(rows, list)
            found = [r for r in rows if r[0] == self.key(shard)]
            if len(found) != 1:
                return None
            _key, current, _rev, lease = found[0]
            if lease == 0 or current != value:
                return None
            ttl = self.call("time_to_live", lease)
            return lease if isinstance(ttl, int) and ttl > 0 else None
        except etcdv3.EtcdError as err:
            _log("Failed to fast acquire lock, try to slow acquire lock", shard_id=shard, err=err)
            return None

    def keepalive_loop(self) -> None:
        interval = self.lock_ttl / 3
        while True:
            time.sleep(min(interval, 1.0))
            now = time.monotonic()
            with self.lock:
                snapshot = dict(self.locks)
            for shard, (lease, last_ok) in snapshot.items():
                if common.read_fault() == "freeze-lease":
                    ttl = -1  # the keepalive is not sent
                elif now - last_ok < interval:
                    continue
                else:
                    try:
                        ttl = int(str(self.call("keepalive", lease)))
                    except Exception:  # an unanswered keepalive, whatever the cause
                        ttl = -1
                with self.lock:
                    if ttl > 0:
                        self.locks[shard] = (lease, now)
                    elif now - last_ok > self.lock_ttl:
                        # on_lock_expired: close the shard; the process keeps running.
                        self.locks.pop(shard, None)
                        self.set.pop(shard, None)
                        self.tables_open.discard(shard)
                        _log("Shard lock is released, try to close the tables and shard", shard_id=shard)


def open_fault(shard: int) -> dict[str, object]:
    """This shard's entry of the `open` hook (its own, else "*")."""
    hook = common.read_hook_json("open")
    entry = hook.get(str(shard), hook.get("*"))
    return entry if isinstance(entry, dict) else {}


def wait_open_hook(shard: int) -> None:
    """`open-slow SHARD S` / `wal-replay S`: the tables take S seconds; `hold`: until cleared."""
    started = time.monotonic()
    while True:
        slow = open_fault(shard).get("slow")
        if not isinstance(slow, int | float) or slow == 0:
            return
        remaining = float("inf") if slow < 0 else started + slow - time.monotonic()
        if remaining <= 0:
            return
        common.wait_hook(min(remaining, 1.0))


def _panic_exit(message: str) -> None:
    """A panic after the panic hook is installed: exit 1 (HDB v1.2.2:common_util/src/panic.rs)."""
    print(f"thread '<unnamed>' panicked at '{message}'", file=sys.stderr, flush=True)
    os._exit(1)
