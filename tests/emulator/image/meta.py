"""CeresMeta / HoraeMeta stand-in (see ../README.md for what mirrors which reference section).

Runs a real etcd from the rendered configuration, serves the version's HTTP API once etcd is
ready, campaigns for meta leadership, creates the default cluster, takes CeresDB heartbeats and
assigns shards statically. Exits 0 when etcd fails or does not get ready in time, as the real one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import ThreadingHTTPServer

import common
import etcdv3

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
HTTP_PORT_KEY, HTTP_PORT_ENV = ("default-http-port", "DEFAULT_HTTP_PORT") if VERSION < (1, 2, 7) else ("http-port", "HTTP_PORT")
HEALTH_PATH = "/api/v1/healthCheck" if VERSION < (1, 2, 7) else "/api/v1/health"
NODE_EXPIRY_S = 10.0  # hard-coded in CeresMeta (reference 2.3)
SCHEDULER_TICK_S = 1.0  # real: 5 s; see README "deliberate differences"
CLUSTER_CREATE_DELAY_S = 2.0
FORWARDED_HEADER = "X-Ceres-Emulator-Forwarded"


def _log(message: str, **fields: object) -> None:
    common.log("meta", message, **fields)


def _panic(message: str) -> None:
    """A Go panic: message on stderr, exit code 2."""
    print(f"panic: {message}", file=sys.stderr, flush=True)
    os._exit(2)


# --- configuration (reference 1.1-1.3) -----------------------------------------------------------

def load_config(path: str) -> dict[str, object]:
    hostname = socket.gethostname()
    prefix = "horaemeta" if V2 else "ceresmeta"
    keys: dict[str, tuple[str, object]] = {
        "node-name": ("NODE_NAME", f"{prefix}-{hostname}"),
        "data-dir": ("DATA_DIR", f"/tmp/{prefix}"),
        "storage-root-path": ("STORAGE_ROOT_PATH", "/horaedb" if V2 else "/ceresdb"),
        "initial-cluster": ("INITIAL_CLUSTER", ""),
        "initial-cluster-state": ("INITIAL_CLUSTER_STATE", "new"),
        "initial-cluster-token": ("INITIAL_CLUSTER_TOKEN", f"{prefix}-cluster"),
        "client-urls": ("CLIENT_URLS", "http://0.0.0.0:2379"),
        "peer-urls": ("PEER_URLS", "http://0.0.0.0:2380"),
        "advertise-client-urls": ("ADVERTISE_CLIENT_URLS", "http://0.0.0.0:2379"),
        "advertise-peer-urls": ("ADVERTISE_PEER_URLS", "http://0.0.0.0:2380"),
        "default-cluster-name": ("DEFAULT_CLUSTER_NAME", "defaultCluster"),
        "default-cluster-node-count": ("DEFAULT_CLUSTER_NODE_COUNT", 2),
        "default-cluster-shard-total": ("DEFAULT_CLUSTER_SHARD_TOTAL", 8),
        "topology-type": ("TOPOLOGY_TYPE", "static"),
        "etcd-start-timeout-ms": ("ETCD_START_TIMEOUT_MS", 60000),
        "lease-sec": ("LEASE_SEC", 10),
        "tick-interval-ms": ("TICK_INTERVAL_MS", 500),
        "election-timeout-ms": ("ELECTION_TIMEOUT_MS", 3000),
        HTTP_PORT_KEY: (HTTP_PORT_ENV, 8080),
    }
    for struct_env in ("LOG", "ETCD_LOG", "FLOW_LIMITER"):
        if os.environ.get(struct_env):
            _panic(f"env: parse error on field of type struct: {struct_env}")
    document: dict[str, object] = {}
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        _log("config file not found, using defaults", path=path)
    except tomllib.TOMLDecodeError as err:
        _panic(f"fail to parse config: {err}")
    config: dict[str, object] = {}
    for key, (env, default) in keys.items():
        value = document.get(key, default)  # unknown keys are ignored, as go-toml does
        if not isinstance(value, type(default)) or isinstance(value, bool):
            _panic(f"toml: cannot decode {type(value).__name__} into {type(default).__name__} for {key}")
        if env in os.environ:  # environment overrides the file, no prefix (reference 1.1)
            raw = os.environ[env]
            try:
                value = int(raw) if isinstance(default, int) else raw
            except ValueError:
                _panic(f"env: parse error on field {env}: {raw!r}")
        config[key] = value
    if not config["initial-cluster"]:
        config["initial-cluster"] = f"{config['node-name']}=http://0.0.0.0:2380"
    level = os.environ.get("LEVEL")
    for table in ("log", "etcd-log"):
        section = document.get(table)
        config[f"{table}.level"] = level or (section.get("level", "info") if isinstance(section, dict) else "info")
    return config


def _local_url(url: str) -> str:
    """A URL this process can reach its own listener at (0.0.0.0 -> 127.0.0.1)."""
    parsed = urllib.parse.urlparse(url.split(",", maxsplit=1)[0])
    host = "127.0.0.1" if parsed.hostname in ("0.0.0.0", None) else parsed.hostname
    return f"http://{host}:{parsed.port}"


# --- the server -----------------------------------------------------------------------------------

class Meta:
    def __init__(self, config: dict[str, object]) -> None:
        self.config = config
        self.name = str(config["node-name"])
        self.data_dir = str(config["data-dir"])
        self.root = str(config["storage-root-path"])
        self.cluster_name = str(config["default-cluster-name"])
        self.http_port = int(str(config[HTTP_PORT_KEY]))
        self.client_url = _local_url(str(config["client-urls"]))
        self.advertise_client = str(config["advertise-client-urls"]).split(",")[0]
        self.etcd = etcdv3.Client(self.client_url, timeout_s=2.0)
        self.incarnation = uuid.uuid4().hex
        self.leader_key = b"/members/leader" if VERSION < (1, 2, 7) else f"{self.root}/members/leader".encode()
        self.cluster_key = common.EMULATOR_PREFIX + self.cluster_name.encode()
        self.lock = threading.Lock()
        self.leader_lease = 0
        self.leader_since = 0.0
        self.leader_endpoint: str | None = None
        self.cluster: dict[str, object] | None = None
        self.last_touch: dict[str, float] = {}
        self.last_revision: dict[str, int] = {}
        self.last_open_sent: dict[str, float] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False

    # -- etcd --
    def start_etcd(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        c = self.config
        args = [
            "etcd", "--name", self.name,
            "--data-dir", f"{self.data_dir}/etcd", "--wal-dir", f"{self.data_dir}/wal",
            "--listen-client-urls", str(c["client-urls"]),
            "--advertise-client-urls", str(c["advertise-client-urls"]),
            "--listen-peer-urls", str(c["peer-urls"]),
            "--initial-advertise-peer-urls", str(c["advertise-peer-urls"]),
            "--initial-cluster", str(c["initial-cluster"]),
            "--initial-cluster-state", str(c["initial-cluster-state"]),
            "--initial-cluster-token", str(c["initial-cluster-token"]),
            "--heartbeat-interval", str(c["tick-interval-ms"]),
            "--election-timeout", str(c["election-timeout-ms"]),
            "--enable-pprof", "--logger", "zap", "--log-level", self._etcd_level(),
            # The real server writes etcd's log to <data-dir>/etcd.log, not stdout.
            "--log-outputs", f"{self.data_dir}/etcd.log",
        ]
        # etcd reads ETCD_* variables itself; give it a clean environment.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)

    def _etcd_level(self) -> str:
        level = str(self.config["etcd-log.level"]).lower()
        return level if level in ("debug", "info", "warn", "error") else "info"

    def wait_etcd_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + int(str(self.config["etcd-start-timeout-ms"])) / 1000
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as response:
                    if json.loads(response.read()).get("health") == "true":
                        return True
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def stop_etcd(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                # etcd 3.4 can linger ~10 s on SIGTERM here; its WAL makes a kill safe.
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # -- leadership (reference 6, "Meta first") --
    def is_leader(self) -> bool:
        with self.lock:
            return self.leader_lease != 0

    def leadership_step(self) -> None:
        if self.is_leader():
            if self.etcd.keepalive(self.leader_lease) <= 0:
                _log("lost meta leadership")
                with self.lock:
                    self.leader_lease, self.cluster = 0, None
            return
        status = self.etcd.status()
        header = status.get("header") or {}
        assert isinstance(header, dict)
        if str(status.get("leader")) == str(header.get("member_id")):
            lease = self.etcd.grant(int(str(self.config["lease-sec"])))
            value = json.dumps({"name": self.name, "id": self.incarnation, "endpoint": self.advertise_client})
            if self.etcd.create_if_absent(self.leader_key, value.encode(), lease):
                _log("became meta leader", name=self.name)
                with self.lock:
                    self.leader_lease, self.leader_since = lease, time.monotonic()
                    self.leader_endpoint = self.advertise_client
                return
        found = self.etcd.get(self.leader_key)
        with self.lock:
            self.leader_endpoint = json.loads(found[0])["endpoint"] if found else None

    def ensure_cluster(self) -> None:
        """The leader loads the default cluster, creating it a moment after election if absent."""
        with self.lock:
            if self.cluster is not None or time.monotonic() - self.leader_since < CLUSTER_CREATE_DELAY_S:
                return
        found = self.etcd.get(self.cluster_key)
        if found is None:
            record = {
                "ID": 0, "Name": self.cluster_name,
                # Frozen at creation (pitfall 5): later config changes do not reach it.
                "MinNodeCount": int(str(self.config["default-cluster-node-count"])),
                "ShardTotal": int(str(self.config["default-cluster-shard-total"])),
                "EnableSchedule": True, "TopologyType": str(self.config["topology-type"]),
                "CreatedAt": int(time.time() * 1000), "ModifiedAt": int(time.time() * 1000),
            }
            if not V2:
                record["ReplicationFactor"] = 1
            self.etcd.create_if_absent(self.cluster_key, json.dumps(record).encode())
            _log("created default cluster", cluster=self.cluster_name, min_node_count=record["MinNodeCount"])
            found = self.etcd.get(self.cluster_key)
        assert found is not None
        with self.lock:
            self.cluster = json.loads(found[0])

    # -- scheduling (reference 2.3) --
    def schedule(self) -> None:
        with self.lock:
            cluster = self.cluster
        if cluster is None:
            return
        now = time.monotonic()
        beats: dict[str, dict[str, object]] = {}
        for key, value, revision, _lease in self.etcd.range_prefix(self.cluster_key + b"/heartbeats/"):
            endpoint = key.rsplit(b"/", 1)[1].decode()
            beats[endpoint] = json.loads(value)
            if self.last_revision.get(endpoint) != revision:
                self.last_revision[endpoint], self.last_touch[endpoint] = revision, now
        topology_key = self.cluster_key + b"/topology"
        found = self.etcd.get(topology_key)
        if found is None:
            # Registered nodes are never pruned (reference 2.2): every endpoint ever seen counts.
            if len(beats) < int(str(cluster["MinNodeCount"])):
                return
            nodes = sorted(beats)
            shards = {str(i): nodes[i % len(nodes)] for i in range(int(str(cluster["ShardTotal"])))}
            self.etcd.create_if_absent(topology_key, json.dumps({"version": 1, "shards": shards}).encode())
            _log("assigned shards", nodes=",".join(nodes))
            found = self.etcd.get(topology_key)
            assert found is not None
        assigned: dict[str, list[int]] = {}
        for shard, endpoint in json.loads(found[0])["shards"].items():
            assigned.setdefault(endpoint, []).append(int(shard))
        for endpoint, shard_ids in assigned.items():
            alive = now - self.last_touch.get(endpoint, -1e9) <= NODE_EXPIRY_S
            opened = set(beats.get(endpoint, {}).get("shards", []))  # type: ignore[call-overload]
            missing = sorted(set(shard_ids) - opened)
            if alive and missing and now - self.last_open_sent.get(endpoint, -1e9) >= 2.0:
                self.last_open_sent[endpoint] = now
                self.dispatch_open(endpoint, missing)

    def dispatch_open(self, endpoint: str, shard_ids: list[int]) -> None:
        """OpenShard: meta dials the node's registered endpoint (addr:grpc_port)."""
        host, sep, port = endpoint.rpartition(":")
        try:
            if not sep or ":" in host or not port.isdigit():
                raise ValueError(f"invalid endpoint {endpoint!r}")
            with socket.create_connection((host, int(port)), timeout=1.0) as conn:
                conn.sendall(b"OPEN " + json.dumps(shard_ids).encode() + b"\n")
                conn.settimeout(1.0)
                conn.recv(16)
        except (OSError, ValueError) as err:
            _log("dispatch open shard failed", endpoint=endpoint, error=err)

    def loop(self) -> None:
        while not self.stopping:
            try:
                self.leadership_step()
                if self.is_leader():
                    self.ensure_cluster()
                    self.schedule()
            except (etcdv3.EtcdError, OSError, ValueError, KeyError) as err:
                _log("leader loop error", error=err)
            time.sleep(0.5 if not self.is_leader() else SCHEDULER_TICK_S / 2)

    # -- HTTP (reference 2.1, 2.2) --
    def node_shards(self) -> dict[str, object] | None:
        found = self.etcd.get(self.cluster_key + b"/topology")
        if found is None:
            return {"ClusterTopologyVersion": 0, "NodeShards": []}
        topology = json.loads(found[0])
        shards = [
            {"ShardInfo": {"ID": int(s), "Role": 1, "Version": 1},
             "ShardNode": {"ID": int(s), "ShardRole": 1, "NodeName": endpoint}}
            for s, endpoint in sorted(topology["shards"].items(), key=lambda item: int(item[0]))
        ]
        return {"ClusterTopologyVersion": topology["version"], "NodeShards": shards}


def error_envelope(code: int, desc: str, cause: str, msg: str) -> dict[str, object]:
    return {"status": "error", "error": f"(#{code}){desc}, cause:{cause}", "msg": msg}


def make_handler(meta: Meta) -> type[common.JsonHandler]:
    class Handler(common.JsonHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == HEALTH_PATH:
                self.send_json(200, {"status": "success"})
            elif path == "/api/v1/clusters":
                self.leader_only(lambda: [meta.cluster] if meta.cluster else [])
            else:
                self.not_found()

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            body = self.read_json()
            if path == "/api/v1/getNodeShards":
                name = body.get("clusterName") or body.get("ClusterName")
                if name != meta.cluster_name:
                    self.send_json(404, error_envelope(404, "cluster not found", f"cluster:{name}",
                                                       "get node shards"))
                    return
                self.leader_only(meta.node_shards)
            else:
                self.not_found()

        def not_found(self) -> None:
            body = b"404 page not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def leader_only(self, answer: object) -> None:
            if meta.is_leader():
                self.send_json(200, {"status": "success", "data": answer()})  # type: ignore[operator]
                return
            self.forward()

        def forward(self) -> None:
            """To the leader's host with *this* node's HTTP port (pitfall 10)."""
            with meta.lock:
                leader = meta.leader_endpoint
            if leader is None or self.headers.get(FORWARDED_HEADER):
                self.send_json(500, error_envelope(500, "forward to leader", "no leader", "forward to leader"))
                return
            host = urllib.parse.urlparse(leader).hostname
            data = self.body if self.command == "POST" else None
            request = urllib.request.Request(
                f"http://{host}:{meta.http_port}{self.path}", data=data, method=self.command,
                headers={FORWARDED_HEADER: "1", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    status, raw = response.status, response.read()
            except urllib.error.HTTPError as err:
                status, raw = err.code, err.read()
            except OSError as err:
                self.send_json(500, error_envelope(500, "forward to leader", str(err), "forward to leader"))
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler


def main() -> None:
    path = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else "/etc/ceresmeta/ceresmeta.toml"
    config = load_config(path)
    _log("server start with config", **{k: config[k] for k in ("node-name", "client-urls", HTTP_PORT_KEY)})
    meta = Meta(config)

    def on_term(signum: int, _frame: object) -> None:
        # Only signal here: the main thread is inside Popen.wait() on etcd, and waiting again from
        # a handler deadlocks on Popen's lock. The main thread returns once etcd is gone.
        _log("received signal, stopping", signal=signum)
        meta.stopping = True
        if meta.process is None:
            os._exit(0)
        meta.process.terminate()
        # etcd 3.4 can linger ~10 s on SIGTERM here; its WAL makes a kill safe.
        threading.Timer(3.0, meta.process.kill).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    meta.start_etcd()
    if not meta.wait_etcd_ready():
        # CreateServer / srv.Run failures are only logged, and main returns: exit code 0.
        _log("fail to start etcd server", timeout_ms=config["etcd-start-timeout-ms"])
        meta.stop_etcd()
        sys.exit(0)
    _log("etcd ready; server running")
    try:
        server = ThreadingHTTPServer(("0.0.0.0", meta.http_port), make_handler(meta))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    except OSError as err:
        # The real HTTP server runs in a goroutine whose listen error is only logged.
        _log("http service failed to start", port=meta.http_port, error=err)
    threading.Thread(target=meta.loop, name="leader", daemon=True).start()
    assert meta.process is not None
    code = meta.process.wait()
    if not meta.stopping:
        _log("etcd exited; server stops", code=code)
    sys.exit(0)


if __name__ == "__main__":
    main()
