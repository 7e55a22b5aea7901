"""CeresMeta / HoraeMeta stand-in (see ../README.md for what mirrors which source).

Runs a real etcd from the rendered configuration and serves the version's HTTP API once etcd is
ready. The etcd leader campaigns for the meta leader key (protobuf Member, `lease-sec` lease,
create-if-absent); the meta leader loads or creates the default cluster in etcd where the real
meta keeps it (metastore.py), serves the CeresDB nodes' RPCs (heartbeats, schema ids, tables of
shards; followers forward them to the leader), and runs the scheduler of its version every tick
(5 s; `ceres-emulator-fault tick S` for tests), whose procedures open shards as the real procedure
manager does (procedures.py). HTTP routes are forwarded like the real server: to the leader's
advertise host with this member's own HTTP port, with no loop guard (metahttp.py).
On SIGTERM it revokes its leader lease and exits 0, its etcd dying with it; when etcd fails or does
not get ready in time it exits 0 too, as the real one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import ThreadingHTTPServer
from typing import NamedTuple

import common
import etcdv3
import metaconfig
import metahttp
import metastore
import procedures
import scheduling

FLAVOR, VERSION = common.release()
V2 = VERSION >= (2, 0, 0)
HTTP_PORT_KEY = metaconfig.HTTP_PORT_KEY
SCHEDULER_INTERVAL_S = 5.0
"""`schedulerInterval` (META v1.2.2:server/coordinator/scheduler/scheduler_manager.go:24)."""
CLUSTER_CREATE_DELAY_S = 2.0
"""The real leader creates it right after election (META v1.2.2:server/server.go:293-300); the
stand-in widens that window so that pitfall 6 (CeresDB started too early exits 1) is observable."""
LEADER_LOOP_S = 0.5
RPC_SERVICE = "meta_service.MetaRpcService" if V2 else "meta_service.CeresmetaRpcService"
"""The gRPC service meta serves: horaedbproto renamed it at 2.0.0 (apache/incubator-horaedb-proto
v1.0.16 vs v2.0.0-rc.6 protos/meta_service.proto); a call to the other name is Unimplemented."""
FORWARD_TIMEOUT_S = 5.0
PROCEDURE_ID_STEP = 5
"""defaultAllocStep of the procedure id allocator (META v1.2.2:server/cluster/cluster.go:21)."""


def _log(message: str, **fields: object) -> None:
    common.log("meta", message, **fields)


def _local_url(url: str) -> str:
    """A URL this process can reach its own listener at (0.0.0.0 -> 127.0.0.1)."""
    parsed = urllib.parse.urlparse(url.split(",", maxsplit=1)[0])
    host = "127.0.0.1" if parsed.hostname in ("0.0.0.0", None) else parsed.hostname
    return f"http://{host}:{parsed.port}"


def _port(url: str) -> int:
    return urllib.parse.urlparse(url).port or 2379


class Member(NamedTuple):
    name: str
    id: int
    endpoint: str


def rpc_error(code: int, message: str) -> dict[str, object]:
    return {"code": code, "error": message}


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
        self.client_port = _port(self.client_url)
        # Member.Endpoint: the first advertise-client-url (META v1.2.7:server/server.go:173).
        self.endpoint = str(config["advertise-client-urls"]).split(",")[0]
        self.lease_sec = int(str(config["lease-sec"]))
        self.batch_size = int(
            str(config.get("procedure-executing-batch-size", scheduling.DEFAULT_BATCH_SIZE))
        )
        self.id_step = int(str(config["id-allocator-step"]))
        self.etcd = etcdv3.Client(self.client_url, timeout_s=2.0)
        # `<storage-root-path>/members/leader` from 1.2.7; the root is passed as "" before
        # (META v1.2.2:server/server.go:149, v1.2.7:server/server.go:173, member.go:37-39).
        self.leader_key = f"{self.root if VERSION >= (1, 2, 7) else ''}/members/leader".encode()
        self.keys = metastore.Keys(self.root)
        # The cluster-id allocator lives as long as the process (NewManagerImpl in CreateServer).
        self.cluster_ids = metastore.Allocator(self.etcd, self.keys.cluster_id_allocator(), self.id_step)
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.store_lock = threading.Lock()
        self.member_id = 0
        self.leader_lease = 0
        self.leader_since = 0.0
        self.next_keepalive = 0.0
        self.cached_leader: Member | None = None
        self.term = 0
        # The cluster manager, started on the leader only (AfterElected), stopped when it steps down.
        self.cluster: metastore.Cluster | None = None
        self.view: scheduling.View | None = None
        self.shard_versions: dict[int, int] = {}
        self.schemas: dict[str, int] = {}
        self.schema_ids: metastore.Allocator | None = None
        self.procedure_ids: metastore.Allocator | None = None
        self.procedures: procedures.Manager | None = None
        self.registered: dict[str, scheduling.Registered] = {}
        self.rng = random.Random()
        self.process: subprocess.Popen[bytes] | None = None
        self.http: ThreadingHTTPServer | None = None
        self.stopping = False

    # -- etcd --
    def start_etcd(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        c = self.config
        args = [
            "etcd",
            "--name",
            self.name,
            "--data-dir",
            f"{self.data_dir}/etcd",
            "--wal-dir",
            f"{self.data_dir}/wal",
            "--listen-client-urls",
            str(c["client-urls"]),
            "--advertise-client-urls",
            str(c["advertise-client-urls"]),
            "--listen-peer-urls",
            str(c["peer-urls"]),
            "--initial-advertise-peer-urls",
            str(c["advertise-peer-urls"]),
            "--initial-cluster",
            str(c["initial-cluster"]),
            "--initial-cluster-state",
            str(c["initial-cluster-state"]),
            "--initial-cluster-token",
            str(c["initial-cluster-token"]),
            "--heartbeat-interval",
            str(c["tick-interval-ms"]),
            "--election-timeout",
            str(c["election-timeout-ms"]),
            "--enable-pprof",
            "--logger",
            "zap",
            "--log-level",
            self._etcd_level(),
            # The real server writes etcd's log to <data-dir>/etcd.log, not stdout.
            "--log-outputs",
            f"{self.data_dir}/etcd.log",
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

    def kill_etcd(self) -> None:
        """The embedded etcd ends with the process that embeds it: never stopped gracefully (no
        leadership transfer), as when the real meta's main returns (META v1.2.2:cmd/meta/main.go:
        105-116 never closes it)."""
        if self.process is not None and self.process.poll() is None:
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
            # BeforeTransfer: the cluster manager stops; its registered-node cache, its procedures and
            # its id allocators are gone.
            manager, self.procedures = self.procedures, None
            self.cluster, self.view, self.registered = None, None, {}
            self.term += 1
        if manager is not None:
            manager.stop()
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
            since, term = time.monotonic() - self.leader_since, self.term
        loaded = self.load_cluster()
        if loaded is None:
            if since < CLUSTER_CREATE_DELAY_S:
                return
            self.create_cluster()
            loaded = self.load_cluster()
            if loaded is None:
                return
        cluster, view, shard_versions, schemas = loaded
        manager = procedures.Manager(
            persist=not V2,
            current_version=self.view_version,
            shard_version=lambda s: self.shard_versions.get(s, 0),
            save=self.save_procedure,
            log=_log,
        )
        with self.lock:
            if self.leader_lease == 0 or self.term != term:
                return  # stepped down meanwhile
            self.cluster, self.view, self.shard_versions, self.schemas = (
                cluster,
                view,
                shard_versions,
                schemas,
            )
            self.schema_ids = metastore.Allocator(
                self.etcd, self.keys.schema_id_allocator(cluster.name), self.id_step
            )
            procedure_key = (
                self.keys.schema_id_allocator(cluster.name)[: -len(b"SchemaID")] + b"ProcedureID"
                if V2
                else b"procedure"
            )
            self.procedure_ids = metastore.Allocator(self.etcd, procedure_key, PROCEDURE_ID_STEP)
            self.procedures = manager
            self.wake.notify_all()
        manager.start()

    def load_cluster(
        self,
    ) -> tuple[metastore.Cluster, scheduling.View, dict[int, int], dict[str, int]] | None:
        """ListClusters, then the cluster's latest view, shard views and schemas."""
        cluster = None
        for _key, value, _rev, _lease in self.etcd.range_prefix(self.keys.cluster_prefix()):
            record = metastore.Cluster.decode(value)
            if record.name == self.cluster_name:
                cluster = record
        if cluster is None:
            return None
        latest = self.etcd.get(self.keys.cluster_view_latest(cluster.id))
        view = scheduling.View()
        if latest is not None:
            found = self.etcd.get(self.keys.cluster_view(cluster.id, int(latest[0])))
            if found is not None:
                version, state, nodes = metastore.decode_cluster_view(found[0])
                view = scheduling.View(state, version, nodes)
        shard_versions: dict[int, int] = {}
        prefix = self.keys.shard_view_latest(cluster.id, 0).rsplit(b"/", 2)[0] + b"/"
        for key, value, _rev, _lease in self.etcd.range_prefix(prefix):
            parts = key.decode().rsplit("/", 2)
            if parts[-1] == "latest_version":
                shard_versions[int(parts[-2])] = int(value)
        schemas = {}
        for _key, value, _rev, _lease in self.etcd.range_prefix(self.keys.schema_prefix(cluster.id)):
            fields = metastore.decode(value)
            schemas[metastore._str(fields, 3)] = metastore._int(fields, 1)
        return cluster, view, shard_versions, schemas

    def create_cluster(self) -> None:
        """CreateCluster: allocate the id, store the record (if absent), then Init: the shard views
        and the empty cluster view (META v1.2.2:server/cluster/manager.go:90-160, cluster_metadata.go:
        655-676)."""
        now = metastore.now_ms()
        cluster = metastore.Cluster(
            id=self.cluster_ids.alloc(),
            name=self.cluster_name,
            # Frozen at creation: later config changes do not reach it.
            min_node_count=int(str(self.config["default-cluster-node-count"])),
            shard_total=int(str(self.config["default-cluster-shard-total"])),
            topology_type=str(self.config["topology-type"]),
            enable_schedule=bool(self.config["enable-schedule"]),
            procedure_executing_batch_size=self.batch_size if VERSION >= (1, 2, 4) else 0,
            created_at=now,
            modified_at=now,
        )
        key = self.keys.cluster(cluster.id)
        if not self.etcd.txn([etcdv3.key_missing(key)], [etcdv3.op_put(key, cluster.encode())]):
            return
        views = []
        compares = []
        for shard in range(cluster.shard_total):
            view_key, latest_key = (
                self.keys.shard_view(cluster.id, shard, 0),
                self.keys.shard_view_latest(cluster.id, shard),
            )
            compares += [etcdv3.key_missing(view_key), etcdv3.key_missing(latest_key)]
            views += [
                etcdv3.op_put(view_key, metastore.encode_shard_view(shard, 0, now)),
                etcdv3.op_put(latest_key, metastore.fmt_id(0).encode()),
            ]
        self.etcd.txn(compares, views)
        self.put_view(cluster.id, scheduling.View(), now)
        _log(
            "created default cluster",
            cluster=self.cluster_name,
            cluster_id=cluster.id,
            min_node_count=cluster.min_node_count,
        )

    def put_view(self, cluster_id: int, view: scheduling.View, created_at: int | None = None) -> None:
        """CreateClusterView / UpdateClusterView: the new version's key, then latest_version."""
        value = metastore.encode_cluster_view(
            cluster_id, view.version, view.state, list(view.shard_nodes), created_at or metastore.now_ms()
        )
        with self.store_lock:
            self.etcd.txn(
                [],
                [
                    etcdv3.op_put(self.keys.cluster_view(cluster_id, view.version), value),
                    etcdv3.op_put(
                        self.keys.cluster_view_latest(cluster_id), metastore.fmt_id(view.version).encode()
                    ),
                ],
            )

    def view_version(self) -> int:
        with self.lock:
            return self.view.version if self.view is not None else -1

    def save_procedure(self, procedure_id: int, shard: int, node: str, fsm_state: str, state: str) -> None:
        cluster_id = 0  # EtcdStorageImpl.clusterID is never set up to 1.2.7 (storage_impl.go:29-34)
        self.etcd.put(
            self.keys.procedure(cluster_id, procedure_id),
            metastore.procedure_record(procedure_id, shard, node, fsm_state, state),
        )

    # -- the RPC service (CeresmetaRpcService; META v1.2.2:server/service/grpc/service.go, forward.go) --
    def handle_rpc(self, request: dict[str, object]) -> dict[str, object]:
        if request.get("service") != RPC_SERVICE:
            return rpc_error(
                12, f'status: Unimplemented, message: "unknown service {request.get("service")}"'
            )
        method = str(request.get("method", ""))
        with self.lock:
            leader = self.cached_leader
        if leader is None:
            return rpc_error(
                500, f"grpc {method}: get forwarded ceresmeta client: get forwarded addr: no leader found"
            )
        if not self.is_local(leader):
            # Followers forward every call to the leader's endpoint (its client URL: the gRPC port).
            try:
                return common.rpc_call(_port(leader.endpoint), request, FORWARD_TIMEOUT_S)
            except common.RpcError as err:
                return rpc_error(14, f"grpc {method}: forward to {leader.endpoint}: {err}")
        with self.lock:
            cluster = self.cluster
        if cluster is None or request.get("cluster") != cluster.name:
            return rpc_error(
                404, f"grpc {method}: (#404)cluster not found, cause:cluster name:{request.get('cluster')}"
            )
        if method == "NodeHeartbeat":
            return self.node_heartbeat(cluster, request)
        if method == "AllocSchemaID":
            return self.alloc_schema_id(cluster, str(request.get("name", "")))
        if method == "GetTablesOfShards":
            ids = [int(i) for i in request.get("shard_ids", [])]  # type: ignore[union-attr]
            with self.lock:
                versions = dict(self.shard_versions)
            return {
                "code": 0,
                "tables_by_shard": {
                    str(i): {
                        "shard_info": {"id": i, "role": "Leader", "version": versions.get(i, 0)},
                        "tables": [],
                    }
                    for i in ids
                },
            }
        return rpc_error(12, f'status: Unimplemented, message: "unknown method {method}"')

    def node_heartbeat(self, cluster: metastore.Cluster, request: dict[str, object]) -> dict[str, object]:
        """RegisterNode: the node record is stored on every heartbeat, then the leader's cache and
        (outside Stable) the view (META v1.2.2:server/cluster/metadata/cluster_metadata.go:321-369)."""
        node = request.get("node") or {}
        assert isinstance(node, dict)
        endpoint = str(node.get("endpoint", ""))
        infos = node.get("shard_infos") or []
        assert isinstance(infos, list)
        ids = [int(i["id"]) for i in infos]
        # A missing status means Ready; PartialOpen is meaningful from 1.2.5.
        partial = (
            tuple(int(i["id"]) for i in infos if i.get("status") == "PartialOpen")
            if VERSION >= (1, 2, 5)
            else ()
        )
        self.etcd.put(
            self.keys.node(cluster.id, endpoint),
            metastore.encode_node(
                endpoint, metastore.now_ms(), str(node.get("zone", "")), str(node.get("binary_version", ""))
            ),
        )
        with self.lock:
            if self.view is None or self.cluster is not cluster:
                return rpc_error(404, "grpc NodeHeartbeat: (#404)cluster not found")
            changed = scheduling.register_node(
                self.view, self.registered, endpoint, ids, cluster.min_node_count, time.monotonic(), partial
            )
            snapshot = (
                scheduling.View(self.view.state, self.view.version, list(self.view.shard_nodes))
                if changed
                else None
            )
        if snapshot is not None:
            self.put_view(cluster.id, snapshot)
        return {"code": 0}

    def alloc_schema_id(self, cluster: metastore.Cluster, name: str) -> dict[str, object]:
        """GetOrCreateSchema: an existing schema's id, else a new one stored under schema/info."""
        with self.lock:
            known, allocator = self.schemas.get(name), self.schema_ids
        if known is not None:
            return {"code": 0, "id": known, "name": name}
        assert allocator is not None
        schema_id = allocator.alloc()
        key = self.keys.schema(cluster.id, schema_id)
        self.etcd.txn(
            [etcdv3.key_missing(key)],
            [etcdv3.op_put(key, metastore.encode_schema(schema_id, cluster.id, name, metastore.now_ms()))],
        )
        with self.lock:
            self.schemas.setdefault(name, schema_id)
        _log("[AllocSchemaID]", schemaName=name, clusterName=cluster.name, schemaID=schema_id)
        return {"code": 0, "id": schema_id, "name": name}

    def loop(self) -> None:
        while not self.stopping:
            try:
                self.leadership_step()
                if self.is_leader():
                    self.ensure_cluster()
            except Exception as err:  # the loop outlives any one failed pass
                _log("leader loop error", error=repr(err))
            time.sleep(LEADER_LOOP_S)

    # -- the scheduler manager (META v1.2.2:server/coordinator/scheduler/scheduler_manager.go:117-151) --
    def tick_s(self) -> float:
        return common.read_tick() or SCHEDULER_INTERVAL_S

    def notify(self) -> None:
        with self.lock:
            self.wake.notify_all()

    def scheduler_loop(self) -> None:
        """Sleep a tick, then one pass; a changed tick hook takes effect at once (the hooks' watcher
        wakes it), and within HOOK_POLL_S in any case: the tick is read again at least that often,
        since two changes between two polls of the watcher (3600, then 0.5) look like none to it."""
        while not self.stopping:
            started = time.monotonic()
            with self.lock:
                while (remaining := started + self.tick_s() - time.monotonic()) > 0:
                    self.wake.wait(min(remaining, common.HOOK_POLL_S))
            try:
                self.schedule_once()
            except Exception as err:  # the loop outlives any one failed pass
                _log("scheduler failed", error=repr(err))

    def schedule_once(self) -> None:
        with self.lock:
            if self.leader_lease == 0 or self.cluster is None or self.view is None or self.procedures is None:
                return
            cluster, manager = self.cluster, self.procedures
            # Logged at DEBUG by the real one (v1.2.7 manager/scheduler_manager.go:154): here at
            # every level, so that tests can count passes instead of sleeping.
            _log("scheduler manager invoke", state=self.view.state, version=self.view.version)
            if not cluster.enable_schedule and self.view.state == scheduling.STABLE:
                return  # v1.2.7 manager/scheduler_manager.go:158-160
            if scheduling.prepare_finished(self.view, cluster.shard_total):
                self.view.state, self.view.version = scheduling.STABLE, self.view.version + 1
                snapshot: scheduling.View | None = scheduling.View(
                    self.view.state, self.view.version, list(self.view.shard_nodes)
                )
                passes: list[scheduling.Pass] = []
            else:
                snapshot = None
                now = time.monotonic()
                registered = dict(self.registered)
                passes = [
                    scheduling.static_schedule(
                        VERSION, self.view, cluster.shard_total, registered, now, self.rng, self.batch_size
                    )
                ]
                order = list(registered)
                self.rng.shuffle(order)  # RegisteredNodes comes from a Go map
                passes.append(
                    scheduling.reopen_schedule(VERSION, self.view, registered, now, order, self.batch_size)
                )
            cluster_version = self.view.version
        if snapshot is not None:
            _log("try to update cluster state to stable", version=snapshot.version)
            self.put_view(cluster.id, snapshot)
            return
        for result in passes:
            if result.error:
                _log("scheduler failed", error=result.error)
                continue
            if result.opens:
                self.submit(manager, result, cluster_version)

    def submit(self, manager: procedures.Manager, result: scheduling.Pass, cluster_version: int) -> None:
        """1.2.2: one transfer-leader procedure; from 1.2.4 a batch of them (its own id last)."""
        with self.lock:
            allocator = self.procedure_ids
        assert allocator is not None
        opens = [(allocator.alloc(), shard, node) for shard, node in result.opens]
        batch = VERSION >= (1, 2, 4)
        procedure_id = allocator.alloc() if batch else opens[0][0]
        procedure = procedures.Procedure(procedure_id, opens, cluster_version, batch, result.reason)
        by_node: dict[str, list[int]] = {}
        for _sub, shard, node in opens:
            by_node.setdefault(node, []).append(shard)
        _log(
            "scheduler submit new procedure",
            ProcedureID=procedure_id,
            Reason=result.reason,
            shards=";".join(f"{n}={ids}" for n, ids in by_node.items()),
        )
        manager.submit(procedure)

    # -- what the HTTP API reads (metahttp.py) --
    def node_shards(self) -> dict[str, object]:
        assert self.view is not None
        shards = []
        for shard, name in self.view.shard_nodes:
            info: dict[str, object] = {"ID": shard, "Role": 1, "Version": self.shard_versions.get(shard, 0)}
            if VERSION >= (1, 2, 5):
                info["Status"] = 0  # metadata.ShardInfo has Status from 1.2.5; GetNodeShards leaves it unset
            shards.append({"ShardInfo": info, "ShardNode": {"ID": shard, "ShardRole": 1, "NodeName": name}})
        return {"ClusterTopologyVersion": self.view.version, "NodeShards": shards}

    def cluster_json(self) -> dict[str, object]:
        """storage.Cluster as GET /api/v1/clusters shows it (no JSON tags: Go field names)."""
        assert self.cluster is not None
        c = self.cluster
        record: dict[str, object] = {"ID": c.id, "Name": c.name, "MinNodeCount": c.min_node_count}
        if not V2:
            record["ReplicationFactor"] = 0  # deprecated; CreateCluster never sets it (manager.go:114-123)
        record["ShardTotal"] = c.shard_total
        if not V2:
            record["EnableSchedule"] = c.enable_schedule
        record["TopologyType"] = c.topology_type
        if VERSION >= (1, 2, 4):
            record["ProcedureExecutingBatchSize"] = c.procedure_executing_batch_size
        record["CreatedAt"], record["ModifiedAt"] = c.created_at, c.modified_at
        return record

    def diagnose_shards(self) -> dict[str, object]:
        """GET /debug/diagnose/<cluster>/shards (1.2.7+): shards no registered node reported, and
        reported shards that are not Ready (META v1.2.7:server/service/http/api.go:546-591, types.go:65-74)."""
        assert self.cluster is not None
        unready: dict[str, dict[str, str]] = {}
        reported: set[int] = set()
        for name, node in self.registered.items():
            for shard in node.shards:
                if shard in node.partial:
                    unready[str(shard)] = {"node_name": name, "status": "partialOpen"}
                reported.add(shard)
        return {
            "unregistered_shards": [s for s in range(self.cluster.shard_total) if s not in reported],
            "unready_shards": unready,
        }

    # -- stop --
    def shutdown(self, signum: int) -> None:
        """The signal cancels the server's context: the leader's campaign returns and closes its lease
        (the leader key goes at once), the HTTP server stops, and main returns; the embedded etcd is
        never stopped, it ends with the process (META v1.2.2:cmd/meta/main.go:88-116; server/server.go:
        98-114,198-201; member/member.go:157-169,233-235)."""
        _log("got signal to exit", signal=signum)
        self.stopping = True
        if self.is_leader():
            _log("server is closed")
            self.step_down(revoke=True)
        if self.http is not None:
            self.http.socket.close()
        self.kill_etcd()
        os._exit(0)


def main() -> None:
    path = (
        sys.argv[sys.argv.index("--config") + 1]
        if "--config" in sys.argv
        else "/etc/ceresmeta/ceresmeta.toml"
    )
    config = metaconfig.load(path)
    _log(
        "server start with config",
        **{k: config[k] for k in ("node-name", "client-urls", "storage-root-path", HTTP_PORT_KEY)},
    )
    meta = Meta(config)
    common.HOOKS = common.Hooks("meta")
    common.HOOKS.listeners.append(meta.notify)  # a new tick takes effect at once
    common.HOOKS.start()

    def on_signal(signum: int, _frame: object) -> None:
        # signal.Notify(SIGHUP, SIGINT, SIGTERM, SIGQUIT): the main thread is inside Popen.wait(),
        # so the stop runs on its own thread.
        if not meta.stopping:
            meta.stopping = True
            threading.Thread(target=meta.shutdown, args=(signum,), name="shutdown", daemon=True).start()

    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, on_signal)
    meta.start_etcd()
    if not meta.wait_etcd_ready():
        # CreateServer / srv.Run failures are only logged, and main returns: exit code 0.
        _log("fail to start etcd server", timeout_ms=config["etcd-start-timeout-ms"])
        meta.kill_etcd()
        sys.exit(0)
    _log("etcd ready; server running")

    try:
        server = ThreadingHTTPServer(("0.0.0.0", meta.http_port), metahttp.make_handler(meta))
        server.daemon_threads = True
        meta.http, meta.http_serving = server, True
        threading.Thread(target=server.serve_forever, args=(3600,), name="http", daemon=True).start()
    except OSError as err:
        # The real HTTP server runs in a goroutine whose listen error is only logged.
        _log("http service failed to start", port=meta.http_port, error=err)
    common.serve_rpc(meta.client_port, meta.handle_rpc, "meta")
    threading.Thread(target=meta.loop, name="leader", daemon=True).start()
    threading.Thread(target=meta.scheduler_loop, name="scheduler", daemon=True).start()
    assert meta.process is not None
    code = meta.process.wait()
    if not meta.stopping:
        _log("etcd exited; server stops", code=code)
        sys.exit(0)
    time.sleep(3600)  # the shutdown thread ends the process


if __name__ == "__main__":
    main()
