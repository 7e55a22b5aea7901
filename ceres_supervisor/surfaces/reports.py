"""What one reconcile cycle reports besides its actions. Pure.

The line systemd shows, the documents this agent publishes for its nodes, the nodes whose
container runs an outdated spec, and the operator's pauses merged from the file on disk and the
store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ceres_supervisor.decisions.planning import FAILING, Controls, NodeRecord, NodeState, Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import Observation, ObservedContainer
from ceres_supervisor.surfaces import status_document


def status_line(plan: Plan | None, engine_error: str | None, reload_error: str | None) -> str:
    """STATUS= for systemd: `healthy: 3/3 nodes healthy`, with what is wrong when not."""
    if plan is None or engine_error is not None:
        text = f"unknown: docker engine unavailable: {engine_error}"
    else:
        local = [(n, v) for n, v in plan.views.items() if v.state is not NodeState.REMOTE]
        healthy = sum(1 for _n, v in local if v.state is NodeState.HEALTHY)
        text = f"{plan.cluster_state}: {healthy}/{len(local)} nodes healthy"
        trouble = [f"{n} {v.state}" for n, v in local if v.state in FAILING]
        if trouble:
            text += "; " + ", ".join(trouble)
    if reload_error:
        text += "; reload failed: " + reload_error.splitlines()[-1].strip()
    return text


def local_documents(
    desired: DesiredCluster, plan: Plan, observation: Observation, records: Mapping[str, NodeRecord]
) -> dict[str, dict[str, Any]]:
    """This supervisor's nodes as `/v1/status` shows them, plus whether this agent counts each one
    as serving (`available`, what the other agents' budgets read): what it publishes for the others."""
    docs = {}
    for n in desired.nodes:
        if n.is_local:
            doc = status_document.node_document(n, plan, observation, records.get(n.name, NodeRecord()), "")
            view = plan.views.get(n.name)
            doc["available"] = view.available if view else False
            docs[n.name] = doc
    return docs


def unknown_documents(
    desired: DesiredCluster, last: Mapping[str, Mapping[str, Any]], why: str
) -> dict[str, dict[str, Any]]:
    """This supervisor's nodes when Docker cannot be observed: `unknown`, with why, keeping what
    was last known of each (its container, its restarts) for the operator."""
    docs = {}
    for n in desired.nodes:
        if not n.is_local:
            continue
        doc = dict(last.get(n.name) or status_document.node_document(n, None, None, NodeRecord(), why))
        doc.update(state="unknown", reason=why, health={"ok": None, "detail": why, "checked_at": None})
        if doc.get("lease") is not None:
            doc["lease"] = {"held": None, "shards": [], "detail": why}
        docs[n.name] = doc
    return docs


def outdated(desired: DesiredCluster, containers: Mapping[str, ObservedContainer]) -> tuple[str, ...]:
    """This supervisor's nodes whose container runs another spec than the file's."""
    return tuple(
        n.name
        for n in desired.nodes
        if n.is_local and (c := containers.get(n.name)) is not None and c.spec_hash != n.spec_hash
    )


def controls(
    file_paused: frozenset[str], file_all: bool, store_paused: frozenset[str], store_all: bool
) -> Controls:
    """A pause holds when either place has it: the store (every machine) or the local file
    (it survives a store outage and a restart of this supervisor)."""
    return Controls(file_paused | store_paused, file_all or store_all)
