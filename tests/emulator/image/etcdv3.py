"""A minimal client for etcd's v3 JSON gateway (POST /v3/...), standard library only.

Used by both stand-ins inside the images. Keys and values are bytes; the gateway wants them
base64-encoded and returns int64 fields as strings.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request


class EtcdError(Exception):
    """The gateway could not be reached or answered with an error."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


class Client:
    def __init__(self, endpoint: str, timeout_s: float = 2.0) -> None:
        self.endpoint = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
        self.endpoint = self.endpoint.rstrip("/")
        self.timeout_s = timeout_s

    def call(self, path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            f"{self.endpoint}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise EtcdError(f"{path}: HTTP {err.code} {err.read()[:200]!r}") from None
        except (OSError, ValueError, http.client.HTTPException) as err:  # HTTPException: an answer cut short
            raise EtcdError(f"{path}: {err!r}") from None
        # keepalive streams one JSON object per line; take the first.
        first = raw.split(b"\n", 1)[0]
        try:
            answer = json.loads(first)
        except ValueError:
            raise EtcdError(f"{path}: not an etcd answer: {raw[:200]!r}") from None
        if not isinstance(answer, dict):
            raise EtcdError(f"{path}: not an etcd answer: {raw[:200]!r}")
        if "error" in answer and "result" not in answer:
            raise EtcdError(f"{path}: {answer.get('error')}")
        return answer

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, mod_revision) of `key`, or None."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        assert isinstance(kvs, list)
        if not kvs:
            return None
        return _unb64(kvs[0].get("value")), int(kvs[0].get("mod_revision", 0))

    def range_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes, int, int]]:
        """[(key, value, mod_revision, lease)] of every key under `prefix`."""
        return self.range_prefix_at(prefix)[0]

    def range_prefix_at(self, prefix: bytes) -> tuple[list[tuple[bytes, bytes, int, int]], int]:
        """range_prefix, and the store's revision when it was read."""
        answer = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        kvs = answer.get("kvs") or []
        header = answer.get("header") or {}
        assert isinstance(kvs, list) and isinstance(header, dict)
        rows = [
            (
                _unb64(kv.get("key")),
                _unb64(kv.get("value")),
                int(kv.get("mod_revision", 0)),
                int(kv.get("lease", 0)),
            )
            for kv in kvs
        ]
        return rows, int(header.get("revision", 0))

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        body: dict[str, object] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("/v3/kv/put", body)

    def delete(self, key: bytes) -> None:
        self.call("/v3/kv/deleterange", {"key": _b64(key)})

    def create_if_absent(self, key: bytes, value: bytes, lease: int = 0) -> bool:
        """Put `key` only if it does not exist (create_revision == 0). True if it was created."""
        put: dict[str, object] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self.call(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                ],
                "success": [{"request_put": put}],
            },
        )
        return bool(answer.get("succeeded"))

    def txn(self, compare: list[dict[str, object]], success: list[dict[str, object]]) -> bool:
        """One etcd transaction (gateway JSON form); True if the comparisons held."""
        return bool(self.call("/v3/kv/txn", {"compare": compare, "success": success}).get("succeeded"))

    def time_to_live(self, lease: int) -> int:
        """The TTL left on `lease` in seconds; -1 when the lease does not exist (any more)."""
        answer = self.call("/v3/lease/timetolive", {"ID": str(lease)})
        return int(str(answer.get("TTL", -1)))

    def grant(self, ttl_s: int) -> int:
        return int(str(self.call("/v3/lease/grant", {"TTL": str(ttl_s)})["ID"]))

    def revoke(self, lease: int) -> None:
        """Revoke `lease`: every key attached to it is deleted."""
        self.call("/v3/lease/revoke", {"ID": str(lease)})

    def keepalive(self, lease: int) -> int:
        """Renew `lease` once; returns the TTL left (0 or less: the lease is gone)."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result") or {}
        assert isinstance(result, dict)
        return int(result.get("TTL", 0))

    def status(self) -> dict[str, object]:
        return self.call("/v3/maintenance/status", {})

    def members(self) -> list[dict[str, object]]:
        members = self.call("/v3/cluster/member/list", {}).get("members") or []
        assert isinstance(members, list)
        return members


# --- the two protobuf values the supervisor reads from etcd -----------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    """A proto3 string field; empty strings are not written, as Go's and prost's encoders do."""
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data if data else b""


def encode_shard_lock(node_name: str) -> bytes:
    """protobuf `ShardLockValue { string node_name = 1; }`, as CeresDB writes the lock value
    (apache/incubator-horaedb-proto protos/meta_event.proto)."""
    return _string_field(1, node_name)


def encode_member(name: str, member_id: int, endpoint: str) -> bytes:
    """protobuf `metastoragepb.Member { string name = 1; uint64 id = 2; string endpoint = 3;
    int32 leader_priority = 4; }` as CeresMeta's leader writes it (META v1.2.2:server/member/
    member.go Marshal; leader_priority is never set, so never written)."""
    ident = _varint(2 << 3 | 0) + _varint(member_id) if member_id else b""
    return _string_field(1, name) + ident + _string_field(3, endpoint)


def op_put(key: bytes, value: bytes, lease: int = 0) -> dict[str, object]:
    put: dict[str, object] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def key_missing(key: bytes) -> dict[str, object]:
    return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}


def value_equals(key: bytes, value: bytes) -> dict[str, object]:
    return {"key": _b64(key), "result": "EQUAL", "target": "VALUE", "value": _b64(value)}


def decode_member(data: bytes) -> tuple[str, int, str]:
    """(name, id, endpoint) of a Member; raises ValueError if malformed."""
    fields: dict[int, bytes | int] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value, shift = 0, 0
        while i < len(data):
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError("truncated varint")

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number] = varint()
        elif wire == 2:
            length = varint()
            if i + length > len(data):
                raise ValueError("truncated field")
            fields[number], i = data[i : i + length], i + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    name, ident, endpoint = fields.get(1, b""), fields.get(2, 0), fields.get(3, b"")
    if not isinstance(name, bytes) or not isinstance(ident, int) or not isinstance(endpoint, bytes):
        raise ValueError("wrong wire type for a Member field")
    return name.decode(), ident, endpoint.decode()
