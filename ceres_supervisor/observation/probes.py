"""Health, readiness and lease checks over HTTP (aiohttp), and the task that schedules them.

- CeresDB liveness: `GET /` on `http_port` answers `{"status":"ok"}`.
- CeresMeta member liveness: etcd `GET /health` on the client port and the version's HTTP health
  route, which CeresMeta never forwards: every member is asked about itself.
- The meta leader: CeresMeta's leader key in etcd (`/members/leader` up to 1.2.6,
  `<root>/members/leader` from 1.2.7), a protobuf `Member{name, id, endpoint}`. Routes CeresMeta
  forwards to its leader (`/api/v1/clusters`, `getNodeShards`) go to the leader only: a follower
  forwards to the leader's host with its own HTTP port, which on a shared machine is itself, and
  the real server then recurses without limit (`docs/real-servers.md` section 4, forwarding).
- Leases: one range over `<root>/<cluster>/shards/` through etcd's JSON gateway (each lock's
  value, a protobuf `ShardLockValue`, and its lease), and the topology from the leader.

Probes never raise: every failure becomes a result with a detail a person can read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog

from ceres_supervisor.adapters.bodies import read_body
from ceres_supervisor.desired.containers import DesiredNode
from ceres_supervisor.model.observed import LeaseView, MetaLeader, MetaMemberProbe, ProbeResult, ShardLock

log = structlog.get_logger(__name__)

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


def debug_shards(status: int, body: object) -> dict[int, str]:
    """shard id -> status from CeresDB's `GET /debug/shards` (from 1.2.5): a JSON array of
    `{"id", "role", "version", "status"}`. Raises ReadingError on anything else."""
    if status != 200 or not isinstance(body, list):
        raise ReadingError(f"HTTP {status}: {str(body)[:120]}")
    shards = {}
    for entry in body:
        shard, state = (entry.get("id"), entry.get("status")) if isinstance(entry, dict) else (None, None)
        if not isinstance(shard, int) or isinstance(shard, bool) or not isinstance(state, str):
            raise ReadingError(f"a malformed entry: {str(entry)[:120]}")
        shards[shard] = state
    return shards


async def probe_ceresdb(
    session: aiohttp.ClientSession,
    node: DesiredNode,
    timeout_s: float,
    run_id: str = "",
    shards_route: bool = False,
) -> ProbeResult:
    """`GET /` answers `{"status":"ok"}`; with `shards_route` (1.2.5+) also which of its shards
    the node itself serves (a lock held is not a shard open: a table open may have failed)."""
    started = time.monotonic()
    served: dict[int, str] | None = None
    try:
        status, body = await _get_json(session, "GET", f"{http_base(node)}/", timeout_s)
        ok = status == 200 and isinstance(body, dict) and body.get("status") == "ok"
        detail = f"GET / {status}" if ok else f"GET / {status}: {str(body)[:120]}"
        if ok and shards_route:
            with contextlib.suppress(*ProbeErrors, ReadingError):  # unread: judged from the locks alone
                url = f"{http_base(node)}/debug/shards"
                served = debug_shards(*await _get_json(session, "GET", url, timeout_s))
    except ProbeErrors as err:
        ok, detail = False, f"GET /: {_describe(err)}"
    at, wall = _now()
    return ProbeResult(ok, detail, at, wall, at - started, run_id, served)


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
