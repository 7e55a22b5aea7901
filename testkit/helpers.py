"""Helpers shared by the Docker-backed tests: waiting with a deadline, free ports, etcd reads."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import random
import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, TypeVar

import docker
from docker.models.containers import Container

from ceres_supervisor.observation.probes import decode_shard_lock, protobuf_fields

T = TypeVar("T")

TEST_LABEL = "io.ceres-supervisor.test"
"""Every container a test starts carries this label; teardown removes them by it."""
SESSION = uuid.uuid4().hex[:8]
"""This test process: the value of TEST_LABEL starts with it, so that a session's safety-net cleanup
removes its own leftovers only (pytest-xdist runs several sessions side by side)."""


def wait_until(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll `predicate` until it returns a truthy value; fail with the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            last = predicate()
        except Exception as err:
            last = f"{type(err).__name__}: {err}"
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval_s)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_range() -> tuple[int, int]:
    """This test process's own slice of [10000, ephemeral low), or of CERES_TEST_PORTS ("LOW-HIGH":
    `make test` runs the pure and the Docker-backed tests beside each other, each in its own
    range): pytest-xdist workers never pick the same port, even between one's check and its
    server's bind."""
    low, high = 10000, min(_ephemeral_low(), 65536) - 1
    given = os.environ.get("CERES_TEST_PORTS", "")
    if given:
        first, _, last = given.partition("-")
        low, high = max(low, int(first)), min(high, int(last))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    width = (high - low) // max(1, count)
    return low + index * width, low + (index + 1) * width - 1


_RECENTLY_GIVEN: collections.deque[int] = collections.deque(maxlen=1024)
"""Ports this process handed out lately: free when checked, but maybe not bound yet by whoever got
them (a cluster file's ports and then its agents' listen ports, from two calls, once collided)."""


def free_ports(count: int) -> list[int]:
    """Ports free right now (bound on 0.0.0.0 to be sure), below the kernel's ephemeral range:
    a port from that range can be taken by any outgoing connection before a server binds it.
    Never one this process handed out lately (see _RECENTLY_GIVEN)."""
    rng = random.Random()
    low, high = _worker_range()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randint(low, high)
        if port in ports or port in _RECENTLY_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
    _RECENTLY_GIVEN.extend(ports)
    return ports


def http_json(url: str, body: dict[str, object] | None = None, timeout_s: float = 2.0) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def etcd_range(client_url: str, prefix: str, timeout_s: float = 10.0) -> dict[str, tuple[bytes, int]]:
    """{key: (value, lease)} of every key under `prefix`, through etcd's JSON gateway.

    The timeout is generous: a linearizable read waits for the store's next commit, which one slow
    fsync on a loaded machine holds up for seconds; the tests observe, they do not judge etcd."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    _status, answer = http_json(
        f"{client_url}/v3/kv/range",
        {"key": _b64(prefix.encode()), "range_end": _b64(end.encode())},
        timeout_s,
    )
    assert isinstance(answer, dict), answer
    return {
        base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")), int(kv.get("lease", 0)))
        for kv in answer.get("kvs", [])
    }


def shard_lock_leases(
    client_url: str, root: str = "/ceresdb", cluster: str = "defaultCluster"
) -> dict[int, tuple[str, int]]:
    """{shard id: (holder endpoint, etcd lease id)} from the shard-lock keys."""
    prefix = f"{root}/{cluster}/shards/"
    return {
        int(k.rsplit("/", 1)[1]): (str(decode_shard_lock(v)), lease)
        for k, (v, lease) in etcd_range(client_url, prefix).items()
    }


def shard_locks(client_url: str, root: str = "/ceresdb", cluster: str = "defaultCluster") -> dict[int, str]:
    """{shard id: holder endpoint} from the shard-lock keys."""
    return {shard: holder for shard, (holder, _lease) in shard_lock_leases(client_url, root, cluster).items()}


CLUSTER_STATES: Final = {0: "Empty", 1: "Prepare", 4: "Stable"}
"""ceresdbproto's `ClusterView.state` values that CeresMeta writes (`clusterpb.ClusterState`)."""


def cluster_view_state(client_url: str, root: str = "/ceresdb") -> str | None:
    """The state of CeresMeta's latest cluster view (`<root>/v1/cluster/<id>/cluster_view/<version>`,
    protobuf field 3), or None when meta has written none. One cluster per meta, as in these tests.
    "Stable" once meta assigned every shard; before that ("Prepare") its topology is what the nodes'
    heartbeats say they opened."""
    keys = etcd_range(client_url, f"{root}/v1/cluster/")
    latest = next((v for k, (v, _l) in keys.items() if k.endswith("/cluster_view/latest_version")), None)
    if latest is None:
        return None
    view = next((v for k, (v, _l) in keys.items() if k.endswith(f"/cluster_view/{latest.decode()}")), None)
    if view is None:
        return None
    state = protobuf_fields(view).get(3, 0)
    return CLUSTER_STATES.get(state, str(state)) if isinstance(state, int) else None


def decode_member(value: bytes) -> tuple[str, int, str]:
    """(name, id, endpoint) of protobuf `metastoragepb.Member { string name = 1; uint64 id = 2;
    string endpoint = 3; int32 leader_priority = 4; }`, decoded strictly: unknown fields, wrong wire
    types or trailing bytes raise ValueError."""
    fields: dict[int, bytes | int] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value_, shift = 0, 0
        while i < len(value):
            byte = value[i]
            i += 1
            value_ |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value_
            shift += 7
        raise ValueError("truncated varint")

    while i < len(value):
        key = varint()
        number, wire = key >> 3, key & 7
        expected = {1: 2, 2: 0, 3: 2, 4: 0}.get(number)
        if expected is None or wire != expected:
            raise ValueError(f"field {number} with wire type {wire} is not in Member")
        if wire == 0:
            fields[number] = varint()
        else:
            length = varint()
            if i + length > len(value):
                raise ValueError("truncated field")
            fields[number], i = value[i : i + length], i + length
    name, ident, endpoint = fields.get(1, b""), fields.get(2, 0), fields.get(3, b"")
    assert isinstance(name, bytes) and isinstance(ident, int) and isinstance(endpoint, bytes)
    return name.decode(), ident, endpoint.decode()


def meta_leader_key(version: str, root: str) -> str:
    """CeresMeta's leader key: `/members/leader` up to 1.2.6, `<root>/members/leader` from 1.2.7."""
    parts = tuple(int(x) for x in version.split("."))
    return "/members/leader" if parts < (1, 2, 7) else f"{root}/members/leader"


def meta_leader(client_url: str, key: str) -> tuple[tuple[str, int, str], int] | None:
    """((name, id, endpoint), lease) of the meta leader key, or None when no leader holds it."""
    found = etcd_range(client_url, key).get(key)
    return (decode_member(found[0]), found[1]) if found else None


def etcd_member_status(client_url: str) -> tuple[int, int]:
    """(this member's id, the etcd leader's id) from /v3/maintenance/status."""
    _status, answer = http_json(f"{client_url}/v3/maintenance/status", {})
    assert isinstance(answer, dict), answer
    return int(answer["header"]["member_id"]), int(answer["leader"])


def node_shards(
    meta_http_url: str, cluster: str = "defaultCluster", timeout_s: float = 2.0
) -> list[tuple[int, str]]:
    """[(shard, node name)] from getNodeShards, in topology order (ask the leader: a follower on a
    shared machine forwards to itself)."""
    status, body = http_json(f"{meta_http_url}/api/v1/getNodeShards", {"clusterName": cluster}, timeout_s)
    assert status == 200 and isinstance(body, dict), (status, body)
    return [(int(s["ShardNode"]["ID"]), str(s["ShardNode"]["NodeName"])) for s in body["data"]["NodeShards"]]


ARTIFACTS = Path(__file__).resolve().parents[1] / "tests" / "artifacts"
"""What a failed test leaves to read: its containers' logs (kept out of git)."""


def save_logs(test: str, containers: list[Container], files: Iterable[Path] = ()) -> Path:
    """Each container's log (stdout and stderr, timestamped) under tests/artifacts/<test>/, and a
    copy of each of `files` (etcd's own log, which meta writes into its data directory)."""
    where = ARTIFACTS / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in test)
    where.mkdir(parents=True, exist_ok=True)
    for path in files:
        with contextlib.suppress(OSError):
            shutil.copyfile(path, where / f"{path.parent.name}-{path.name}")
    for container in containers:
        try:
            text = container.logs(timestamps=True)
        except docker.errors.APIError as err:  # a log we cannot read is said, not fatal
            text = f"(logs unreadable: {err})".encode()
        (where / f"{container.name}.log").write_bytes(text)
    return where
