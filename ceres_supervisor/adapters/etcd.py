"""A small etcd v3 client over etcd's own JSON gateway (`/v3/kv/*`, `/v3/lease/*`, `/v3/watch`).

Why the gateway and not a gRPC library: CeresMeta's embedded etcd serves it on the same client
port, aiohttp is already here, and it keeps the agent's idle cost where its target wants it (measured
in bench/RESULTS.md: a gRPC client stack alone adds more resident memory than the whole target
leaves). Every call has a timeout; a call that fails on one member is tried on the next, starting
with the last one that answered; nothing here blocks the event loop. Keys and values are bytes on
our side, base64 on the wire; int64 fields arrive as strings.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp

from ceres_supervisor.adapters.bodies import read_body
from ceres_supervisor.model.errors import CeresError

MAX_ANSWER: Final = 8 << 20


class EtcdError(CeresError):
    """The store answered with an error (or not at all: see EtcdUnavailable)."""


class EtcdUnavailable(EtcdError):
    """No member answered in time: the store is down, unreachable, or without quorum."""


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Range:
    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    revision: int
    events: tuple[WatchEvent, ...]


class Compacted(EtcdError):
    """The watch's start revision was compacted away: read everything again."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def _int(value: object) -> int:
    try:
        return int(str(value or 0))
    except ValueError:
        return 0


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key") or ""),
        value=base64.b64decode(raw.get("value") or ""),
        create_revision=_int(raw.get("create_revision")),
        mod_revision=_int(raw.get("mod_revision")),
        lease=_int(raw.get("lease")),
    )


def _revision(answer: dict[str, Any]) -> int:
    header = answer.get("header")
    return _int(header.get("revision")) if isinstance(header, dict) else 0


def range_request(key: bytes, prefix: bool = False) -> dict[str, str]:
    body = {"key": b64(key)}
    if prefix:
        body["range_end"] = b64(prefix_end(key))
    return body


def put_request(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_request(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def unchanged(key: bytes, mod_revision: int) -> dict[str, str]:
    """Compare: the key still has the mod revision it was read at (a deleted key has none: fails)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


def absent(key: bytes) -> dict[str, str]:
    """Compare: the key does not exist."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def unchanged_since(prefix: bytes, revision: int) -> dict[str, str]:
    """Compare: no key under `prefix` was written after `revision`."""
    return {
        "key": b64(prefix),
        "range_end": b64(prefix_end(prefix)),
        "target": "MOD",
        "result": "LESS",
        "mod_revision": str(revision + 1),
    }


class Store(Protocol):
    """What the coordinator asks of etcd; `Etcd` speaks it to the real thing, the unit tests'
    in-memory double to a dict."""

    @property
    def endpoint(self) -> str: ...
    def other_endpoint(self, than: str) -> str: ...
    async def range(self, key: bytes, prefix: bool = False) -> Range: ...
    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int: ...
    async def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> tuple[bool, int, list[Range]]: ...
    async def grant(self, ttl_s: int) -> int: ...
    async def keepalive(self, lease: int) -> int: ...
    async def revoke(self, lease: int) -> None: ...
    def watch(
        self, prefix: bytes, start_revision: int, endpoint: str | None = None
    ) -> AsyncIterator[WatchBatch]: ...


class Etcd:
    """One client for the members at `endpoints` (`http://host:port`), failing over between them."""

    def __init__(self, session: aiohttp.ClientSession, endpoints: Sequence[str], timeout_s: float) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.session = session
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._first = 0

    @property
    def endpoint(self) -> str:
        """The member that answered last (tried first next time)."""
        return self.endpoints[self._first % len(self.endpoints)]

    def other_endpoint(self, than: str) -> str:
        """The member after `than` (where a stalled watch goes next)."""
        n = len(self.endpoints)
        index = self.endpoints.index(than) if than in self.endpoints else -1
        return self.endpoints[(index + 1) % n]

    def _order(self) -> list[str]:
        n = len(self.endpoints)
        return [self.endpoints[(self._first + i) % n] for i in range(n)]

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors = []
        for endpoint in self._order():
            try:
                answer = await self._post(endpoint, path, body)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
                errors.append(
                    f"{endpoint}: {type(err).__name__}: {err}" if str(err) else f"{endpoint}: timed out"
                )
                continue
            self._first = self.endpoints.index(endpoint)
            return answer
        raise EtcdUnavailable("; ".join(errors))

    async def _post(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout_s), self.session.post(endpoint + path, json=body) as response:
            raw = await read_body(response.content, MAX_ANSWER, first_line=True)
        first = raw.split(b"\n", 1)[0]  # keepalive streams one object a line; take the first
        answer = json.loads(first) if first.strip() else {}
        if not isinstance(answer, dict):
            raise ValueError("not an etcd answer")
        if response.status != 200 or ("error" in answer and "result" not in answer):
            message = answer.get("message") or answer.get("error") or f"HTTP {response.status}"
            raise aiohttp.ClientError(f"{path}: {message}")
        return answer

    async def range(self, key: bytes, prefix: bool = False) -> Range:
        answer = await self.call("/v3/kv/range", range_request(key, prefix))
        kvs = answer.get("kvs") or []
        return Range(tuple(_kv(kv) for kv in kvs if isinstance(kv, dict)), _revision(answer))

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return _revision(await self.call("/v3/kv/put", put_request(key, value, lease)["request_put"]))

    async def delete(self, key: bytes) -> int:
        return _revision(await self.call("/v3/kv/deleterange", {"key": b64(key)}))

    async def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> tuple[bool, int, list[Range]]:
        """(succeeded, revision, the ranges the taken branch read)."""
        answer = await self.call(
            "/v3/kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)}
        )
        ranges = []
        for response in answer.get("responses") or []:
            read = response.get("response_range") if isinstance(response, dict) else None
            if isinstance(read, dict):
                kvs = read.get("kvs") or []
                ranges.append(Range(tuple(_kv(kv) for kv in kvs if isinstance(kv, dict)), _revision(answer)))
        return bool(answer.get("succeeded")), _revision(answer), ranges

    async def grant(self, ttl_s: int) -> int:
        lease = _int((await self.call("/v3/lease/grant", {"TTL": str(ttl_s)})).get("ID"))
        if not lease:
            raise EtcdError("lease grant returned no ID")
        return lease

    async def keepalive(self, lease: int) -> int:
        """Renew `lease` once; the TTL left, 0 when the lease is gone."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result")
        return _int(result.get("TTL")) if isinstance(result, dict) else 0

    async def revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    async def watch(
        self, prefix: bytes, start_revision: int, endpoint: str | None = None
    ) -> AsyncIterator[WatchBatch]:
        """Every change under `prefix` from `start_revision` on, as long as the stream lives.

        Connects to one member (`endpoint`, else the one that answered last); the caller reconnects
        when it ends or stalls. The member must have a leader (etcd's `hasleader` metadata, which
        the gateway takes from a `Grpc-Metadata-` header): one that loses it cancels the watch
        rather than going quiet. Raises Compacted when the start revision is gone."""
        body = {"create_request": {**range_request(prefix, True), "start_revision": str(start_revision)}}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s)
        url = (endpoint or self.endpoint) + "/v3/watch"
        headers = {"Grpc-Metadata-hasleader": "true"}
        async with self.session.post(url, json=body, timeout=timeout, headers=headers) as response:
            if response.status != 200:
                raise EtcdUnavailable(f"watch answered HTTP {response.status}")
            async for line in response.content:
                if not line.strip():
                    continue
                message = json.loads(line)
                result = message.get("result") if isinstance(message, dict) else None
                if not isinstance(result, dict):
                    raise EtcdUnavailable(f"watch: {str(message)[:200]}")
                if _int(result.get("compact_revision")):
                    raise Compacted(f"revision {start_revision} was compacted")
                if result.get("canceled"):
                    raise EtcdUnavailable(f"watch canceled: {result.get('cancel_reason')}")
                events = tuple(
                    WatchEvent(e.get("type") == "DELETE", _kv(e.get("kv") or {}))
                    for e in result.get("events") or []
                    if isinstance(e, dict)
                )
                yield WatchBatch(_revision(result), events)
        raise EtcdUnavailable("watch stream ended")
