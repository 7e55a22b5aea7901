"""Reading a changed desired-state file for a running daemon (SIGHUP, `POST /v1/reload`).

`prepare` reads and validates the file, refuses what a running daemon cannot change (each would
start nodes on other data or under other names), decides the locality of hosts it has not seen
before and builds the new desired cluster. It changes nothing: the daemon swaps one reference when
it returns, and keeps its last good state when it raises. File and DNS work runs in threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from ceres_supervisor.decisions import upgrades
from ceres_supervisor.desired import containers as desired_mod
from ceres_supervisor.desired import loading, locality, secrets, topology
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model import versions
from ceres_supervisor.model.errors import DesiredStateError, Problem
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.model.spec import nodes as spec_nodes


@dataclass(frozen=True)
class Reloaded:
    loaded: loading.Loaded
    desired: DesiredCluster
    place: locality.Locality


def static_problems(
    running: DesiredState, new: DesiredState, sources: Iterable[versions.Release] = ()
) -> list[Problem]:
    """What a running daemon cannot change, each with its key path. `sources`: the releases the
    containers run (an upgrade goes from each of them to the new file's: the pair table decides;
    from CeresDB 1.2.7 to HoraeDB 2.0.0 the flavor changes, keeping the 1.x data)."""
    problems = []
    problem = topology.problem(new)
    if problem is not None:
        problems.append(problem)
    refused = next(
        (v.refused for s in (running.release, *sources) if (v := upgrades.pair(s, new.release)).refused), None
    )
    if running.cluster.flavor != new.cluster.flavor and refused is not None:
        problems.append(
            Problem(
                "cluster.flavor",
                f"cannot change from {running.cluster.flavor!r} to {new.cluster.flavor!r}: {refused}",
            )
        )
    elif refused is not None:
        problems.append(Problem("cluster.version", f"cannot upgrade: {refused}"))
    if running.cluster.flavor == new.cluster.flavor == "horaedb" and (
        running.cluster.keep_ceresdb_data != new.cluster.keep_ceresdb_data
    ):
        problems.append(
            Problem(
                "cluster.keep_ceresdb_data",
                "cannot change while the cluster runs: its nodes would start on another etcd root "
                f"({running.release.root_path} -> {new.release.root_path}) and catalog: other data",
            )
        )
    for key, old, now in (
        ("cluster.name", running.cluster.name, new.cluster.name),
        ("cluster.state_dir", running.cluster.state_dir, new.cluster.state_dir),
    ):
        if old != now:
            problems.append(
                Problem(
                    key,
                    f"cannot change from {old!r} to {now!r} while the supervisor runs (nodes would start on "
                    "other data); stop the daemon, move the data, start it again",
                )
            )
    members = [(m.name, m.host, m.client_port, m.peer_port) for m in running.meta.nodes]
    changed = [(m.name, m.host, m.client_port, m.peer_port) for m in new.meta.nodes]
    if members != changed:
        problems.append(
            Problem(
                "meta.nodes",
                "cannot change the meta members (names, hosts, client or peer ports) of a running cluster: "
                "CeresMeta's embedded etcd keeps its member list, and changing it is a runtime "
                "reconfiguration of etcd this supervisor does not do; put the file back "
                f"({', '.join(f'{n}@{h}:{c}/{pp}' for n, h, c, pp in members)})",
            )
        )
    return problems


async def prepare(
    path: str, running: DesiredState, place: locality.Locality, sources: Iterable[versions.Release] = ()
) -> Reloaded:
    """Raises DesiredStateError, SecretError or LocalityError; touches nothing."""
    loaded = await asyncio.to_thread(loading.load, path)
    problems = static_problems(running, loaded.spec, sources)
    if problems:
        raise DesiredStateError(loaded.source, problems)
    hosts = [n.host for n in spec_nodes(loaded.spec)]
    new_place = await asyncio.to_thread(locality.decide, hosts, place)
    desired = await asyncio.to_thread(desired_mod.build, loaded.spec, secrets.resolve, new_place.is_local)
    return Reloaded(loaded, desired, new_place)
