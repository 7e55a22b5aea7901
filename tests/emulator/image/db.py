"""CeresDB / HoraeDB stand-in (see ../README.md for what mirrors which source).

Starts in the real order (HDB v1.2.2:src/bin/ceresdb-server.rs:56-95, src/setup.rs:104-250,
server/src/server.rs:113-176): parse the config (exit 101 on errors), connect to meta eagerly (exit 1
when refused), open the RocksDB WAL and manifest (their LOCK files: exit 1 when another process
holds them), start the heartbeat, create the default schema through meta's leader (exit 1 when that
fails), then listen. Until then a SIGTERM ends it by the signal (exit 143 under tini); afterwards a
stop waits for the OpenShard calls in flight and releases nothing. Shards: shards.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import tomllib
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

import common
import shards as shardlib

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
TOP_LEVEL = {
    "node",
    "server",
    "runtime",
    "logger",
    "tracing",
    "query_engine",
    "limiter",
    "cluster_deployment",
    "analytic",
}
WAL_TYPES = ("RocksDB", "Obkv", "Kafka")
"""`type = "Local"` arrives only in 2.1.0 (HDB v2.1.0:src/wal/src/config.rs:72)."""
RPC_SERVICE = "meta_service.MetaRpcService" if V2 else "meta_service.CeresmetaRpcService"
MIN_SHARD_LOCK_TTL_S = 15
ADDR_ENV = "HORAEDB_SERVER_ADDR" if V2 else "CERESDB_SERVER_ADDR"


def _log(message: str, **fields: object) -> None:
    common.log("ceresdb", message, **fields)


def _parse_panic(message: str) -> None:
    """Config parsing panics before the panic hook is installed: Rust exit code 101."""
    print(f"thread 'main' panicked at 'Failed to parse config.: {message}'", file=sys.stderr, flush=True)
    os._exit(101)


def _panic(message: str) -> None:
    """After the panic hook is installed, any panic exits 1 (HDB v1.2.2:common_util/src/panic.rs)."""
    print(f"thread 'main' panicked at '{message}'", file=sys.stderr, flush=True)
    os._exit(1)


def _table(document: dict[str, object], key: str) -> dict[str, object]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        _parse_panic(f"invalid type for {key}: expected a table")
    return value  # type: ignore[return-value]


class Config:
    """The keys the stand-in reads; unknown nested keys are ignored."""

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
        self.addr = str(node.get("addr", "127.0.0.1"))
        self.bind_addr = str(server.get("bind_addr", "127.0.0.1"))
        self.http_port = int(server.get("http_port", 5440))  # type: ignore[call-overload]
        self.grpc_port = int(server.get("grpc_port", 8831))  # type: ignore[call-overload]
        self.mysql_port = int(server.get("mysql_port", 3307))  # type: ignore[call-overload]
        self.postgresql_port = int(server.get("postgresql_port", 5433)) if VERSION >= (1, 2, 6) else None  # type: ignore[call-overload]
        deployment = _table(document, "cluster_deployment")
        if deployment and deployment.get("mode") not in ("WithMeta", "NoMeta"):
            _parse_panic("cluster_deployment: unknown or missing variant `mode`")
        self.with_meta = deployment.get("mode") == "WithMeta"
        analytic = _table(document, "analytic")
        wal = _table(analytic, "wal")
        if wal and "type" not in wal:
            _parse_panic("analytic.wal: missing field `type`")
        if wal and wal.get("type") not in WAL_TYPES:
            expected = ", ".join(f"`{t}`" for t in WAL_TYPES)
            _parse_panic(f"analytic.wal: unknown variant `{wal.get('type')}`, expected one of {expected}")
        self.wal_type = str(wal.get("type", "RocksDB"))
        # RocksDBConfig.data_dir (HDB v1.2.2:analytic_engine/src/lib.rs:258-270; v2.0.0
        # src/wal/src/rocksdb_impl/config.rs:27,37).
        self.wal_dir = str(wal.get("data_dir", "/tmp/horaedb" if V2 else "/tmp/ceresdb"))
        client, etcd = _table(deployment, "meta_client"), _table(deployment, "etcd_client")
        self.cluster_name = str(client.get("cluster_name", ""))
        self.meta_addr = str(client.get("meta_addr", "127.0.0.1:8080"))
        try:
            self.lease_s = common.parse_duration(str(client.get("lease", "10s")))
            self.timeout_s = common.parse_duration(str(client.get("timeout", "5s")))
        except ValueError as err:
            _parse_panic(str(err))
        self.etcd_addrs = [str(a) for a in etcd.get("server_addrs", ["127.0.0.1:2379"])]  # type: ignore[union-attr]
        self.root_path = str(etcd.get("root_path", "/horaedb" if V2 else "/ceresdb"))
        self.lock_ttl = int(etcd.get("shard_lock_lease_ttl_sec", 30))  # type: ignore[call-overload]
        self.fast_reacquire = V2 and bool(etcd.get("enable_shard_lock_fast_reacquire", False))
        # The environment overrides the file when the variable is set at all, empty included:
        # `if let Ok(v) = env::var(..)` (HDB v1.2.2:src/bin/ceresdb-server.rs:71-77; v2.0.0
        # src/horaedb/bin/horaedb-server.rs:89-102, src/horaedb/src/config.rs:80-92).
        if ADDR_ENV in os.environ:
            self.addr = os.environ[ADDR_ENV]
        if V2 and "HORAEMETA_SERVER_ADDR" in os.environ:
            self.meta_addr = os.environ["HORAEMETA_SERVER_ADDR"]
        if V2 and "ETCD_ADDRS" in os.environ:
            self.etcd_addrs = os.environ["ETCD_ADDRS"].split(",")
        if "CLUSTER_NAME" in os.environ and self.with_meta:
            self.cluster_name = os.environ["CLUSTER_NAME"]
        # HORAEDB_DEFAULT_CATALOG (HDB 1a452f2c, PR #1455, first in v2.0.0: src/catalog/src/consts.rs:25).
        self.default_catalog = os.environ.get("HORAEDB_DEFAULT_CATALOG", "horaedb") if V2 else "ceresdb"

    @property
    def endpoint(self) -> str:
        """The node's identity in meta: addr + ":" + grpc_port (NodeMetaInfo::endpoint)."""
        return f"{self.addr}:{self.grpc_port}"

    @property
    def meta_port(self) -> int:
        target = self.meta_addr.split("://", 1)[-1].rstrip("/")
        return int(target.rpartition(":")[2])


class Meta:
    """The meta client: every call goes to the member at `meta_addr`, which forwards it to its leader."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def call(self, method: str, **fields: object) -> dict[str, object]:
        request = {"service": RPC_SERVICE, "method": method, "cluster": self.config.cluster_name, **fields}
        try:
            answer = common.rpc_call(self.config.meta_port, request, self.config.timeout_s)
        except common.RpcError as err:
            raise shardlib.MetaError(str(err)) from None
        if answer.get("code", 0) != 0:
            raise shardlib.MetaError(f"{answer.get('error')} (code {answer.get('code')})")
        return answer


# --- the RocksDB WAL and manifest ------------------------------------------------------------------

WAL_LOCKS: list[object] = []
"""The open LOCK files: the process holds them until it exits."""


def open_wals(config: Config) -> None:
    """RocksDBWalsOpener: `<data_dir>/wal` and `<data_dir>/manifest`, each a RocksDB that takes an
    fcntl lock on its LOCK file (HDB v1.2.2:analytic_engine/src/setup.rs:96-99,160-191; v2.0.0
    src/wal/src/manager.rs:557-558). A second process on the same directory (another container on
    the same host directory included) fails: `expect("Failed to setup analytic engine")`."""
    if config.wal_type != "RocksDB":
        return
    for name in ("wal", "manifest"):
        path = Path(config.wal_dir) / name
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle = open(path / "LOCK", "a+b")  # noqa: SIM115  (held for the life of the process)
        except OSError as err:
            _panic(
                f'Failed to setup analytic engine: OpenWal {{ source: Open {{ wal_path: "{path}", source: '
                f'Error {{ message: "IO error: While open a file for lock: {path}/LOCK: {err.strerror}" }} }} }}'
            )
            return
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            _panic(
                f'Failed to setup analytic engine: OpenWal {{ source: Open {{ wal_path: "{path}", source: '
                f'Error {{ message: "IO error: While lock file: {path}/LOCK: {err.strerror}" }} }} }}'
            )
        WAL_LOCKS.append(handle)
        write_rocksdb_files(path)
    slow = common.read_seconds("start-slow")
    if slow:
        _log("recovering wal", seconds=slow)  # RocksDB replays its log files at open
        started = time.monotonic()
        while (slow := common.read_seconds("start-slow")) is not None and time.monotonic() - started < slow:
            time.sleep(0.2)


def write_rocksdb_files(path: Path) -> None:
    """What RocksDB writes into a new database directory, besides LOCK: its identity, the current
    manifest and its info log (the stand-in writes no data)."""
    if not (path / "IDENTITY").exists():
        (path / "IDENTITY").write_text(f"{uuid.uuid4()}\n")
        (path / "MANIFEST-000001").write_bytes(b"")
        (path / "CURRENT").write_text("MANIFEST-000001\n")
    with (path / "LOG").open("a") as log:
        log.write(
            f"{time.strftime('%Y/%m/%d-%H:%M:%S')} RocksDB version: 6.x, DB SUMMARY, DB Session ID: {uuid.uuid4().hex}\n"
        )


# --- HTTP ------------------------------------------------------------------------------------------


def record_flush() -> None:
    """Evidence for tests that a flush happened (before a stop, say): one line per call."""
    common.RUN_DIR.mkdir(parents=True, exist_ok=True)
    with common.FLUSH_FILE.open("a") as handle:
        handle.write(f"{time.time():.3f} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")


def flush_memtables() -> None:
    """Every table flushed in turn, the answer only when all are (HDB v1.2.2:server/src/http.rs:341-387,
    v2.0.0 src/server/src/http.rs:462-505). The stand-in has no tables; `flush-slow S` stands for
    tables whose flush takes S seconds in all."""
    started = time.monotonic()
    while (slow := common.read_seconds("flush")) is not None and time.monotonic() - started < slow:
        common.wait_hook(min(1.0, started + slow - time.monotonic()))


def make_http_handler(shards: shardlib.Shards | None) -> type[common.JsonHandler]:
    class Handler(common.JsonHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self.send_json(200, {"status": "ok"})
            elif path == "/debug/shards" and VERSION >= (1, 2, 5):
                # cluster.list_shards(): every shard in the shard set, whatever its status
                # (HDB v1.2.5:server/src/http.rs:510-525, cluster/src/cluster_impl.rs:298-303).
                self.send_json(200, shards.infos() if shards else [])
            else:
                self.not_found()

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/debug/flush_memtable":
                flush_memtables()
                record_flush()
                _log("flush memtable", success=0, failed=0)
                self.send_json(200, {"success": [], "failed": []})
            else:
                self.not_found()

        def not_found(self) -> None:
            # warp's rejection handler (HDB v1.2.2:server/src/http.rs handle_rejection).
            self.send_json(404, {"code": 404, "message": "NOT_FOUND"})

    return Handler


# --- gRPC (MetaEventService) -----------------------------------------------------------------------


class GrpcPort(socketserver.StreamRequestHandler):
    """Stands in for MetaEventService on grpc_port: meta sends `OPEN {"shard": {...}}`, one shard per
    call, and the node answers one JSON line `{"code": 0}` or `{"code": 500, "error": "..."}`."""

    shards: shardlib.Shards | None = None
    in_flight = 0
    lock = threading.Lock()
    done = threading.Condition(lock)

    def handle(self) -> None:
        try:
            line = self.rfile.readline(4096)
        except OSError:
            return
        if not line.startswith(b"OPEN ") or self.shards is None:
            return
        try:
            shard = json.loads(line[5:])["shard"]
            shard_id, version = int(shard["id"]), int(shard.get("version", 0))
        except (ValueError, TypeError, KeyError):
            return
        with GrpcPort.lock:
            GrpcPort.in_flight += 1
        try:
            error = self.shards.open_shard(shard_id, version)
            answer = {"code": 0} if error is None else {"code": 500, "error": error}
            try:
                self.wfile.write(json.dumps(answer).encode() + b"\n")
            except OSError:
                return
        finally:
            with GrpcPort.lock:
                GrpcPort.in_flight -= 1
                GrpcPort.done.notify_all()


class Quiet(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        return


def serve_tcp(
    bind: str, port: int, handler: type[socketserver.BaseRequestHandler]
) -> socketserver.ThreadingTCPServer:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((bind, port), handler)
    server.daemon_threads = True
    # A long poll interval: select() wakes on connections anyway, and shutdown is a socket close.
    threading.Thread(target=server.serve_forever, args=(3600,), name=f"tcp-{port}", daemon=True).start()
    return server


def heartbeat_loop(config: Config, meta: Meta, shards: shardlib.Shards) -> None:
    """Every 2/3 of the lease; after a failure wait lease/2 and retry, forever (HDB v1.2.2:
    cluster/src/cluster_impl.rs:105-143). The first one goes at once, when the cluster starts."""
    while True:
        try:
            meta.call(
                "NodeHeartbeat",
                node={
                    "endpoint": config.endpoint,
                    "zone": "",
                    "binary_version": "",
                    "shard_infos": shards.heartbeat_infos(),
                },
            )
            time.sleep(config.lease_s * 2 / 3)
        except Exception as err:  # whatever a heartbeat fails with, the loop goes on
            _log("Send heartbeat to meta failed", err=err)
            time.sleep(config.lease_s / 2)


# --- start and stop --------------------------------------------------------------------------------


def die_by_signal(signum: int, _frame: object) -> None:
    """No handler is installed before the server has started: the signal's default action ends
    the process, and tini (PID 1 in the real image) exits 128 + the signal's number."""
    os._exit(128 + signum)


def start_server(config: Config) -> tuple[shardlib.Shards | None, list[socketserver.ThreadingTCPServer]]:
    shards: shardlib.Shards | None = None
    meta: Meta | None = None
    if config.with_meta:
        _log("Build ceresdb with node meta info", endpoint=config.endpoint, meta_addr=config.meta_addr)
        target = config.meta_addr.split("://", 1)[-1].rstrip("/")
        host, _, port = target.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=config.timeout_s).close()
        except (OSError, ValueError) as err:
            _panic(f"fail to build meta client: {err}")
        # ClusterImpl::try_new (HDB v1.2.2:cluster/src/cluster_impl.rs:62-103): `.unwrap()`.
        if config.lock_ttl < MIN_SHARD_LOCK_TTL_S:
            _panic(
                f'called `Result::unwrap()` on an `Err` value: InvalidArguments {{ msg: "shard_lock_lease_ttl_sec should '
                f'be greater than {MIN_SHARD_LOCK_TTL_S}" }}'
            )
        if not config.root_path.startswith("/"):
            _panic(
                'called `Result::unwrap()` on an `Err` value: InvalidArguments { msg: "root_path is required to start with /" }'
            )
        if not config.cluster_name:
            _panic(
                'called `Result::unwrap()` on an `Err` value: InvalidArguments { msg: "cluster_name is required non-empty" }'
            )
        meta = Meta(config)
        shards = shardlib.Shards(
            config.endpoint,
            config.root_path,
            config.cluster_name,
            config.lock_ttl,
            config.etcd_addrs,
            config.fast_reacquire,
            meta.call,
        )
    open_wals(config)
    servers: list[socketserver.ThreadingTCPServer] = []
    if meta is not None and shards is not None:
        # server.start(): the cluster (its heartbeat loop), then the default schema, then the services.
        threading.Thread(
            target=heartbeat_loop, args=(config, meta, shards), name="heartbeat", daemon=True
        ).start()
        threading.Thread(target=shards.keepalive_loop, name="keepalive", daemon=True).start()
        _log("Server start, create default schema if not exist", catalog=config.default_catalog)
        try:
            meta.call("AllocSchemaID", name="public")
        except shardlib.MetaError as err:
            _panic(
                f'Fail to create default schema: CreateSchemaWithCause {{ catalog: "{config.default_catalog}", '
                f'schema: "public", source: {err} }}'
            )
    GrpcPort.shards = shards
    try:
        servers.append(serve_tcp(config.bind_addr, config.grpc_port, GrpcPort))
        servers.append(serve_tcp(config.bind_addr, config.mysql_port, Quiet))
        if config.postgresql_port is not None:
            servers.append(serve_tcp(config.bind_addr, config.postgresql_port, Quiet))
        http = ThreadingHTTPServer((config.bind_addr, config.http_port), make_http_handler(shards))
    except OSError as err:
        _panic(f"Failed to start server: {err}")
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, args=(3600,), name="http", daemon=True).start()
    _log("Server start finished", endpoint=config.endpoint, http_port=config.http_port)
    return shards, servers


def main() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, die_by_signal)
    path = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else "/etc/ceresdb/ceresdb.toml"
    config = Config(path)
    # freeze-* faults are transient (a wedged process that a restart cures); `exit N` persists
    # across restarts of the same container (a node that crashes at once every time).
    common.HOOKS = common.Hooks("ceresdb")
    common.HOOKS.start()
    _, servers = start_server(config)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # A stop that hangs (the `ignore-sigterm` hook) lasts until Docker's SIGKILL, as a real
        # server stuck in its shutdown would.
        if common.read_fault() != "ignore-sigterm":
            received.append(signum)
            stop.set()

    # signal_handler::wait_for_signal, only after server.start() (HDB v1.2.2:src/setup.rs:163-170).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, on_signal)
    while not stop.wait(3600):
        pass
    _log("Received signal, stopping server...", signal=received[0] if received else 0)
    # server.stop(): the gRPC services shut down gracefully, waiting for the calls in flight (an
    # OpenShard still opening included); then HTTP, MySQL and the heartbeat stop. Nothing is flushed
    # and no shard lock is released (HDB v1.2.2:server/src/server.rs:113-121).
    servers[0].socket.close()
    with GrpcPort.lock:
        while GrpcPort.in_flight:
            GrpcPort.done.wait()
    os._exit(0)


if __name__ == "__main__":
    main()
