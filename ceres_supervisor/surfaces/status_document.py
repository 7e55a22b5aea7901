"""The `/v1/status` document (README, The status API), built from one snapshot. Pure.

Every field is present; a field with no value is null. Times are RFC 3339 strings. No config
value appears here, so no secret can.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from ceres_supervisor.decisions.planning import NodeRecord, NodeState, Plan
from ceres_supervisor.desired.containers import DesiredCluster, DesiredNode
from ceres_supervisor.model.backups import BackupStatus
from ceres_supervisor.model.observed import Observation


class Snapshotlike(Protocol):
    @property
    def desired(self) -> DesiredCluster: ...
    @property
    def observation(self) -> Observation | None: ...
    @property
    def plan(self) -> Plan | None: ...
    @property
    def records(self) -> dict[str, NodeRecord]: ...
    @property
    def engine_error(self) -> str | None: ...
    @property
    def cluster_state(self) -> str: ...
    @property
    def backup(self) -> BackupStatus: ...


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wall(mono: float | None, observation: Observation | None) -> str | None:
    """A monotonic instant as wall-clock time, anchored at the observation."""
    if mono is None or observation is None:
        return None
    return rfc3339(observation.wall + timedelta(seconds=mono - observation.at))


def _ports(node: DesiredNode) -> dict[str, int]:
    if node.role == "meta":
        return {k: node.ports[k] for k in ("client", "peer", "http")}
    return dict(node.ports)


def node_document(
    node: DesiredNode, plan: Plan | None, observation: Observation | None, record: NodeRecord, unobserved: str
) -> dict[str, Any]:
    view = plan.views.get(node.name) if plan else None
    container = observation.containers.get(node.name) if observation else None
    probe = observation.probes.get(node.name) if observation else None
    if probe is not None and container is not None and probe.run_id and probe.run_id != container.run_key:
        probe = None  # a result about a previous run of the container
    health = {
        "ok": probe.ok if probe else None,
        "detail": probe.detail if probe else None,
        "checked_at": rfc3339(probe.checked_at) if probe else None,
    }
    lease: dict[str, Any] | None = None
    if node.role == "ceresdb":
        status = view.lease if view else None
        if status is None:
            lease = {"held": None, "shards": [], "detail": "not judged" if view else None}
        else:
            lease = {"held": status.held, "shards": list(status.shards), "detail": status.detail}
    last_exit = record.last_exit
    running = container is not None and container.is_running
    return {
        "name": node.name,
        "role": node.role,
        "host": node.host,
        "ports": _ports(node),
        "container_id": container.id if container else None,
        "image": container.image if container else node.container.image,
        "state": str(view.state) if view else str(NodeState.PENDING),
        "reason": view.reason if view else unobserved,
        "health": health,
        "lease": lease,
        "restarts": record.restarts,
        "last_exit": None
        if last_exit is None
        else {"code": last_exit.code, "oom": last_exit.oom, "at": rfc3339(last_exit.at)},
        "next_restart_at": _wall(view.next_restart_at if view else None, observation),
        "started_at": rfc3339(container.started_at) if running and container else None,
    }


def document(snap: Snapshotlike, reload: tuple[bool, str | None, datetime | None]) -> dict[str, Any]:
    """The whole `/v1/status` document of one snapshot (before the first observation too: every
    node pending, with the reason, nothing claimed about containers)."""
    ok, error, at = reload
    observation, plan = snap.observation, snap.plan
    engine_error = snap.engine_error
    unobserved = "waiting for the Docker Engine (see engine.error)" if engine_error else "not observed yet"
    return {
        "cluster": {
            "name": snap.desired.spec.cluster.name,
            "state": snap.cluster_state,
            "spec_hash": snap.desired.spec_hash,
        },
        "reload": {"ok": ok, "error": error, "at": rfc3339(at)},
        "engine": {"ok": engine_error is None, "error": engine_error},
        "meta": {
            "ready": plan.meta_ready if plan else False,
            "detail": plan.meta_detail if plan else unobserved,
            "leader": observation.leader.member if observation and observation.leader else None,
        },
        "nodes": [
            node_document(n, plan, observation, snap.records.get(n.name, NodeRecord()), unobserved)
            for n in snap.desired.nodes
        ],
        "orphans": [{"name": o.name, "node": o.node, "container_id": o.id} for o in observation.orphans]
        if observation
        else [],
        "observed_at": rfc3339(observation.wall) if observation else None,
        "backup": snap.backup.document(),
    }
