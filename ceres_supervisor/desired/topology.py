"""What a static-topology cluster must keep: its CeresDB nodes and their `host:grpc_port` identities.

CeresMeta freezes the node count into the cluster at first start and binds shards to each node's
endpoint for good, so once meta has been ready the supervisor records the CeresDB nodes in
`<state_dir>/topology.json`; a start or reload that changes them is refused with a key path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from ceres_supervisor.desired import files
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.errors import Problem
from ceres_supervisor.model.spec import DesiredState

TOPOLOGY_FILE: Final = "topology.json"


def problem(spec: DesiredState) -> Problem | None:
    """A static-topology cluster keeps the CeresDB nodes it started with: CeresMeta froze their
    count at first start, and binds shards to each node's identity, `host:grpc_port`."""
    path = Path(spec.cluster.state_dir) / TOPOLOGY_FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return Problem("cluster.state_dir", f"{path} cannot be read ({err}); move it away to start afresh")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("ceresdb_nodes", []), list):
        return Problem("cluster.state_dir", f"{path} is not a record this supervisor wrote; move it away")
    if spec.meta.topology != "static" or recorded.get("topology") != "static":
        return None
    before = sorted(recorded.get("ceresdb_nodes", []))
    names = sorted(n.name for n in spec.ceresdb.nodes)
    if before != names:
        return Problem(
            "ceresdb.nodes",
            (
                f"this static-topology cluster started with CeresDB nodes {', '.join(before)}; CeresMeta "
                f"froze that count at first start, so the set cannot change to {', '.join(names) or 'none'}"
            ),
        )
    endpoints = recorded.get("endpoints") or {}
    for i, node in enumerate(spec.ceresdb.nodes):
        was, now = endpoints.get(node.name), f"{node.host}:{node.grpc_port}"
        if was is not None and was != now:
            return Problem(
                f"ceresdb.nodes[{i}]",
                (
                    f"{node.name} is {was} in CeresMeta (host:grpc_port); in static topology a node keeps "
                    f"that identity, else its shards are orphaned (it would come back as {now})"
                ),
            )
    return None


def remember(spec: DesiredState, desired: DesiredCluster) -> None:
    """Record the CeresDB nodes the first time meta is ready (never rewritten afterwards)."""
    path = Path(spec.cluster.state_dir) / TOPOLOGY_FILE
    if path.exists():
        return
    record = {
        "topology": spec.meta.topology,
        "ceresdb_nodes": sorted(n.name for n in desired.ceresdb),
        "endpoints": {n.name: n.endpoint for n in desired.ceresdb},
    }
    files.write_atomic(path, json.dumps(record).encode(), files.PLAIN_MODE)
