"""The command line of upgrades: what `plan` says of one, and `ceres-supervisor upgrade status`.

`plan` shows an upgrade's steps in order (which nodes, one at a time or all together, why, the
expected downtime of meta), whether this machine has the target images, and how to go back; it
refuses a pair the table refuses (exit 2), naming the reason. The release each container runs
comes from this machine's containers and, for another machine's nodes, from a daemon of the
cluster when one answers (`GET /v1/upgrade`). `upgrade status` prints that document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ceres_supervisor.adapters.engine import Engine
from ceres_supervisor.cli import client, exits
from ceres_supervisor.decisions import upgrades as decide
from ceres_supervisor.decisions.gate import down_reason
from ceres_supervisor.decisions.planning import Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.model.versions import parse_release


def assess(
    desired: DesiredCluster, observation: Observation, result: Plan, remote: Mapping[str, str] | None
) -> decide.Upgrade:
    """The upgrade as `plan` sees it: this machine's containers, another machine's nodes as a daemon
    of the cluster says they run (unknown when none answers)."""
    members = []
    for node in desired.nodes:
        if node.is_local:
            c = observation.containers.get(node.name)
            view = result.views.get(node.name)
            down = view is None or down_reason(view) is not None
            members.append(
                decide.Member(node.name, node.role, parse_release(c.release) if c else None, True, down)
            )
        elif remote is not None and node.name in remote:
            members.append(decide.Member(node.name, node.role, parse_release(remote[node.name]), True, False))
        else:
            members.append(decide.Member(node.name, node.role, None, False, False))
    leader = observation.leader.member if observation.leader else None
    return decide.assess(desired.spec.release, members, leader)


def document(upgrade: decide.Upgrade) -> dict[str, Any]:
    """The upgrade part of `plan --json`."""
    return {
        "pending": upgrade.pending,
        "from": [s.label() for s in upgrade.sources],
        "target": upgrade.target.label(),
        "refused": upgrade.refused,
        "steps": [
            {"nodes": list(s.nodes), "role": s.role, "together": s.together, "why": s.why}
            for s in upgrade.steps
        ],
        "done": list(upgrade.done),
        "unknown": list(upgrade.unknown),
        "meta_downtime": upgrade.meta_downtime,
        "going_back": decide.going_back(upgrade) if upgrade.pending else None,
    }


def remote_releases(document: object) -> dict[str, str] | None:
    """node -> release from a daemon's `GET /v1/upgrade`, or None when it is not that document."""
    upgrade = document.get("upgrade") if isinstance(document, dict) else None
    nodes = upgrade.get("nodes") if isinstance(upgrade, dict) else None
    if not isinstance(nodes, list):
        return None
    return {
        str(n.get("name")): str(n.get("release") or "")
        for n in nodes
        if isinstance(n, dict) and isinstance(n.get("name"), str)
    }


async def missing_images(desired: DesiredCluster, docker_url: str | None) -> list[str]:
    """The images of this machine's nodes that its Docker Engine lacks."""
    engine = Engine(desired.spec.cluster.name, base_url=docker_url)
    try:
        wanted = sorted({n.container.image for n in desired.nodes if n.is_local})
        found = await asyncio.gather(*(engine.image_exists(image) for image in wanted))
        return [image for image, present in zip(wanted, found, strict=True) if not present]
    finally:
        engine.close()


def print_plan(
    upgrade: decide.Upgrade,
    missing: list[str] | None,
    start_timeout_s: float,
    out: Callable[[str], None] = print,
) -> int:
    """The upgrade part of `plan`; the exit code (2 when the pair is refused)."""
    if upgrade.unknown and not upgrade.pending:
        out(f"upgrade: cannot tell what {', '.join(upgrade.unknown)} run (no daemon of the cluster answers)")
    if not upgrade.pending:
        return exits.OK
    sources = " / ".join(s.label() for s in upgrade.sources)
    if upgrade.refused is not None:
        print(f"error: cluster.version: upgrade refused: {upgrade.refused}", file=sys.stderr)
        return exits.INVALID
    out(f"upgrade {sources} -> {upgrade.target.label()}, in {len(upgrade.steps)} steps, in this order:")
    width = max(len(", ".join(s.nodes)) for s in upgrade.steps)
    for i, step in enumerate(upgrade.steps, 1):
        how = "all together " if step.together else "one at a time"
        out(f"  {i}. {', '.join(step.nodes).ljust(width)}  {step.role.ljust(7)}  {how}  {step.why}")
    if upgrade.done:
        out(f"  already at {upgrade.target.label()}: {', '.join(upgrade.done)}")
    if upgrade.unknown:
        out(f"  not known here (no daemon of the cluster answers): {', '.join(upgrade.unknown)}")
    out(f"meta downtime: {upgrade.meta_downtime}")
    if missing is None:
        out("images: this machine's Docker Engine could not be asked")
    elif missing:
        lacks = ", ".join(missing)
        out(f"images: this machine lacks {lacks}: nothing stops anywhere until every machine has them")
    else:
        out("images: this machine has them; nothing stops until every machine has said so")
    out(
        "each CeresDB node is flushed before its stop; a node not healthy within start_timeout "
        f"({start_timeout_s:g}s) halts the upgrade there, nothing rolled back"
    )
    back = decide.going_back(upgrade)
    if back:
        out(f"going back: {back}")
    return exits.OK


# --- `ceres-supervisor upgrade status` -------------------------------------------------------------


def status_text(doc: dict[str, Any]) -> str:
    up = doc.get("upgrade")
    if not isinstance(up, dict):
        return f"upgrade: {doc.get('detail') or 'nothing known yet'}"
    sources = " / ".join(up.get("from") or []) or "-"
    lines = [f"upgrade {sources} -> {up.get('target')}: {up.get('state')}"]
    nodes = [n for n in up.get("nodes") or [] if isinstance(n, dict)]
    done = [str(n.get("name")) for n in nodes if n.get("done")]
    lines.append(f"done: {', '.join(done) or 'none'} ({len(done)} of {len(nodes)} nodes)")
    for key, label in (("refused", "refused"), ("halted", "halted"), ("going_back", "going back")):
        if up.get(key):
            lines.append(f"{label}: {up[key]}")
    steps = [s for s in up.get("steps") or [] if isinstance(s, dict)]
    if steps and up.get("state") not in ("refused",):
        step = steps[0]
        how = "all together" if step.get("together") else "one at a time"
        nodes_ = ", ".join(step.get("nodes") or [])
        lines.append(f"next: {nodes_} ({step.get('role')}, {how}), then {len(steps) - 1} more")
    preflight = up.get("preflight") or {}
    if not preflight.get("ok"):
        lines.append(f"preflight: {preflight.get('detail')}")
    op = up.get("operation") or up.get("claim")
    if isinstance(op, dict) and op.get("id"):
        where = f" on {op['host']}" if op.get("host") else ""
        lines.append(
            f"operation {op.get('id')}{where}"
            + (f" (GET /v1/operations/{op.get('id')})" if not where else "")
        )
    if up.get("note") and up.get("state") in ("waiting", "running"):
        lines.append(f"now: {up['note']}")
    lines.append("NODE  RELEASE  DONE")
    lines += [
        f"{n.get('name')}  {n.get('release') or '-'}  {'yes' if n.get('done') else 'no'}" for n in nodes
    ]
    return "\n".join(lines)


def exit_code(doc: dict[str, Any]) -> int:
    """0 nothing pending or done, 75 under way or waiting (not failed), 1 halted or refused."""
    up = doc.get("upgrade")
    state = up.get("state") if isinstance(up, dict) else None
    if state in ("halted", "refused"):
        return exits.NOT_OK
    return exits.RUNNING if state in ("running", "waiting") else exits.OK


def status(args: argparse.Namespace) -> int:
    """`ceres-supervisor upgrade status`: the upgrade as the daemon sees it."""
    ep = client.endpoint(args.url, args.socket, args.config, args.token_file)
    code, answer = asyncio.run(client.call(ep, "GET", "/v1/upgrade"))
    doc = client.expect(code, answer, ep)
    print(json.dumps(doc, indent=2) if args.json else status_text(doc))
    return exit_code(doc)
