"""Health, readiness and lease checks over HTTP (aiohttp), and the task that schedules them.

- CeresDB liveness: `GET /` on `http_port` answers `{"status":"ok"}`.
- CeresMeta member liveness: etcd `GET /health` on the client port and the version's HTTP health
  route, which CeresMeta never forwards: every member is asked about itself.
- The meta leader: CeresMeta's leader key in etcd (`/members/leader` up to 1.2.6,
  `<root>/members/leader` from 1.2.7), a protobuf `Member{name, id, endpoint}`. Routes CeresMeta
  forwards to its leader (`/api/v1/clusters`, `getNodeShards`) go to the leader only: a follower
  forwards to the leader's host with its own HTTP port, which on a shared machine is itself, and
  the real server then recurses without limit (`reference/ceres-interfaces.md` 2.6).
- Leases: one range over `<root>/<cluster>/shards/` through etcd's JSON gateway (each lock's
  value, a protobuf `ShardLockValue`, and its lease), and the topology from the leader.

Probes never raise: every failure becomes a result with a detail a person can read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog

from ceres_supervisor.adapters.bodies import read_body
from ceres_supervisor.decisions.targets import Target
from ceres_supervisor.desired.containers import DesiredNode
from ceres_supervisor.model.observed import LeaseView, MetaLeader, MetaMemberProbe, ProbeResult, ShardLock

log = structlog.get_logger(__name__)

FAST_INTERVAL_S: Final = 0.1
"""Probe interval for nodes that are starting and for the leader while meta is not ready."""
LEASE_FAST_INTERVAL_S: Final = 1.0
"""Lease reading interval while some node waits for its shards (one etcd range, one meta call)."""
_MAX_BODY: Final = 1 << 20


# --- protobuf, the two messages the supervisor reads -----------------------------------------------


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while i < len(data) and shift < 64:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7
    raise ValueError("truncated varint")


def protobuf_fields(data: bytes) -> dict[int, bytes | int]:
    """The top-level fields of a protobuf message: varints as int, length-delimited as bytes
    (the last occurrence wins). Raises ValueError on anything malformed."""
    fields: dict[int, bytes | int] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number], i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            fields[number], i = data[i : i + length], i + length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def _text(fields: dict[int, bytes | int], number: int) -> str | None:
    value = fields.get(number)
    if not isinstance(value, bytes):
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def decode_shard_lock(value: bytes) -> str | None:
    """protobuf `ShardLockValue { string node_name = 1; }` -> node_name (None if malformed)."""
    try:
        return _text(protobuf_fields(value), 1)
    except ValueError:
        return None


def decode_member(value: bytes) -> tuple[str, str] | None:
    """protobuf `metastoragepb.Member { string name = 1; uint64 id = 2; string endpoint = 3; }`
    -> (name, endpoint), or None if malformed."""
    try:
        fields = protobuf_fields(value)
    except ValueError:
        return None
    name, endpoint = _text(fields, 1), _text(fields, 3)
    return (name, endpoint) if name is not None and endpoint is not None else None


# --- HTTP -----------------------------------------------------------------------------------------


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


ProbeErrors = (aiohttp.ClientError, TimeoutError, OSError)


async def _get_json(
    session: aiohttp.ClientSession, method: str, url: str, timeout_s: float, body: object = None
) -> tuple[int, Any]:
    async with asyncio.timeout(timeout_s), session.request(method, url, json=body) as response:
        try:
            raw = await read_body(response.content, _MAX_BODY)
        except ValueError as err:
            return response.status, str(err)
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw[:200].decode(errors="replace")


def _now() -> tuple[float, datetime]:
    return time.monotonic(), datetime.now(UTC)


def http_base(node: DesiredNode) -> str:
    return f"http://{node.host}:{node.ports['http']}"


def etcd_base(node: DesiredNode) -> str:
    return f"http://{node.host}:{node.ports['client']}"


async def etcd_range(
    session: aiohttp.ClientSession, node: DesiredNode, key: bytes, timeout_s: float, prefix: bool = False
) -> list[dict[str, Any]]:
    """The kvs of one etcd range through the JSON gateway; raises on any failure."""
    body = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(_prefix_end(key))
    status, answer = await _get_json(session, "POST", f"{etcd_base(node)}/v3/kv/range", timeout_s, body)
    if status != 200 or not isinstance(answer, dict):
        raise aiohttp.ClientError(f"etcd range answered {status}")
    kvs = answer.get("kvs") or []
    return [kv for kv in kvs if isinstance(kv, dict)] if isinstance(kvs, list) else []


async def probe_ceresdb(
    session: aiohttp.ClientSession, node: DesiredNode, timeout_s: float, run_id: str = ""
) -> ProbeResult:
    started = time.monotonic()
    try:
        status, body = await _get_json(session, "GET", f"{http_base(node)}/", timeout_s)
        ok = status == 200 and isinstance(body, dict) and body.get("status") == "ok"
        detail = f"GET / {status}" if ok else f"GET / {status}: {str(body)[:120]}"
    except ProbeErrors as err:
        ok, detail = False, f"GET /: {_describe(err)}"
    at, wall = _now()
    return ProbeResult(ok, detail, at, wall, at - started, run_id)


async def probe_member(
    session: aiohttp.ClientSession, node: DesiredNode, health_path: str, timeout_s: float, run_id: str = ""
) -> MetaMemberProbe:
    """One meta member about itself: its etcd and its HTTP health route (never forwarded)."""
    started = time.monotonic()

    async def etcd_health() -> bool:
        try:
            _s, body = await _get_json(session, "GET", f"{etcd_base(node)}/health", timeout_s)
        except ProbeErrors:
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    async def alive() -> tuple[bool, str]:
        try:
            status, _body = await _get_json(session, "GET", http_base(node) + health_path, timeout_s)
        except ProbeErrors as err:
            return False, f"GET {health_path}: {_describe(err)}"
        return status == 200, f"GET {health_path} {status}"

    etcd_ok, (is_alive, detail) = await asyncio.gather(etcd_health(), alive())
    at, wall = _now()
    if is_alive and not etcd_ok:
        detail += "; etcd /health not ok"
    return MetaMemberProbe(ProbeResult(is_alive, detail, at, wall, at - started, run_id), etcd_ok)


async def flush_memtable(session: aiohttp.ClientSession, node: DesiredNode, timeout_s: float) -> str:
    """CeresDB's `POST /debug/flush_memtable` (before a planned stop): what it answered, in short.
    Raises one of ProbeErrors when it cannot be asked."""
    status, body = await _get_json(session, "POST", f"{http_base(node)}/debug/flush_memtable", timeout_s)
    if status == 200 and isinstance(body, dict):
        done, failed = body.get("success") or [], body.get("failed") or []
        if isinstance(done, list) and isinstance(failed, list):
            return f"{len(done)} tables flushed, {len(failed)} failed"
    return f"HTTP {status}: {str(body)[:120]}"


def member_by_endpoint(members: Sequence[DesiredNode], endpoint: str) -> DesiredNode | None:
    """The meta node whose advertise-client URL (`http://host:client_port`) is `endpoint`."""
    target = endpoint.split(",", 1)[0].strip().rstrip("/").removeprefix("http://").removeprefix("https://")
    return next((m for m in members if f"{m.host}:{m.ports['client']}" == target), None)


async def read_leader(
    session: aiohttp.ClientSession,
    members: Sequence[DesiredNode],
    leader_key: bytes,
    cluster: str,
    timeout_s: float,
) -> MetaLeader:
    """Who holds CeresMeta's leader key, and whether that member lists the cluster."""
    errors: list[str] = []
    for member in members:
        try:
            kvs = await etcd_range(session, member, leader_key, timeout_s)
        except ProbeErrors as err:
            errors.append(f"{member.name}: {_describe(err)}")
            continue
        at, _wall = _now()
        if not kvs:
            return MetaLeader(at, None, False, f"no leader key {leader_key.decode()} yet")
        decoded = decode_member(base64.b64decode(kvs[0].get("value", "")))
        if decoded is None:
            return MetaLeader(at, None, False, f"leader key {leader_key.decode()} does not decode")
        name, endpoint = decoded
        leader = member_by_endpoint(members, endpoint)
        if leader is None:
            return MetaLeader(at, None, False, f"leader {name} at {endpoint} is not a meta node of the file")
        return MetaLeader(at, leader.name, await lists_cluster(session, leader, cluster, timeout_s), endpoint)
    at, _wall = _now()
    return MetaLeader(at, None, False, "cannot read the leader key: " + "; ".join(errors))


async def lists_cluster(
    session: aiohttp.ClientSession, leader: DesiredNode, cluster: str, timeout_s: float
) -> bool:
    try:
        status, body = await _get_json(session, "GET", f"{http_base(leader)}/api/v1/clusters", timeout_s)
    except ProbeErrors:
        return False
    data = body.get("data") if isinstance(body, dict) and status == 200 else None
    return isinstance(data, list) and any(isinstance(c, dict) and c.get("Name") == cluster for c in data)


async def read_leases(
    session: aiohttp.ClientSession,
    members: Sequence[DesiredNode],
    leader: DesiredNode | None,
    root: str,
    cluster: str,
    timeout_s: float,
) -> LeaseView:
    """Who holds each shard lock and under which lease (etcd), and meta's topology (leader)."""
    prefix = f"{root}/{cluster}/shards/".encode()
    errors = []
    locks: dict[int, ShardLock] | None = None
    for member in members:
        try:
            kvs = await etcd_range(session, member, prefix, timeout_s, prefix=True)
        except ProbeErrors as err:
            errors.append(f"{member.name}: {_describe(err)}")
            continue
        locks = {}
        for kv in kvs:
            key = base64.b64decode(kv.get("key", "")).decode(errors="replace")
            holder = decode_shard_lock(base64.b64decode(kv.get("value", "")))
            shard = key.rsplit("/", 1)[-1]
            lease = str(kv.get("lease", "0"))
            if holder is not None and shard.isdigit() and lease.isdigit():
                locks[int(shard)] = ShardLock(holder, int(lease))
        break
    at, wall = _now()
    if locks is None:
        return LeaseView(at, wall, error="cannot read shard locks: " + "; ".join(errors))
    if leader is None:
        return LeaseView(at, wall, locks=locks, error="no meta leader known: shard assignment unread")
    try:
        status, body = await _get_json(
            session, "POST", f"{http_base(leader)}/api/v1/getNodeShards", timeout_s, {"clusterName": cluster}
        )
        assigned = node_shards(status, body)
    except ProbeErrors as err:
        return LeaseView(at, wall, locks=locks, error=f"getNodeShards on {leader.name}: {_describe(err)}")
    except ReadingError as err:
        return LeaseView(at, wall, locks=locks, error=f"getNodeShards on {leader.name}: {err}")
    return LeaseView(at, wall, assigned=assigned, locks=locks)


class ReadingError(ValueError):
    """An answer that arrived but cannot be trusted: not a success, or not the shape it should be."""


def node_shards(status: int, body: object) -> dict[str, tuple[int, ...]]:
    """endpoint -> shard ids from CeresMeta's `getNodeShards` answer. Anything but a well-formed
    success is a ReadingError: an empty map would say "no shards assigned", which is a judgement."""
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        detail = body.get("msg") or body.get("error") if isinstance(body, dict) else body
        raise ReadingError(f"HTTP {status}: {str(detail)[:160]}")
    data = body.get("data")
    entries = data.get("NodeShards") if isinstance(data, dict) else None
    if entries is None and isinstance(data, dict) and "NodeShards" in data:
        entries = []  # Go encodes an empty slice of a fresh cluster as null
    if not isinstance(entries, list):
        raise ReadingError("HTTP 200 without data.NodeShards")
    by_node: dict[str, list[int]] = {}
    for entry in entries:
        owner = (entry.get("ShardNode") or {}).get("NodeName") if isinstance(entry, dict) else None
        shard_id = (entry.get("ShardInfo") or {}).get("ID") if isinstance(entry, dict) else None
        if not isinstance(owner, str) or not isinstance(shard_id, int) or isinstance(shard_id, bool):
            raise ReadingError(f"HTTP 200 with a malformed entry: {str(entry)[:160]}")
        by_node.setdefault(owner, []).append(shard_id)
    return {name: tuple(sorted(ids)) for name, ids in by_node.items()}


# --- scheduling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSettings:
    interval_s: float
    timeout_s: float
    health_path: str
    cluster: str
    root: str
    leader_key: bytes
    health_paths: Mapping[str, str] = field(default_factory=dict)
    """Meta members whose container runs another release than the file's (an upgrade under way)
    -> the health route of that release (`/api/v1/healthCheck` up to 1.2.6, `/api/v1/health` from 1.2.7)."""

    def health_path_of(self, member: str) -> str:
        return self.health_paths.get(member, self.health_path)


class Prober:
    """Runs due probes concurrently (one in flight per target) and keeps the latest results.

    `on_change` is called when a result's outcome differs from the previous one, so the reconcile
    loop wakes at once instead of at its next tick. A result whose target was removed or changed
    (another run of the container, a member taken out of the file) while it was in flight is
    dropped.
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
        self.leader: MetaLeader | None = None
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

    def _current(self, target: Target) -> bool:
        now = self.targets.get(target.key)
        return now is not None and (now.kind, now.run_id) == (target.kind, target.run_id)

    def members(self) -> list[DesiredNode]:
        """Meta members, the ones last seen healthy first (so a dead one costs no timeout)."""
        meta = [n for n in self.nodes.values() if n.role == "meta"]
        return sorted(meta, key=lambda m: not (self.meta.get(m.name) and self.meta[m.name].etcd_ok))

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
        try:
            changed = await self._run_probe(target)
            if changed:
                self.on_change()
        except Exception:  # a probe never takes the prober down
            log.exception("probe_failed", target=target.key)
        finally:
            self._in_flight.discard(target.key)
            self._changed.set()

    async def _run_probe(self, target: Target) -> bool:
        s = self.settings
        if target.kind == "leader":
            leader = await read_leader(self.session, self.members(), s.leader_key, s.cluster, s.timeout_s)
            last, self.leader = self.leader, leader
            return last is None or (last.member, last.lists_cluster) != (leader.member, leader.lists_cluster)
        if target.kind == "leases":
            chief = self.nodes.get(self.leader.member) if self.leader and self.leader.member else None
            view = await read_leases(self.session, self.members(), chief, s.root, s.cluster, s.timeout_s)
            before, self.leases = self.leases, view
            return before is None or (before.locks, before.assigned, before.error) != (
                view.locks,
                view.assigned,
                view.error,
            )
        node = self.nodes.get(target.key)
        if node is None:
            return False
        if target.kind == "ceresdb":
            result = await probe_ceresdb(self.session, node, s.timeout_s, target.run_id)
            if not self._current(target):
                return False
            self.on_latency(result.latency_s)
            previous = self.probes.get(target.key)
            self.probes[target.key] = result
            return previous is None or previous.ok != result.ok
        member = await probe_member(
            self.session, node, s.health_path_of(node.name), s.timeout_s, target.run_id
        )
        if not self._current(target):
            return False
        self.on_latency(member.alive.latency_s)
        old = self.meta.get(target.key)
        self.meta[target.key] = member
        self.probes[target.key] = member.alive
        return old is None or (old.alive.ok, old.etcd_ok) != (member.alive.ok, member.etcd_ok)
