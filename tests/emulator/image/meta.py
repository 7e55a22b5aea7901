"""CeresMeta / HoraeMeta stand-in (see ../README.md for what mirrors which reference section).

Runs a real etcd from the rendered configuration and serves the version's HTTP API once etcd is
ready. The etcd leader campaigns for the meta leader key (protobuf Member, `lease-sec` lease,
create-if-absent); the meta leader creates the default cluster, registers CeresDB nodes from their
heartbeats and runs the static-topology scheduler of its version every tick (5 s, as the real
`schedulerInterval`; `ceres-emulator-fault tick S` changes it for tests). Followers forward like
the real server: to the leader's advertise host with their own HTTP port, with no loop guard.
Exits 0 when etcd fails or does not get ready in time, as the real one.
"""

from __future__ import annotations

import json
import os
import random
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
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import NamedTuple

import common
import etcdv3
import scheduling

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
HTTP_PORT_KEY, HTTP_PORT_ENV = ("default-http-port", "DEFAULT_HTTP_PORT") if VERSION < (1, 2, 7) else ("http-port", "HTTP_PORT")
HEALTH_PATH = "/api/v1/healthCheck" if VERSION < (1, 2, 7) else "/api/v1/health"
SCHEDULER_INTERVAL_S = 5.0
"""`schedulerInterval` (META v1.2.2:server/coordinator/scheduler/scheduler_manager.go:24)."""
CLUSTER_CREATE_DELAY_S = 2.0
"""The real leader creates it right after election (META v1.2.2:server/server.go:293-300); the
stand-in widens that window so that pitfall 6 (CeresDB started too early exits 1) is observable."""
LEADER_LOOP_S = 0.5
MSG_PREFIX = "err: " if VERSION < (1, 2, 7) else ""
"""Error messages: `fmt.Sprintf("err: %s", ...)` at 1.2.2, the bare error from 1.2.7's `wrap`
(META v1.2.2:server/service/http/api.go:280-314, v1.2.7:api.go:176-190,693-718)."""
SELF_FORWARD_CAP_S = 120.0
"""A follower forwarding to itself recurses until the caller gives up; the stand-in holds the
request instead, at most this long."""


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
    if VERSION >= (1, 2, 7):  # META v1.2.7:server/config/config.go:148
        keys["procedure-executing-batch-size"] = ("PROCEDURE_EXECUTING_BATCH_SIZE", scheduling.DEFAULT_BATCH_SIZE)
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
    # The seam for ceres_supervisor/desired/serverschema.py: go-toml fails on a wrong type, never on an
    # unknown key.
    for segments, kind, message in common.schema_violations(document, "meta", VERSION, "meta") or []:
        if kind == "type":
            _panic(f"toml: {'.'.join(segments)}: {message}")
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


class Member(NamedTuple):
    name: str
    id: int
    endpoint: str


def format_http_addr(endpoint: str, http_port: int) -> str:
    """formatHTTPAddr: the leader's endpoint host with *this* node's HTTP port (META v1.2.2:
    server/service/http/forward.go:91-104)."""
    host_port = urllib.parse.urlparse(endpoint).netloc.split(":")
    if len(host_port) != 2:
        raise ValueError(f"parse leader addr, grpcAdd:{endpoint}")
    return f"{host_port[0]}:{http_port}"


# --- the server -----------------------------------------------------------------------------------

class Meta:
    def __init__(self, config: dict[str, object]) -> None:
        self.config = config
        self.name = str(config["node-name"])
        self.data_dir = str(config["data-dir"])
        self.root = str(config["storage-root-path"])
        self.cluster_name = str(config["default-cluster-name"])
        self.http_port = int(str(config[HTTP_PORT_KEY]))
        self.http_serving = False
        self.client_url = _local_url(str(config["client-urls"]))
        # Member.Endpoint: the first advertise-client-url (META v1.2.7:server/server.go:173).
        self.endpoint = str(config["advertise-client-urls"]).split(",")[0]
        self.lease_sec = int(str(config["lease-sec"]))
        self.batch_size = int(str(config.get("procedure-executing-batch-size", scheduling.DEFAULT_BATCH_SIZE)))
        self.etcd = etcdv3.Client(self.client_url, timeout_s=2.0)
        # `<storage-root-path>/members/leader` from 1.2.7; the root is passed as "" before
        # (META v1.2.2:server/server.go:149, v1.2.7:server/server.go:173, member.go:37-39).
        self.leader_key = f"{self.root if VERSION >= (1, 2, 7) else ''}/members/leader".encode()
        self.cluster_key = common.EMULATOR_PREFIX + self.cluster_name.encode()
        self.topology_key = self.cluster_key + b"/topology"
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.member_id = 0
        self.leader_lease = 0
        self.leader_since = 0.0
        self.next_keepalive = 0.0
        self.cached_leader: Member | None = None
        # The cluster manager, started on the leader only (AfterElected), stopped when it steps down.
        self.cluster: dict[str, object] | None = None
        self.view: scheduling.View | None = None
        self.registered: dict[str, scheduling.Registered] = {}
        self.heartbeat_seen: dict[str, int] = {}
        self.heartbeat_baseline: int | None = None
        self.in_flight: set[int] = set()
        self.rng = random.Random()
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

    # -- leadership (META v1.2.2:server/member/watch_leader.go Watch, member.go) --
    def is_leader(self) -> bool:
        with self.lock:
            return self.leader_lease != 0

    def is_local(self, leader: Member) -> bool:
        """IsLocal: the leader's id is this member's up to 1.2.6, its endpoint from 1.2.7
        (META v1.2.2:server/member/member.go:80,94; v1.2.7 compares Endpoint)."""
        if VERSION < (1, 2, 7):
            return leader.id == self.member_id
        return leader.endpoint == self.endpoint

    def leadership_step(self) -> None:
        status = self.etcd.status()
        header = status.get("header") or {}
        assert isinstance(header, dict)
        self.member_id = int(str(header.get("member_id", 0)))
        etcd_leader = int(str(status.get("leader", 0)))
        if self.is_leader():
            self.keep_leading(etcd_leader)
            return
        found = self.etcd.get(self.leader_key)
        if found is None:
            # Only the etcd leader campaigns; the others keep their cached leader and wait.
            if etcd_leader == self.member_id:
                self.campaign()
            return
        try:
            leader = Member(*etcdv3.decode_member(found[0]))
        except ValueError as err:
            _log("fail to get leader", error=f"invalid leader value: {err}")
            return
        with self.lock:
            if self.cached_leader != leader:
                _log("update leader cache", endpoint=leader.endpoint)
            self.cached_leader = leader
        if leader.id != etcd_leader and leader.id == self.member_id:
            # The leader is not the etcd leader and this member is it: reset (ResetLeader).
            self.etcd.delete(self.leader_key)

    def campaign(self) -> None:
        """CampaignAndKeepLeader: a lease of lease-sec, then create the key only if absent."""
        lease = self.etcd.grant(self.lease_sec)
        value = etcdv3.encode_member(self.name, self.member_id, self.endpoint)
        if not self.etcd.create_if_absent(self.leader_key, value, lease):
            return
        _log("[SetLeader]", leader_key=self.leader_key.decode(), leader=self.name)
        with self.lock:
            self.leader_lease, self.leader_since = lease, time.monotonic()
            self.next_keepalive = time.monotonic() + self.lease_sec / 3
            self.cached_leader = Member(self.name, self.member_id, self.endpoint)
            self.wake.notify_all()

    def keep_leading(self, etcd_leader: int) -> None:
        now = time.monotonic()
        if etcd_leader != self.member_id:
            _log("etcd leader changed and should re-assign the leadership", old_leader=self.name)
            self.step_down(revoke=True)
            return
        if now >= self.next_keepalive:
            if self.etcd.keepalive(self.leader_lease) <= 0:
                _log("no longer a leader because lease has expired")
                self.step_down(revoke=False)
                return
            self.next_keepalive = now + self.lease_sec / 3

    def step_down(self, revoke: bool) -> None:
        with self.lock:
            lease, self.leader_lease = self.leader_lease, 0
            # BeforeTransfer: the cluster manager stops; its registered-node cache is gone.
            self.cluster, self.view, self.registered = None, None, {}
            self.heartbeat_seen, self.heartbeat_baseline = {}, None
        if revoke and lease:
            try:
                self.etcd.revoke(lease)  # closing the lease deletes the leader key
            except etcdv3.EtcdError as err:
                _log("close lease failed", error=err)

    # -- the cluster manager, on the leader (AfterElected) --
    def ensure_cluster(self) -> None:
        """Loads the default cluster at once, or creates it a moment after election if absent."""
        with self.lock:
            if self.cluster is not None:
                return
            since = time.monotonic() - self.leader_since
        found = self.etcd.get(self.cluster_key)
        if found is None:
            if since < CLUSTER_CREATE_DELAY_S:
                return
            now_ms = int(time.time() * 1000)
            record: dict[str, object] = {"ID": 0, "Name": self.cluster_name,
                                         # Frozen at creation (pitfall 5): later config changes do not reach it.
                                         "MinNodeCount": int(str(self.config["default-cluster-node-count"]))}
            if not V2:
                record["ReplicationFactor"] = 1
            record["ShardTotal"] = int(str(self.config["default-cluster-shard-total"]))
            if not V2:
                record["EnableSchedule"] = True
            record["TopologyType"] = str(self.config["topology-type"])
            if VERSION >= (1, 2, 7):
                record["ProcedureExecutingBatchSize"] = self.batch_size
            record["CreatedAt"], record["ModifiedAt"] = now_ms, now_ms
            self.etcd.create_if_absent(self.cluster_key, json.dumps(record).encode())
            _log("created default cluster", cluster=self.cluster_name, min_node_count=record["MinNodeCount"])
            found = self.etcd.get(self.cluster_key)
        assert found is not None
        topology = self.etcd.get(self.topology_key)
        view = scheduling.View.from_json(json.loads(topology[0])) if topology else scheduling.View()
        with self.lock:
            self.cluster = json.loads(found[0])
            self.view = view
            self.wake.notify_all()

    def receive_heartbeats(self) -> None:
        """NodeHeartbeat -> RegisterNode, for each heartbeat put since the last look. A new leader
        starts with an empty cache: heartbeats older than its election do not register anyone."""
        with self.lock:
            if self.cluster is None or self.view is None:
                return
        rows, revision = self.etcd.range_prefix_at(self.cluster_key + b"/heartbeats/")
        now = time.monotonic()
        changed = False
        with self.lock:
            if self.view is None or self.cluster is None:
                return
            if self.heartbeat_baseline is None:
                self.heartbeat_baseline = revision
            for key, value, mod_revision, _lease in rows:
                endpoint = key.rsplit(b"/", 1)[1].decode()
                if mod_revision <= self.heartbeat_seen.get(endpoint, self.heartbeat_baseline):
                    continue
                self.heartbeat_seen[endpoint] = mod_revision
                try:
                    shards = [int(s) for s in json.loads(value).get("shards", [])]
                except (ValueError, TypeError, AttributeError):
                    continue
                changed |= scheduling.register_node(self.view, self.registered, endpoint, shards,
                                                    int(str(self.cluster["MinNodeCount"])), now)
            snapshot = self.view.to_json() if changed else None
        if snapshot is not None:
            self.etcd.put(self.topology_key, json.dumps(snapshot).encode())

    def loop(self) -> None:
        while not self.stopping:
            try:
                self.leadership_step()
                if self.is_leader():
                    self.ensure_cluster()
                    self.receive_heartbeats()
            except Exception as err:  # the loop outlives any one failed pass
                _log("leader loop error", error=repr(err))
            time.sleep(LEADER_LOOP_S)

    # -- the scheduler manager (META v1.2.2:server/coordinator/scheduler/scheduler_manager.go) --
    def tick_s(self) -> float:
        return common.read_tick() or SCHEDULER_INTERVAL_S

    def notify(self) -> None:
        with self.lock:
            self.wake.notify_all()

    def scheduler_loop(self) -> None:
        """Sleep a tick, then one pass; a changed tick hook takes effect at once."""
        while not self.stopping:
            started = time.monotonic()
            with self.lock:
                while (remaining := started + self.tick_s() - time.monotonic()) > 0:
                    self.wake.wait(remaining)
            try:
                self.schedule_once()
            except Exception as err:  # the loop outlives any one failed pass
                _log("scheduler failed", error=repr(err))

    def schedule_once(self) -> None:
        with self.lock:
            if self.leader_lease == 0 or self.cluster is None or self.view is None:
                return
            shard_total = int(str(self.cluster["ShardTotal"]))
            if scheduling.prepare_finished(self.view, shard_total):
                self.view.state, self.view.version = scheduling.STABLE, self.view.version + 1
                snapshot = self.view.to_json()
                result = None
            else:
                snapshot = None
                result = scheduling.static_schedule(VERSION, self.view, shard_total, dict(self.registered),
                                                    time.monotonic(), self.rng, self.batch_size)
                opens = [(s, n) for s, n in result.opens if s not in self.in_flight]
                self.in_flight.update(s for s, _ in opens)
        if snapshot is not None:
            _log("update cluster state to stable", version=snapshot["Version"])
            self.etcd.put(self.topology_key, json.dumps(snapshot).encode())
            return
        assert result is not None
        if result.error:
            _log("scheduler failed", error=result.error)
            return
        if not opens:
            return
        by_node: dict[str, list[int]] = {}
        for shard, node in opens:
            by_node.setdefault(node, []).append(shard)
        _log("scheduler submit new procedure", reason=result.reason,
             shards=";".join(f"{n}={ids}" for n, ids in by_node.items()))
        for node, shard_ids in by_node.items():
            threading.Thread(target=self.dispatch_open, args=(node, shard_ids), name="open-shard", daemon=True).start()

    def dispatch_open(self, endpoint: str, shard_ids: list[int]) -> None:
        """OpenShard: meta dials the node's registered endpoint (addr:grpc_port)."""
        try:
            host, sep, port = endpoint.rpartition(":")
            try:
                if not sep or ":" in host or not port.isdigit():
                    raise ValueError(f"invalid endpoint {endpoint!r}")
                with socket.create_connection((host, int(port)), timeout=2.0) as conn:
                    conn.sendall(b"OPEN " + json.dumps(shard_ids).encode() + b"\n")
                    conn.settimeout(30.0)
                    answer = json.loads(conn.makefile("rb").readline() or b"{}")
            except (OSError, ValueError) as err:
                _log("dispatch open shard failed", endpoint=endpoint, shards=shard_ids, error=err)
                return
            for shard, error in (answer.get("failed") or {}).items():
                _log("procedure start failed", shard_id=shard, node=endpoint, error=f"open shard: {error}")
            if answer.get("opened"):
                _log("transfer leader finish", shards=answer["opened"], new_leader_node=endpoint)
        finally:
            with self.lock:
                self.in_flight.difference_update(shard_ids)

    # -- HTTP (reference 2.1, 2.2) --
    def node_shards(self) -> dict[str, object]:
        assert self.view is not None
        shards = []
        for shard, name in self.view.shard_nodes:
            info: dict[str, object] = {"ID": shard, "Role": 1, "Version": 0}
            if VERSION >= (1, 2, 7):
                info["Status"] = 0  # not filled in by GetNodeShards: the zero value
            shards.append({"ShardInfo": info, "ShardNode": {"ID": shard, "ShardRole": 1, "NodeName": name}})
        return {"ClusterTopologyVersion": self.view.version, "NodeShards": shards}


def error_envelope(code: int, desc: str, msg: str, cause: str = "<nil>") -> dict[str, object]:
    return {"status": "error", "error": f"(#{code}){desc}, cause:{cause}", "msg": msg}


def make_handler(meta: Meta) -> type[common.JsonHandler]:
    class Handler(common.JsonHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == HEALTH_PATH:
                self.received("healthCheck" if VERSION < (1, 2, 7) else "health")
                self.send_json(200, {"status": "success"})  # never forwarded
            elif path == "/api/v1/clusters":
                self.received("listClusters")
                self.forwarded(self.list_clusters)
            else:
                self.not_found()

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/api/v1/getNodeShards":
                self.received("getNodeShards")
                self.forwarded(self.get_node_shards)
            else:
                self.not_found()

        def received(self, handler_name: str, **extra: object) -> None:
            """printRequestInsmt: every API request is logged at INFO (META v1.2.2:
            server/service/http/api.go:83-94)."""
            _log("receive http request", handlerName=handler_name, client_host=f"{self.client_address[0]}:{self.client_address[1]}",
                 method=self.command, body=self.body.decode(errors="replace"), **extra)

        def not_found(self) -> None:
            self.send_raw(404, b"404 page not found\n", "text/plain; charset=utf-8")

        # -- answers of the leader's cluster manager --
        def list_clusters(self) -> None:
            with meta.lock:
                clusters = [meta.cluster] if meta.cluster else []
            self.send_json(200, {"status": "success", "data": clusters})

        def get_node_shards(self) -> None:
            try:
                body = json.loads(self.body or b"")
                name = next((v for k, v in body.items() if k.lower() == "clustername"), "") if isinstance(body, dict) else ""
            except ValueError as err:
                self.send_json(400, error_envelope(400, "parse request params", f"{MSG_PREFIX}{err}"))
                return
            with meta.lock:
                answer = meta.node_shards() if meta.cluster is not None and name == meta.cluster_name else None
            if answer is None:
                self.send_json(500, error_envelope(500, "get node shards",
                                                   f"{MSG_PREFIX}get cluster: (#404)cluster not found, cause:cluster name:{name}"))
                return
            self.send_json(200, {"status": "success", "data": answer})

        # -- forwarding (META v1.2.2:server/service/http/forward.go:48-104) --
        def forwarded(self, answer: Callable[[], None]) -> None:
            with meta.lock:
                leader = meta.cached_leader
            if leader is None:
                _log("forward to leader failed", error="get forwarded addr: no leader found")
                self.send_json(500, error_envelope(500, "forward to leader", f"{MSG_PREFIX}get forwarded addr: no leader found"))
                return
            if meta.is_local(leader):
                answer()
                return
            try:
                addr = format_http_addr(leader.endpoint, meta.http_port)
            except ValueError as err:
                self.send_json(500, error_envelope(500, "forward to leader", f"{MSG_PREFIX}format http addr: {err}"))
                return
            host, port = addr.rsplit(":", 1)
            if meta.http_serving and int(port) == meta.http_port and common.is_local_host(host):
                self.forward_to_self(addr)
            else:
                self.proxy(addr)

        def forward_to_self(self, addr: str) -> None:
            """The leader's host with this member's port is this member (it binds 0.0.0.0): the real
            server sends the request to itself, again and again, each hop logged at INFO, until the
            caller gives up. Emulated: the request is held, one hop logged a second."""
            def hop(n: int) -> None:
                self.received(self.path.rsplit("/", 1)[-1], forwarded_to=addr, hop=n + 1)

            outcome = self.hold(lambda: True, cap_s=SELF_FORWARD_CAP_S, every_second=hop)
            if outcome == "cap":
                self.send_json(500, error_envelope(500, "forward to leader",
                                                   f'{MSG_PREFIX}{self.command} "http://{addr}{self.path}": dial tcp {addr}: socket: too many open files'))
            else:
                self.close_connection = True

        def proxy(self, addr: str) -> None:
            request = urllib.request.Request(
                f"http://{addr}{self.path}", data=self.body if self.command == "POST" else None, method=self.command,
                headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")},
            )
            try:
                with urllib.request.urlopen(request, timeout=SELF_FORWARD_CAP_S) as response:
                    status, raw, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
            except urllib.error.HTTPError as err:
                status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
            except OSError as err:
                _log("forward client send request failed", error=err)
                self.send_json(500, error_envelope(500, "forward to leader", f"{MSG_PREFIX}{err}"))
                return
            self.send_raw(status, raw, ctype or "application/json")

    return Handler


def main() -> None:
    path = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else "/etc/ceresmeta/ceresmeta.toml"
    config = load_config(path)
    _log("server start with config", **{k: config[k] for k in ("node-name", "client-urls", HTTP_PORT_KEY)})
    meta = Meta(config)
    common.HOOKS = common.Hooks("meta")
    common.HOOKS.listeners.append(meta.notify)  # a new tick takes effect at once
    common.HOOKS.start()

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
        meta.http_serving = True
        threading.Thread(target=server.serve_forever, args=(3600,), name="http", daemon=True).start()
    except OSError as err:
        # The real HTTP server runs in a goroutine whose listen error is only logged.
        _log("http service failed to start", port=meta.http_port, error=err)
    threading.Thread(target=meta.loop, name="leader", daemon=True).start()
    threading.Thread(target=meta.scheduler_loop, name="scheduler", daemon=True).start()
    assert meta.process is not None
    code = meta.process.wait()
    if not meta.stopping:
        _log("etcd exited; server stops", code=code)
    sys.exit(0)


if __name__ == "__main__":
    main()
