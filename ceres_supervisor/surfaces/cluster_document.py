"""The `/v1/cluster` document (README, Several machines): the whole cluster from any machine. Pure.

Every node of the file appears once: this agent's own as it sees them now, the others as their
agents published them (plus `agent`), and a node that no live agent publishes as `unknown`, with
the supervisor that ran it and since when it has been gone. Agents that left are listed `down`.
A record that does not parse is listed under `coordination.unreadable`, never trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ceres_supervisor.cluster.view import StoreView
from ceres_supervisor.desired.containers import DesiredCluster


def _unknown(node: Any, reason: str) -> dict[str, Any]:
    return {
        "name": node.name,
        "role": node.role,
        "host": node.host,
        "state": "unknown",
        "reason": reason,
        "health": {"ok": None, "detail": None, "checked_at": None},
        "lease": None if node.role == "meta" else {"held": None, "shards": [], "detail": None},
        "restarts": None,
        "last_exit": None,
        "next_restart_at": None,
        "started_at": None,
        "container_id": None,
        "image": node.container.image,
        "ports": dict(node.ports),
    }


def _state(nodes: list[dict[str, Any]], agents: list[dict[str, Any]]) -> str:
    states = [str(n.get("state")) for n in nodes]
    if all(s == "healthy" for s in states) and all(a["state"] == "up" for a in agents):
        return "healthy"
    if "unknown" in states:
        return "unknown"
    if any(s in ("unhealthy", "lease_lost", "backoff", "crashloop", "paused") for s in states):
        return "degraded"
    if states and all(s == "stopped" for s in states):
        return "stopped"
    return "starting"


def document(
    desired: DesiredCluster,
    agent: str,
    local: Mapping[str, dict[str, Any]],
    store: StoreView,
    coordination: dict[str, Any],
    leader: str | None,
) -> dict[str, Any]:
    """`local`: this agent's nodes as /v1/status shows them now; `coordination`: {ok, detail,
    endpoint, revision, age_s} (the view's revision and how long ago the store confirmed it)."""
    reachable = bool(coordination.get("ok"))
    nodes = []
    for node in desired.nodes:
        if node.name in local:
            nodes.append({**local[node.name], "agent": agent})
            continue
        published = store.nodes.get(node.name) if reachable else None
        runner = store.agent_of(node.name)
        if published is not None and runner is not None:
            nodes.append({**published, "agent": runner})
            continue
        gone = next(((h, at) for h, (rec, at) in store.departed.items() if node.name in rec.nodes), None)
        if not reachable:
            reason = "coordination unavailable: the store cannot be read"
        elif gone is not None:
            reason = f"supervisor on {gone[0]} down since {gone[1]}"
        elif runner is not None:
            reason = f"supervisor on {runner} has not published it yet"
        else:
            reason = f"no supervisor publishes it (its host is {node.host})"
        nodes.append({**_unknown(node, reason), "agent": gone[0] if gone else runner})
    agents: list[dict[str, Any]] = [
        {
            "host": host,
            "state": "up",
            "heartbeat_at": rec.heartbeat_at,
            "listen": rec.listen,
            "advertise": rec.url,
            "since": None,
        }
        for host, rec in sorted(store.agents.items())
    ]
    agents += [
        {
            "host": host,
            "state": "down",
            "heartbeat_at": rec.heartbeat_at,
            "listen": rec.listen,
            "advertise": rec.url,
            "since": at,
        }
        for host, (rec, at) in sorted(store.departed.items())
    ]
    if not any(a["host"] == agent for a in agents):
        agents.insert(
            0,
            {
                "host": agent,
                "state": "up",
                "heartbeat_at": None,
                "listen": None,
                "advertise": None,
                "since": None,
            },
        )
    # Every machine of the file has an agent row, also one never seen since this agent started.
    known = {n for rec in store.agents.values() for n in rec.nodes}
    known |= {n for rec, _at in store.departed.values() for n in rec.nodes} | set(local)
    for host in sorted({n.host for n in desired.nodes if n.name not in known}):
        if not any(a["host"] == host for a in agents):
            agents.append(
                {
                    "host": host,
                    "state": "down",
                    "heartbeat_at": None,
                    "listen": None,
                    "advertise": None,
                    "since": None,
                }
            )
    spec_hashes = {host: rec.spec_hash for host, rec in sorted(store.agents.items())}
    spec_hashes.setdefault(agent, desired.spec_hash)
    return {
        "cluster": {
            "name": desired.spec.cluster.name,
            "state": _state(nodes, agents) if reachable else "unknown",
            "spec_hashes": spec_hashes,
            "spec_agrees": len(set(spec_hashes.values())) <= 1,
        },
        "coordination": {
            **coordination,
            "unreadable": [{"key": k, "why": why} for k, why in sorted(store.malformed.items())],
        },
        "meta": {"leader": leader, "members": [m.name for m in desired.meta]},
        "agents": agents,
        "nodes": nodes,
        "disruptions": [{"node": n, **slot} for n, slot in sorted(store.slots.items())],
        "paused": {"all": bool(store.all_paused), "nodes": sorted(store.paused)},
    }
