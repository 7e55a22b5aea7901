"""Health, readiness and lease checks over HTTP (aiohttp), and the task that schedules them.

- CeresDB liveness: `GET /` on `http_port` answers `{"status":"ok"}`.
- CeresMeta liveness: the version's health route answers 200; readiness adds etcd `GET /health`
  on the client port and `GET /api/v1/clusters` listing the cluster (any member; followers may
  fail to forward, so every member is asked and one answer suffices).
- Leases: one range over `<root>/<cluster>/shards/` through etcd's JSON gateway, decoding the
  protobuf `ShardLockValue`, and the topology from `POST /api/v1/getNodeShards`.

Probes never raise: every failure becomes a result with a detail a person can read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import aiohttp
import structlog

from .desired import DesiredNode
from .observed import LeaseView, MetaMemberProbe, ProbeResult

log = structlog.get_logger(__name__)

FAST_INTERVAL_S: Final = 0.1
LEASE_FAST_INTERVAL_S: Final = 1.0
"""Lease reading interval while some node's lease is lost (one etcd range and one meta call)."""
"""Probe interval for nodes that are starting and for meta while it is not ready."""
_MAX_BODY: Final = 1 << 20


def decode_shard_lock(value: bytes) -> str | None:
    """protobuf `ShardLockValue { string node_name = 1; }` -> node_name (None if malformed)."""
    if value[:1] != b"\x0a":
        return None
    length, shift, i = 0, 0, 1
    while i < len(value) and i < 6:
        byte = value[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    data = value[i : i + length]
    if len(data) != length:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"cannot connect ({err.os_error.strerror if err.os_error else err})"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


async def _get_json(
    session: aiohttp.ClientSession, method: str, url: str, timeout_s: float, body: object = None
) -> tuple[int, Any]:
    async with asyncio.timeout(timeout_s), session.request(method, url, json=body) as response:
        raw = await response.content.read(_MAX_BODY)
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw[:200].decode(errors="replace")


def _now() -> tuple[float, datetime]:
    return time.monotonic(), datetime.now(UTC)


async def probe_ceresdb(
    session: aiohttp.ClientSession, node: DesiredNode, timeout_s: float, run_id: str = ""
) -> ProbeResult:
    started = time.monotonic()
    url = f"http://{node.host}:{node.ports['http']}/"
    try:
        status, body = await _get_json(session, "GET", url, timeout_s)
        ok = status == 200 and isinstance(body, dict) and body.get("status") == "ok"
        detail = f"GET / {status}" if ok else f"GET / {status}: {str(body)[:120]}"
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        ok, detail = False, f"GET /: {_describe(err)}"
    at, wall = _now()
    return ProbeResult(ok, detail, at, wall, at - started, run_id)


async def probe_meta(
    session: aiohttp.ClientSession,
    node: DesiredNode,
    health_path: str,
    cluster: str,
    timeout_s: float,
    run_id: str = "",
) -> MetaMemberProbe:
    started = time.monotonic()
    http = f"http://{node.host}:{node.ports['http']}"

    async def etcd_health() -> bool:
        try:
            _s, body = await _get_json(
                session, "GET", f"http://{node.host}:{node.ports['client']}/health", timeout_s
            )
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    async def alive() -> tuple[bool, str]:
        try:
            status, _body = await _get_json(session, "GET", http + health_path, timeout_s)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return False, f"GET {health_path}: {_describe(err)}"
        return status == 200, f"GET {health_path} {status}"

    async def lists_cluster() -> bool:
        try:
            status, body = await _get_json(session, "GET", f"{http}/api/v1/clusters", timeout_s)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        data = body.get("data") if isinstance(body, dict) and status == 200 else None
        return isinstance(data, list) and any(isinstance(c, dict) and c.get("Name") == cluster for c in data)

    etcd_ok, (is_alive, detail), listed = await asyncio.gather(etcd_health(), alive(), lists_cluster())
    at, wall = _now()
    if is_alive and not etcd_ok:
        detail += "; etcd /health not ok"
    return MetaMemberProbe(ProbeResult(is_alive, detail, at, wall, at - started, run_id), etcd_ok, listed)


async def read_leases(
    session: aiohttp.ClientSession, meta: tuple[DesiredNode, ...], root: str, cluster: str, timeout_s: float
) -> LeaseView:
    """Who holds each shard lock (etcd), and which shards meta assigned to whom (topology)."""
    prefix = f"{root}/{cluster}/shards/".encode()
    errors = []
    locked: dict[int, str] | None = None
    for member in meta:
        url = f"http://{member.host}:{member.ports['client']}/v3/kv/range"
        try:
            status, body = await _get_json(
                session, "POST", url, timeout_s, {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            errors.append(f"{member.name}: {_describe(err)}")
            continue
        if status != 200 or not isinstance(body, dict):
            errors.append(f"{member.name}: etcd range answered {status}")
            continue
        locked = {}
        for kv in body.get("kvs") or []:
            key = base64.b64decode(kv.get("key", "")).decode(errors="replace")
            holder = decode_shard_lock(base64.b64decode(kv.get("value", "")))
            shard = key.rsplit("/", 1)[-1]
            if holder is not None and shard.isdigit():
                locked[int(shard)] = holder
        break
    at, wall = _now()
    if locked is None:
        return LeaseView(at, wall, error="cannot read shard locks: " + "; ".join(errors))
    assigned: dict[str, tuple[int, ...]] = {}
    for member in meta:  # the leader answers; a follower may fail to forward
        url = f"http://{member.host}:{member.ports['http']}/api/v1/getNodeShards"
        try:
            status, body = await _get_json(session, "POST", url, timeout_s, {"clusterName": cluster})
        except (aiohttp.ClientError, TimeoutError, OSError):
            continue
        if status == 200 and isinstance(body, dict) and body.get("status") == "success":
            by_node: dict[str, list[int]] = {}
            for entry in (body.get("data") or {}).get("NodeShards") or []:
                owner = (entry.get("ShardNode") or {}).get("NodeName")
                shard_id = (entry.get("ShardInfo") or {}).get("ID")
                if isinstance(owner, str) and isinstance(shard_id, int):
                    by_node.setdefault(owner, []).append(shard_id)
            assigned = {name: tuple(sorted(ids)) for name, ids in by_node.items()}
            break
    return LeaseView(at, wall, assigned=assigned, locked=locked)


# --- scheduling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One thing to probe. `fast` while starting (or meta not ready): probed every 0.1 s."""

    kind: Literal["ceresdb", "meta", "leases"]
    key: str
    fast: bool = False
    run_id: str = ""


@dataclass(frozen=True)
class ProbeSettings:
    interval_s: float
    timeout_s: float
    health_path: str
    cluster: str
    root: str


class Prober:
    """Runs due probes concurrently (one in flight per target) and keeps the latest results.

    `on_change` is called when a result's outcome differs from the previous one, so the reconcile
    loop wakes at once instead of at its next tick.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: ProbeSettings,
        on_change: Callable[[], None],
        on_latency: Callable[[float], None] = lambda _s: None,
    ) -> None:
        self.on_latency = on_latency
        self.session = session
        self.settings = settings
        self.on_change = on_change
        self.nodes: dict[str, DesiredNode] = {}
        self.targets: dict[str, Target] = {}
        self.probes: dict[str, ProbeResult] = {}
        self.meta: dict[str, MetaMemberProbe] = {}
        self.leases: LeaseView | None = None
        self._due: dict[str, float] = {}
        self._in_flight: set[str] = set()
        self._changed = asyncio.Event()

    def update(self, nodes: dict[str, DesiredNode], targets: list[Target], settings: ProbeSettings) -> None:
        """Called by the reconcile loop after each plan; a target that turned fast is due now."""
        self.nodes, self.settings = nodes, settings
        new = {t.key: t for t in targets}
        for key, target in new.items():
            old = self.targets.get(key)
            if old is None or (target.fast and not old.fast) or target.run_id != old.run_id:
                self._due[key] = 0.0
        for key in set(self.targets) - set(new):
            self._due.pop(key, None)
            self.probes.pop(key, None)
            self.meta.pop(key, None)
        self.targets = new
        self._changed.set()

    def _interval(self, target: Target) -> float:
        if not target.fast:
            return self.settings.interval_s
        return LEASE_FAST_INTERVAL_S if target.kind == "leases" else FAST_INTERVAL_S

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                now = time.monotonic()
                for key, target in list(self.targets.items()):
                    if key not in self._in_flight and self._due.get(key, 0.0) <= now:
                        self._in_flight.add(key)
                        self._due[key] = now + self._interval(target)
                        group.create_task(self._probe(target), name=f"probe-{key}")
                waits = [d for k, d in self._due.items() if k not in self._in_flight and k in self.targets]
                delay = max(0.0, min(waits, default=self.settings.interval_s) - time.monotonic())
                self._changed.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    async def _probe(self, target: Target) -> None:
        s = self.settings
        try:
            if target.kind == "leases":
                meta = tuple(n for n in self.nodes.values() if n.role == "meta")
                leases = await read_leases(self.session, meta, s.root, s.cluster, s.timeout_s)
                last, self.leases = self.leases, leases
                if last is None or (last.locked, last.assigned) != (leases.locked, leases.assigned):
                    self.on_change()
                return
            node = self.nodes.get(target.key)
            if node is None:
                return
            if target.kind == "ceresdb":
                result = await probe_ceresdb(self.session, node, s.timeout_s, target.run_id)
                self.on_latency(result.latency_s)
                previous = self.probes.get(target.key)
                self.probes[target.key] = result
                changed = previous is None or previous.ok != result.ok
            else:
                member = await probe_meta(
                    self.session, node, s.health_path, s.cluster, s.timeout_s, target.run_id
                )
                self.on_latency(member.alive.latency_s)
                old = self.meta.get(target.key)
                self.meta[target.key] = member
                self.probes[target.key] = member.alive
                changed = old is None or (old.alive.ok, old.etcd_ok, old.lists_cluster) != (
                    member.alive.ok,
                    member.etcd_ok,
                    member.lists_cluster,
                )
            if changed:
                self.on_change()
        except Exception:  # a probe never takes the prober down
            log.exception("probe_failed", target=target.key)
        finally:
            self._in_flight.discard(target.key)
            self._changed.set()
