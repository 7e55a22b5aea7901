"""CeresDB / HoraeDB stand-in (see ../README.md for what mirrors which reference section).

Parses its TOML like the real server, connects to meta eagerly (exit 1 when refused or when the
cluster does not exist yet), heartbeats, opens the shards meta dispatches by taking their locks in
etcd (waiting out a lock still held by an old lease), and serves GET / on its HTTP port.
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
from pathlib import Path

import common
import etcdv3

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
TOP_LEVEL = {"node", "server", "runtime", "logger", "tracing", "query_engine", "limiter",
             "cluster_deployment", "analytic"}
FAULT_FILE = Path("/run/ceres-emulator/fault")


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
        if wal and wal.get("type") not in ("RocksDB", "Obkv", "Kafka", "Local"):
            _parse_panic("analytic.wal: unknown or missing variant `type`")
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


def fault() -> str:
    try:
        return FAULT_FILE.read_text().strip()
    except OSError:
        return ""


class Shards:
    """Open shards and their etcd locks (reference 2.4: create-if-absent txn, TTL/3 keepalive)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.open: dict[int, tuple[int, float]] = {}  # shard -> (lease, last successful keepalive)
        self.opening: set[int] = set()
        self.etcd = [etcdv3.Client(a, timeout_s=max(1.0, config.lock_ttl / 6)) for a in config.etcd_addrs]

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

    def request_open(self, shard_ids: list[int]) -> None:
        with self.lock:
            wanted = [s for s in shard_ids if s not in self.open and s not in self.opening]
            self.opening.update(wanted)
        for shard in wanted:
            threading.Thread(target=self._acquire, args=(shard,), name=f"open-{shard}", daemon=True).start()

    def _acquire(self, shard: int) -> None:
        value = etcdv3.encode_shard_lock(self.config.endpoint)
        waited = False
        while True:
            if fault() == "freeze-lease":  # the etcd client is stuck: no keepalive, no new lock
                time.sleep(0.5)
                continue
            try:
                lease = int(str(self.call("grant", self.config.lock_ttl)))
                if self.call("create_if_absent", self.key(shard), value, lease):
                    with self.lock:
                        self.opening.discard(shard)
                        self.open[shard] = (lease, time.monotonic())
                    _log("shard opened", shard=shard)
                    return
                if not waited:
                    _log("shard lock held by an old lease, waiting for it to expire", shard=shard)
                    waited = True
            except etcdv3.EtcdError as err:
                _log("acquire shard lock failed", shard=shard, error=err)
            time.sleep(1.0)

    def keepalive_loop(self) -> None:
        interval = self.config.lock_ttl / 3
        while True:
            time.sleep(min(interval, 1.0))
            now = time.monotonic()
            with self.lock:
                snapshot = dict(self.open)
            for shard, (lease, last_ok) in snapshot.items():
                if fault() == "freeze-lease":
                    ttl = -1  # the keepalive is not sent
                elif now - last_ok < interval:
                    continue
                else:
                    try:
                        ttl = int(str(self.call("keepalive", lease)))
                    except etcdv3.EtcdError:
                        ttl = -1
                with self.lock:
                    if ttl > 0:
                        self.open[shard] = (lease, now)
                    elif now - last_ok > self.config.lock_ttl:
                        # on_lock_expired: close the shard; the process keeps running.
                        self.open.pop(shard, None)
                        _log("shard lock expired, shard closed", shard=shard)

    def open_ids(self) -> list[int]:
        with self.lock:
            return sorted(self.open)


def make_http_handler(shards: Shards | None) -> type[common.JsonHandler]:
    class Handler(common.JsonHandler):
        def do_GET(self) -> None:
            while fault() == "freeze-http":
                time.sleep(0.2)  # accept, then never answer
            path = self.path.split("?", 1)[0]
            if path == "/":
                self.send_json(200, {"status": "ok"})
            elif path == "/debug/shards" and VERSION >= (1, 2, 5):
                ids = shards.open_ids() if shards else []
                self.send_json(200, [{"id": i, "role": "Leader", "version": 1} for i in ids])
            else:
                self.send_json(404, {"code": 404, "message": "not found"})

    return Handler


class GrpcPort(socketserver.StreamRequestHandler):
    """Stands in for MetaEventService on grpc_port: meta sends `OPEN [ids]` (see README)."""

    shards: Shards | None = None

    def handle(self) -> None:
        self.request.settimeout(2.0)
        try:
            line = self.rfile.readline(4096)
        except OSError:
            return
        if line.startswith(b"OPEN ") and self.shards is not None:
            try:
                ids = [int(i) for i in json.loads(line[5:])]
            except (ValueError, TypeError):
                return
            self.shards.request_open(ids)
            self.wfile.write(b"OK\n")


class Quiet(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        return


def serve_tcp(bind: str, port: int, handler: type[socketserver.BaseRequestHandler]) -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((bind, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"tcp-{port}", daemon=True).start()


def heartbeat_loop(config: Config, meta: etcdv3.Client, shards: Shards) -> None:
    """Every 2/3 of the lease; after a failure wait lease/2 and retry, forever (reference 2.3)."""
    key = common.EMULATOR_PREFIX + f"{config.cluster_name}/heartbeats/{config.endpoint}".encode()
    while True:
        try:
            meta.put(key, json.dumps({"endpoint": config.endpoint, "shards": shards.open_ids()}).encode())
            time.sleep(config.lease_s * 2 / 3)
        except etcdv3.EtcdError as err:
            _log("heartbeat failed", error=err)
            time.sleep(config.lease_s / 2)


def watch_exit_fault() -> None:
    while True:
        text = fault()
        if text.startswith("exit"):
            code = int(text.split()[1]) if len(text.split()) > 1 else 1
            _log("fault hook: exiting", code=code)
            os._exit(code)
        time.sleep(0.2)


def main() -> None:
    path = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else "/etc/ceresdb/ceresdb.toml"
    config = Config(path)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # graceful stop; shard locks are not released
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    # freeze-* faults are transient (a wedged process that a restart cures); `exit N` persists
    # across restarts of the same container (a node that crashes at once every time).
    if fault().startswith("freeze"):
        FAULT_FILE.write_text("")
    threading.Thread(target=watch_exit_fault, name="fault", daemon=True).start()
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
    http.serve_forever()


if __name__ == "__main__":
    main()
