"""What the on-call surfaces (metrics, the inspect routes, the page) read of the cluster layer, in
one place: the URL another agent answers at, whether the store and Docker can be observed, which
agents are up, and the `/v1/cluster` document of a snapshot. Pure.

The cluster layer changes under these (an `advertise` URL in the agents' records, freshness of the
store view); each fact is read here and nowhere else, so following such a change is one edit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from ceres_supervisor.cluster.view import AgentRecord, StoreView
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.addresses import parse_listen
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.surfaces import cluster_document, reports
from ceres_supervisor.surfaces.snapshot import Coordination


class Snapshotlike(Protocol):
    @property
    def desired(self) -> DesiredCluster: ...
    @property
    def agent(self) -> str: ...
    @property
    def observation(self) -> Observation | None: ...
    @property
    def plan(self) -> Plan | None: ...
    @property
    def records(self) -> dict[str, NodeRecord]: ...
    @property
    def engine_error(self) -> str | None: ...
    @property
    def store(self) -> StoreView: ...
    @property
    def coordination(self) -> Coordination: ...


def agent_url(record: AgentRecord) -> str | None:
    """The base URL other machines reach this agent's API at: the URL it advertises, else its
    listen address (a wildcard one at the agent's host); None on a unix socket (nobody else can)."""
    if record.advertise.startswith(("http://", "https://")):  # what the agent says (run --advertise)
        return record.advertise.rstrip("/")
    try:
        listen = parse_listen(record.listen)
    except ValueError:
        return None
    if listen.unix_path is not None or listen.port is None:
        return None
    host = record.host if listen.host in (None, "", "0.0.0.0", "::") else listen.host
    host = f"[{host}]" if host and ":" in host else host
    return f"http://{host}:{listen.port}"


def store_reachable(snap: Snapshotlike) -> bool:
    """The coordination store answers, and its view may be trusted."""
    return snap.coordination.ok


def engine_reachable(snap: Snapshotlike) -> bool:
    """The last cycle observed this machine's Docker Engine."""
    return snap.engine_error is None


def live_agents(snap: Snapshotlike) -> Mapping[str, AgentRecord]:
    """host -> record of every agent up in the store (empty while the store cannot be read)."""
    return snap.store.agents if store_reachable(snap) else {}


def hosts_up(snap: Snapshotlike) -> dict[str, bool]:
    """Every host of the file: is a supervisor up for it? A host is covered by a live agent named
    after it, or by one that runs a node on it (one agent may run several addresses of a machine).
    While the store cannot be read nobody can tell about the others: only this agent's hosts."""
    desired = snap.desired
    live = live_agents(snap)
    covered = {snap.agent} | {n.host for n in desired.nodes if n.is_local} | set(live)
    for record in live.values():
        covered |= {node.host for name in record.nodes if (node := desired.node(name)) is not None}
    hosts = sorted({n.host for n in desired.nodes})
    if not store_reachable(snap):
        return {host: True for host in hosts if host in covered}
    return {host: host in covered for host in hosts}


def departed(snap: Snapshotlike) -> Mapping[str, str]:
    """host -> since when, of the agents this one saw leave the store (and not come back)."""
    return {host: at for host, (_record, at) in snap.store.departed.items()} if store_reachable(snap) else {}


def owner(snap: Snapshotlike, node: str) -> str | None:
    """The host of the live agent that runs `node` (this agent's own name for its own nodes)."""
    target = snap.desired.node(node)
    if target is not None and target.is_local:
        return snap.agent
    return snap.store.agent_of(node) if store_reachable(snap) else None


def cluster(snap: Snapshotlike) -> dict[str, Any]:
    """The `/v1/cluster` document of this snapshot."""
    local: dict[str, dict[str, Any]] = {}
    if snap.plan is not None and snap.observation is not None:
        local = dict(reports.local_documents(snap.desired, snap.plan, snap.observation, snap.records))
    c = snap.coordination
    observation = snap.observation
    leader = observation.leader.member if observation and observation.leader else None
    age_s = None if c.confirmed_at is None else round(time.monotonic() - c.confirmed_at, 3)
    return cluster_document.document(
        snap.desired,
        snap.agent,
        local,
        snap.store,
        {
            "ok": c.ok,
            "detail": c.detail,
            "endpoint": c.endpoint,
            "revision": c.revision,
            "watch": c.watch,
            "age_s": age_s,
        },
        leader,
    )
