"""CeresDB / HoraeDB stand-in (see ../README.md for what mirrors which reference section).

Parses its TOML like the real server, connects to meta eagerly (exit 1 when refused or when the
cluster does not exist yet), heartbeats its open shards, and opens the shards meta dispatches by
taking each lock with one create-if-absent txn: a lock that still exists (the previous
incarnation's, until its TTL runs out) fails the open, and the node neither waits nor retries;
meta's scheduler does. Serves GET /, /debug/shards and /debug/flush_memtable on its HTTP port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import tomllib
from http.server import ThreadingHTTPServer

import common
import etcdv3

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
TOP_LEVEL = {"node", "server", "runtime", "logger", "tracing", "query_engine", "limiter",
             "cluster_deployment", "analytic"}
WAL_TYPES = ("RocksDB", "Obkv", "Kafka")
"""`type = "Local"` arrives only in 2.1.0 (HDB v2.1.0:src/wal/src/config.rs:72)."""


def _log(message: str, **fields: object) -> None:
    common.log("ceresdb", message, **fields)


def _parse_panic(message: str) -> None:
    """Config parsing panics before the panic hook is installed: Rust exit code 101."""
    print(f"thread 'main' panicked at 'Failed to parse config.: {message}'", file=sys.stderr, flush=True)
    os._exit(101)


def _panic(message: str) -> None:
    """After the panic hook is installed, any panic exits 1."""
    print(f"thread 'main' panicked at '{message}'", file=sys.stderr, flush=True)
    os._exit(1)


def _table(document: dict[str, object], key: str) -> dict[str, object]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        _parse_panic(f"invalid type for {key}: expected a table")
    return value  # type: ignore[return-value]


class Config:
    """The keys the stand-in reads; unknown nested keys are ignored (reference 3.1)."""

    def __init__(self, path: str) -> None:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as err:
            _parse_panic(str(err))
        for key in document:
            if key not in TOP_LEVEL:
                _parse_panic(f"unknown field `{key}`")
        # The seam for ceres_supervisor/desired/serverschema.py (copied into the image when it exists):
        # wrong types and missing required keys fail like serde; unknown keys only at the top level.
        for segments, kind, message in common.schema_violations(document, "db", VERSION, "ceresdb") or []:
            if kind in ("type", "missing") or (kind == "unknown" and len(segments) <= 1):
                _parse_panic(f"{'.'.join(segments)}: {message}")
        node, server = _table(document, "node"), _table(document, "server")
        addr_env = "HORAEDB_SERVER_ADDR" if V2 else "CERESDB_SERVER_ADDR"
        # Replaces [node] addr verbatim: "ip:8831" becomes the node name "ip:8831:8831".
        self.addr = os.environ.get(addr_env) or str(node.get("addr", "127.0.0.1"))
        self.bind_addr = str(server.get("bind_addr", "127.0.0.1"))
        self.http_port = int(server.get("http_port", 5440))  # type: ignore[call-overload]
        self.grpc_port = int(server.get("grpc_port", 8831))  # type: ignore[call-overload]
        self.mysql_port = int(server.get("mysql_port", 3307))  # type: ignore[call-overload]
        self.postgresql_port = int(server.get("postgresql_port", 5433)) if VERSION >= (1, 2, 6) else None  # type: ignore[call-overload]
        deployment = _table(document, "cluster_deployment")
        self.with_meta = bool(deployment)
        if deployment and deployment.get("mode") not in ("WithMeta", "NoMeta"):
            _parse_panic("cluster_deployment: unknown or missing variant `mode`")
        self.with_meta = deployment.get("mode") == "WithMeta"
        wal = _table(_table(document, "analytic"), "wal")
        if wal and "type" not in wal:
            _parse_panic("analytic.wal: missing field `type`")
        if wal and wal.get("type") not in WAL_TYPES:
            expected = ", ".join(f"`{t}`" for t in WAL_TYPES)
            _parse_panic(f"analytic.wal: unknown variant `{wal.get('type')}`, expected one of {expected}")
        client, etcd = _table(deployment, "meta_client"), _table(deployment, "etcd_client")
        self.cluster_name = os.environ.get("CLUSTER_NAME") or str(client.get("cluster_name", ""))
        meta_env = os.environ.get("HORAEMETA_SERVER_ADDR") if V2 else None
        self.meta_addr = meta_env or str(client.get("meta_addr", "127.0.0.1:8080"))
        try:
            self.lease_s = common.parse_duration(str(client.get("lease", "10s")))
            self.timeout_s = common.parse_duration(str(client.get("timeout", "5s")))
        except ValueError as err:
            _parse_panic(str(err))
        addrs_env = os.environ.get("ETCD_ADDRS") if V2 else None
        self.etcd_addrs = addrs_env.split(",") if addrs_env else list(etcd.get("server_addrs", ["127.0.0.1:2379"]))  # type: ignore[call-overload]
        self.root_path = str(etcd.get("root_path", "/horaedb" if V2 else "/ceresdb"))
        self.lock_ttl = int(etcd.get("shard_lock_lease_ttl_sec", 30))  # type: ignore[call-overload]

    @property
    def endpoint(self) -> str:
        """The node's identity in meta: addr + ":" + grpc_port (reference 3.2 [node])."""
        return f"{self.addr}:{self.grpc_port}"


class Shards:
    """Open shards and their etcd locks (reference 2.4, 2.5).

    OpenShard grants a lease, then takes the lock with one create-if-absent txn; a lock that exists
    fails the open (HDB v1.2.2:server/src/grpc/meta_event_service/mod.rs:196-227,249-250;
    cluster/src/shard_lock_manager.rs:386-421,478-503). Held locks are kept alive every TTL/3; one
    whose lease expired closes its shard and the process keeps running.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.open: dict[int, tuple[int, float]] = {}  # shard -> (lease, last successful keepalive)
        self.shard_locks: dict[int, threading.Lock] = {}
        self.rpc_timeout_s = max(1.0, config.lock_ttl / 6)
        self.etcd = [etcdv3.Client(a, timeout_s=self.rpc_timeout_s) for a in config.etcd_addrs]

    def key(self, shard: int) -> bytes:
        return f"{self.config.root_path}/{self.config.cluster_name}/shards/{shard:020d}".encode()

    def call(self, fn_name: str, *args: object) -> object:
        """Try each etcd endpoint in turn (the client connects lazily: wrong addresses fail here)."""
        error: Exception | None = None
        for client in self.etcd:
            try:
                return getattr(client, fn_name)(*args)
            except etcdv3.EtcdError as err:
                error = err
        raise etcdv3.EtcdError(str(error))

    def open_shards(self, shard_ids: list[int]) -> tuple[list[int], dict[int, str]]:
        """Handle meta's OpenShard for each id: (opened, {failed id: error})."""
        opened: list[int] = []
        failed: dict[int, str] = {}
        for shard in shard_ids:
            _log("Receive open shard request", shard_id=shard)
            with self.lock:
                guard = self.shard_locks.setdefault(shard, threading.Lock())
            with guard:
                error = self._acquire(shard)
            if error is None:
                opened.append(shard)
                _log("Handle open shard success", shard_id=shard)
            else:
                failed[shard] = error
                _log("Failed to open shard", shard_id=shard, err=error)
        return opened, failed

    def _acquire(self, shard: int) -> str | None:
        with self.lock:
            if shard in self.open:
                _log("Shard lock is already granted", shard_id=shard)
                return None
        if common.read_fault() == "freeze-lease":  # the etcd client is stuck: the RPC times out
            time.sleep(self.rpc_timeout_s)
            return f"fail to acquire shard lock, cause: Failed to grant lease, shard_id:{shard}, err: timeout"
        try:
            lease = int(str(self.call("grant", self.config.lock_ttl)))
        except etcdv3.EtcdError as err:
            return f"fail to acquire shard lock, cause: Failed to grant lease, shard_id:{shard}, err:{err}"
        value = etcdv3.encode_shard_lock(self.config.endpoint)
        try:
            created = self.call("create_if_absent", self.key(shard), value, lease)
        except etcdv3.EtcdError as err:
            return f"fail to acquire shard lock, cause: Failed to create lock in etcd, shard_id:{shard}, err:{err}"
        if not created:
            # The granted lease is not revoked: it just runs out (as in the real server).
            return f"fail to acquire shard lock, cause: Failed to execute txn of create lock, shard_id:{shard}."
        with self.lock:
            self.open[shard] = (lease, time.monotonic())
        return None

    def keepalive_loop(self) -> None:
        interval = self.config.lock_ttl / 3
        while True:
            time.sleep(min(interval, 1.0))
            now = time.monotonic()
            with self.lock:
                snapshot = dict(self.open)
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
                        self.open[shard] = (lease, now)
                    elif now - last_ok > self.config.lock_ttl:
                        # on_lock_expired: close the shard; the process keeps running.
                        self.open.pop(shard, None)
                        _log("Shard lock is released, try to close the tables and shard", shard_id=shard)

    def open_ids(self) -> list[int]:
        with self.lock:
            return sorted(self.open)


def record_flush() -> None:
    """Evidence for tests that a flush happened (before a stop, say): one line per call."""
    common.RUN_DIR.mkdir(parents=True, exist_ok=True)
    with common.FLUSH_FILE.open("a") as handle:
        handle.write(f"{time.time():.3f} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")


def make_http_handler(shards: Shards | None) -> type[common.JsonHandler]:
    class Handler(common.JsonHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self.send_json(200, {"status": "ok"})
            elif path == "/debug/shards" and VERSION >= (1, 2, 5):
                ids = shards.open_ids() if shards else []
                self.send_json(200, [{"id": i, "role": "Leader", "version": 1} for i in ids])
            else:
                self.not_found()

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/debug/flush_memtable":
                # Every table's memtable is flushed; the stand-in has no tables, so both lists are
                # empty (HDB v1.2.2:server/src/http.rs:341-387; the same shape up to v2.0.0).
                record_flush()
                _log("flush memtable", success=0, failed=0)
                self.send_json(200, {"success": [], "failed": []})
            else:
                self.not_found()

        def not_found(self) -> None:
            # warp's rejection handler (HDB v1.2.2:server/src/http.rs handle_rejection).
            self.send_json(404, {"code": 404, "message": "NOT_FOUND"})

    return Handler


class GrpcPort(socketserver.StreamRequestHandler):
    """Stands in for MetaEventService on grpc_port: meta sends `OPEN [ids]`, the node answers one
    JSON line `{"opened": [ids], "failed": {"<id>": "<error>"}}` (see README)."""

    shards: Shards | None = None

    def handle(self) -> None:
        self.request.settimeout(5.0)
        try:
            line = self.rfile.readline(4096)
        except OSError:
            return
        if not line.startswith(b"OPEN ") or self.shards is None:
            return
        try:
            ids = [int(i) for i in json.loads(line[5:])]
        except (ValueError, TypeError):
            return
        opened, failed = self.shards.open_shards(ids)
        answer = {"opened": opened, "failed": {str(k): v for k, v in failed.items()}}
        try:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
        except OSError:
            return


class Quiet(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        return


def serve_tcp(bind: str, port: int, handler: type[socketserver.BaseRequestHandler]) -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((bind, port), handler)
    server.daemon_threads = True
    # A long poll interval: select() wakes on connections anyway, and nothing calls shutdown().
    threading.Thread(target=server.serve_forever, args=(3600,), name=f"tcp-{port}", daemon=True).start()


def heartbeat_loop(config: Config, meta: etcdv3.Client, shards: Shards) -> None:
    """Every 2/3 of the lease; after a failure wait lease/2 and retry, forever (reference 2.3).

    Whatever a heartbeat fails with, the loop goes on: a thread that died quietly would leave a node
    that answers its health checks but is offline for meta for ever, which the real server never is."""
    key = common.EMULATOR_PREFIX + f"{config.cluster_name}/heartbeats/{config.endpoint}".encode()
    while True:
        try:
            meta.put(key, json.dumps({"endpoint": config.endpoint, "shards": shards.open_ids()}).encode())
            time.sleep(config.lease_s * 2 / 3)
        except Exception as err:  # see the docstring
            _log("heartbeat failed", error=repr(err))
            time.sleep(config.lease_s / 2)


def main() -> None:
    path = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else "/etc/ceresdb/ceresdb.toml"
    config = Config(path)
    # A graceful stop, at once (shard locks are not released); a stop that hangs (the `ignore-sigterm`
    # hook) lasts until Docker's SIGKILL, as a real server stuck in its shutdown would.
    signal.signal(signal.SIGTERM, lambda *_: None if common.read_fault() == "ignore-sigterm" else os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    # freeze-* faults are transient (a wedged process that a restart cures); `exit N` persists
    # across restarts of the same container (a node that crashes at once every time).
    common.HOOKS = common.Hooks("ceresdb")
    common.HOOKS.start()
    if config.lock_ttl < 15:
        _panic(f"shard_lock_lease_ttl_sec must be at least 15, given {config.lock_ttl}")
    shards: Shards | None = None
    if config.with_meta:
        if not config.cluster_name:
            _panic("cluster_name is required")
        _log("connecting to meta", meta_addr=config.meta_addr, endpoint=config.endpoint)
        target = config.meta_addr.split("://", 1)[-1].rstrip("/")
        host, _, port = target.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=config.timeout_s).close()
        except (OSError, ValueError) as err:
            _panic(f"fail to build meta client: {err}")
        meta = etcdv3.Client(config.meta_addr, timeout_s=config.timeout_s)
        try:
            cluster = meta.get(common.EMULATOR_PREFIX + config.cluster_name.encode())
        except etcdv3.EtcdError as err:
            cluster, error = None, err
        else:
            error = None
        if cluster is None:
            _panic(f"Fail to create default schema, err:cluster not found: {config.cluster_name} ({error or 'absent'})")
        shards = Shards(config)
        threading.Thread(target=heartbeat_loop, args=(config, meta, shards), name="heartbeat", daemon=True).start()
        threading.Thread(target=shards.keepalive_loop, name="keepalive", daemon=True).start()
    GrpcPort.shards = shards
    try:
        serve_tcp(config.bind_addr, config.grpc_port, GrpcPort)
        serve_tcp(config.bind_addr, config.mysql_port, Quiet)
        if config.postgresql_port is not None:
            serve_tcp(config.bind_addr, config.postgresql_port, Quiet)
        http = ThreadingHTTPServer((config.bind_addr, config.http_port), make_http_handler(shards))
    except OSError as err:
        _panic(f"failed to start server: {err}")
    http.daemon_threads = True
    _log("server started", endpoint=config.endpoint, http_port=config.http_port)
    http.serve_forever(3600)


if __name__ == "__main__":
    main()
