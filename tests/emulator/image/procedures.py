"""CeresMeta's procedure manager: how the shards the scheduler picks are really opened.

META v1.2.2:server/coordinator/procedure/manager_impl.go (unchanged in what follows up to HDB v2.0.0):

- The scheduler submits a procedure every tick; nothing filters duplicates ("TODO: Filter duplicate
  submitted Procedure", v1.2.7 manager_impl.go:78); the waiting queue holds 1000.
- Every 100 ms the manager pops the waiting procedures whose delay is over. One whose cluster-view
  version changed since it was made is dropped (checkValid, :179-199); one that cannot take the
  procedure lock of every shard it touches goes back with a 500 ms delay (:203-236).
- A running procedure holds the locks of all its shards until it returns (:156-176). A batch
  (from 1.2.4) runs its transfer-leader procedures concurrently and returns when every one has
  (v1.2.7 operation/transferleader/batch_transfer_leader.go:85-106).
- A transfer-leader procedure sends OpenShard(shard, shard view version + 1) to the new leader node
  with the manager's context: no deadline (v1.2.2 eventdispatch/dispatch_impl.go:27-41,
  transfer_leader.go:259-282). Up to 1.2.7 it persists itself at each step (transfer_leader.go:
  170-214); 2.0.0 does not (HDB v2.0.0:horaemeta/.../transferleader/transfer_leader.go:63-64).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PROMOTE_INTERVAL_S = 0.1
"""defaultPromoteDelay (manager_impl.go:20)."""
REQUEUE_DELAY_S = 0.5
"""defaultWaitingQueueDelay (manager_impl.go:19)."""
QUEUE_LEN = 1000
"""defaultWaitingQueueLen (manager_impl.go:18)."""
DIAL_TIMEOUT_S = 20.0
"""grpc-go's minimum connect timeout: a node that does not accept the connection fails the call."""

Log = Callable[..., None]


@dataclass
class Procedure:
    id: int
    opens: list[tuple[int, int, str]]
    """(sub-procedure id, shard, new leader node) of each transfer-leader procedure."""
    cluster_version: int
    batch: bool
    reason: str = ""
    seq: int = 0
    ready_at: float = 0.0

    @property
    def shards(self) -> set[int]:
        return {shard for _, shard, _ in self.opens}


@dataclass
class Manager:
    """One per leadership term (the cluster, and its manager, are rebuilt by every new leader)."""

    persist: bool
    """1.x persists transfer-leader procedures; 2.0.0 does not."""
    current_version: Callable[[], int]
    """The cluster view version now (checkValid)."""
    shard_version: Callable[[int], int]
    """A shard's view version now (OpenShard carries it + 1)."""
    save: Callable[[int, int, str, str, str], None]
    """save(procedure id, shard, node, fsm state, state): persist one step (1.x)."""
    log: Log
    waiting: list[Procedure] = field(default_factory=list)
    held: set[int] = field(default_factory=set)
    running: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def start(self) -> None:
        threading.Thread(target=self._promote_loop, name="procedures", daemon=True).start()

    def stop(self) -> None:
        with self.lock:
            self.running = False
            self.waiting.clear()

    def submit(self, procedure: Procedure) -> bool:
        with self.lock:
            if len(self.waiting) >= QUEUE_LEN:
                self.log(
                    "scheduler submit new procedure failed",
                    ProcedureID=procedure.id,
                    error=f"queue max length is {QUEUE_LEN}",
                )
                return False
            procedure.seq, procedure.ready_at = next(self.counter), time.monotonic()
            self.waiting.append(procedure)
        return True

    def _promote_loop(self) -> None:
        while True:
            time.sleep(PROMOTE_INTERVAL_S)
            version = self.current_version()  # before self.lock: meta takes its lock, then this one
            with self.lock:
                if not self.running:
                    return
                now = time.monotonic()
                ready = sorted(
                    (p for p in self.waiting if p.ready_at <= now), key=lambda p: (p.ready_at, p.seq)
                )
                started = []
                for procedure in ready:
                    self.waiting.remove(procedure)
                    if procedure.cluster_version != version:
                        continue  # checkValid: the topology moved on; dropped
                    if procedure.shards & self.held:
                        procedure.ready_at = now + REQUEUE_DELAY_S
                        self.waiting.append(procedure)
                        continue
                    self.held |= procedure.shards
                    started.append(procedure)
            for procedure in started:
                self.log("promote procedure", procedureID=procedure.id)
                threading.Thread(target=self._run, args=(procedure,), name="procedure", daemon=True).start()

    def _run(self, procedure: Procedure) -> None:
        self.log("procedure start", procedureID=procedure.id)
        try:
            if procedure.batch:
                threads = [
                    threading.Thread(target=self._transfer_leader, args=sub, daemon=True)
                    for sub in procedure.opens
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()  # errgroup.Wait: the batch returns when every sub-procedure has
            else:
                self._transfer_leader(*procedure.opens[0])
        finally:
            self.log("procedure finish", procedureID=procedure.id)
            with self.lock:
                self.held -= procedure.shards

    def _transfer_leader(self, sub_id: int, shard: int, node: str) -> None:
        """Begin -> CloseOldLeader (no old leader here) -> OpenNewLeader -> Finish, persisted at each
        step up to 1.2.7; a failed step leaves the last record as it was (state running)."""
        self._save(sub_id, shard, node, "StateBegin", "running")
        self._save(sub_id, shard, node, "StateCloseOldLeader", "running")
        self.log("try to open shard", procedureID=sub_id, shardID=shard, newLeader=node)
        error = open_shard(node, shard, self.shard_version(shard) + 1)
        if error is not None:
            self.log(
                "procedure start failed",
                procedureID=sub_id,
                shard_id=shard,
                node=node,
                error=f"transferLeader procedure open new leader: open shard: {error}",
            )
            return
        self.log("open shard finish", procedureID=sub_id, shardID=shard, newLeader=node)
        self._save(sub_id, shard, node, "StateOpenNewLeader", "running")
        self._save(sub_id, shard, node, "StateFinish", "finished")
        self.log("transfer leader finish", procedureID=sub_id, shardID=shard, newLeaderNode=node)

    def _save(self, sub_id: int, shard: int, node: str, fsm_state: str, state: str) -> None:
        if self.persist:
            try:
                self.save(sub_id, shard, node, fsm_state, state)
            except Exception as err:  # a failed persist fails the procedure's step, as in the real one
                self.log("transferLeader procedure persist failed", procedureID=sub_id, error=repr(err))


def open_shard(endpoint: str, shard: int, version: int) -> str | None:
    """MetaEventService.OpenShard to the node's registered endpoint (addr:grpc_port), one call per
    shard, no deadline; None on success, else the error. An empty host dials the local machine, as
    Go's net.Dial does for ":port"."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or ":" in host or not port.isdigit():
        return f"invalid endpoint {endpoint!r}"
    request = {
        "service": "meta_event.MetaEventService",
        "method": "OpenShard",
        "shard": {"id": shard, "role": "Leader", "version": version},
    }
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=DIAL_TIMEOUT_S) as conn:
            conn.sendall(b"OPEN " + json.dumps(request).encode() + b"\n")
            conn.settimeout(None)  # no deadline: a node that never answers holds the procedure for ever
            line = conn.makefile("rb").readline()
    except OSError as err:
        return f"rpc error: code = Unavailable desc = connection error: {err}"
    if not line:
        return "rpc error: code = Unavailable desc = error reading from server: EOF"
    try:
        answer = json.loads(line)
    except ValueError:
        return f"undecodable answer {line[:100]!r}"
    if answer.get("code", 0) != 0:
        return f"event dispatch failed, cause: open shard, addr:{endpoint}, err:{answer.get('error')}"
    return None
