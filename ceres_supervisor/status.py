"""The `/v1/status` document (SPEC section 5), built from one snapshot. Pure.

Every field is present; a field with no value is null. Times are RFC 3339 strings. No config
value appears here, so no secret can.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from .desired import DesiredNode
from .observed import Observation
from .planning import NodeRecord, NodeState, Plan


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wall(mono: float | None, observation: Observation) -> str | None:
    """A monotonic instant as wall-clock time, anchored at the observation."""
    if mono is None:
        return None
    return rfc3339(observation.wall + timedelta(seconds=mono - observation.at))


def _ports(node: DesiredNode) -> dict[str, int]:
    if node.role == "meta":
        return {k: node.ports[k] for k in ("client", "peer", "http")}
    return dict(node.ports)


def node_document(
    node: DesiredNode, plan: Plan, observation: Observation, record: NodeRecord
) -> dict[str, Any]:
    view = plan.views.get(node.name)
    container = observation.containers.get(node.name)
    probe = observation.probes.get(node.name)
    if probe is not None and container is not None and probe.run_id and probe.run_id != container.run_key:
        probe = None  # a result about a previous run of the container
    health = {
        "ok": probe.ok if probe else None,
        "detail": probe.detail if probe else None,
        "checked_at": rfc3339(probe.checked_at) if probe else None,
    }
    lease: dict[str, Any] | None = None
    if node.role == "ceresdb":
        leases = observation.leases
        if leases is None:
            lease = {"held": None, "shards": [], "detail": "not read yet"}
        else:
            held, shards, detail = leases.held(node.endpoint)
            lease = {"held": held, "shards": list(shards), "detail": detail}
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
        "reason": view.reason if view else None,
        "health": health,
        "lease": lease,
        "restarts": record.restarts,
        "last_exit": None
        if last_exit is None
        else {
            "code": last_exit.code,
            "oom": last_exit.oom,
            "at": rfc3339(last_exit.at),
        },
        "next_restart_at": _wall(view.next_restart_at if view else None, observation),
        "started_at": rfc3339(container.started_at) if running and container else None,
    }


def document(
    cluster_name: str,
    spec_hash: str,
    nodes: tuple[DesiredNode, ...],
    plan: Plan,
    observation: Observation,
    records: dict[str, NodeRecord],
    reload: tuple[bool, str | None, datetime | None],
    engine_error: str | None,
) -> dict[str, Any]:
    ok, error, at = reload
    return {
        "cluster": {"name": cluster_name, "state": str(plan.cluster_state), "spec_hash": spec_hash},
        "reload": {"ok": ok, "error": error, "at": rfc3339(at)},
        "engine": {"ok": engine_error is None, "error": engine_error},
        "meta": {"ready": plan.meta_ready, "detail": plan.meta_detail},
        "nodes": [node_document(n, plan, observation, records.get(n.name, NodeRecord())) for n in nodes],
        "orphans": [{"name": o.name, "node": o.node, "container_id": o.id} for o in observation.orphans],
        "observed_at": rfc3339(observation.wall),
    }


def unobserved_document(
    cluster_name: str,
    spec_hash: str,
    nodes: tuple[DesiredNode, ...],
    reload: tuple[bool, str | None, datetime | None],
    engine_error: str | None,
) -> dict[str, Any]:
    """Before the first observation (e.g. Docker not answering at start): the same shape, every
    node pending with the reason, nothing claimed about containers."""
    ok, error, at = reload
    reason = "waiting for the Docker Engine (see engine.error)" if engine_error else "not observed yet"
    return {
        "cluster": {"name": cluster_name, "state": "starting", "spec_hash": spec_hash},
        "reload": {"ok": ok, "error": error, "at": rfc3339(at)},
        "engine": {"ok": engine_error is None, "error": engine_error},
        "meta": {"ready": False, "detail": reason},
        "nodes": [
            {
                "name": n.name,
                "role": n.role,
                "host": n.host,
                "ports": _ports(n),
                "container_id": None,
                "image": n.container.image,
                "state": str(NodeState.PENDING),
                "reason": reason,
                "health": {"ok": None, "detail": None, "checked_at": None},
                "lease": None if n.role == "meta" else {"held": None, "shards": [], "detail": None},
                "restarts": 0,
                "last_exit": None,
                "next_restart_at": None,
                "started_at": None,
            }
            for n in nodes
        ],
        "orphans": [],
        "observed_at": None,
    }
