"""A snapshot of an etcd member's whole keyspace, through etcd's own API: the maintenance Snapshot
call of its JSON gateway (`POST /v3/maintenance/snapshot` on the client port, which CeresMeta's
embedded etcd serves), and etcd's `GET /health` to choose a healthy member first.

The gateway streams one JSON object a line, `{"result": {"blob": <base64>, "remaining_bytes": n}}`;
the blobs, in order, are the member's database (down to `remaining_bytes` 0) followed by its
SHA-256 (32 bytes), exactly the file `etcdctl snapshot save` writes, which `etcdutl` checks on
restore. The digest is checked here too, so a stream cut short or damaged on the way is refused.
Bytes are handed on as they come (a database may be large); a read that stalls longer than the
timeout fails the snapshot.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Final

import aiohttp

from ceres_supervisor.adapters.etcd import EtcdUnavailable

MAX_LINE: Final = 16 << 20
"""One message of the stream (etcd sends 32 KiB blobs; base64 and JSON make them ~44 KiB)."""


async def health(session: aiohttp.ClientSession, endpoint: str, timeout_s: float) -> str | None:
    """None when the member says it is healthy (`GET /health`: a leader, no alarm), else why not."""
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session.get(endpoint + "/health", timeout=timeout) as response:
            raw = await response.content.read(64 * 1024)
        doc = json.loads(raw)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}" if str(err) else "timed out"
    if isinstance(doc, dict) and doc.get("health") == "true":
        return None
    return f"not healthy: {raw[:200].decode(errors='replace')}"


async def stream(session: aiohttp.ClientSession, endpoint: str, timeout_s: float) -> AsyncIterator[bytes]:
    """The member's snapshot, chunk by chunk. Raises EtcdUnavailable when the member cannot give it
    whole (an error message in the stream, a broken or stalled connection, a stream that ends
    before its last byte)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    digest = _Digest()
    try:
        async with session.post(endpoint + "/v3/maintenance/snapshot", json={}, timeout=timeout) as response:
            if response.status != 200:
                body = (await response.content.read(4096)).decode(errors="replace")
                raise EtcdUnavailable(f"snapshot: HTTP {response.status}: {body[:200]}")
            buffer = b""
            async for piece in response.content.iter_any():
                buffer += piece
                if len(buffer) > MAX_LINE and b"\n" not in buffer:
                    raise EtcdUnavailable("snapshot: a message of the stream is too large")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield digest.add(*_decode(line))
            if buffer.strip():
                yield digest.add(*_decode(buffer))
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise EtcdUnavailable(f"snapshot from {endpoint}: {type(err).__name__}: {err}") from None
    problem = digest.problem()
    if problem is not None:
        raise EtcdUnavailable(f"snapshot from {endpoint}: {problem}")


class _Digest:
    """Follows the stream: the database's blobs down to `remaining_bytes` 0, then its SHA-256."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.data_done = False
        self.sent: bytes | None = None

    def add(self, blob: bytes, remaining: int) -> bytes:
        if not self.data_done:
            self.hasher.update(blob)
            self.data_done = remaining == 0
        elif self.sent is None:
            self.sent = blob
        else:
            raise EtcdUnavailable("snapshot: more data after its digest")
        return blob

    def problem(self) -> str | None:
        if self.sent is None:
            return "the stream ended before its last byte (no digest)"
        if self.sent != self.hasher.digest():
            return "the database does not match the digest the member sent with it"
        return None


def _decode(line: bytes) -> tuple[bytes, int]:
    """(the blob's bytes, the bytes the member says remain after it)."""
    try:
        message = json.loads(line)
    except ValueError as err:
        raise EtcdUnavailable(f"snapshot: not a message of the stream: {err}") from None
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        raise EtcdUnavailable(f"snapshot: {str(message)[:200]}")
    try:
        blob = base64.b64decode(result.get("blob") or "", validate=True)
    except (binascii.Error, TypeError) as err:
        raise EtcdUnavailable(f"snapshot: a blob is not base64: {err}") from None
    left = result.get("remaining_bytes")
    try:
        remaining = int(str(left)) if left is not None else 0
    except ValueError:
        raise EtcdUnavailable(f"snapshot: remaining_bytes {left!r}") from None
    return blob, remaining
