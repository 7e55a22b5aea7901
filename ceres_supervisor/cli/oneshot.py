"""The commands that look once: where this machine stands in the file, and what `run` would do.

`plan_once` assembles a `Supervisor` without running it and calls the same observation and
planning code as the daemon's cycle: it reads Docker, the meta members, the leader and the shard
locks once, and changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp

from ceres_supervisor.adapters.engine import EngineError
from ceres_supervisor.daemon.app import Supervisor
from ceres_supervisor.decisions import planning, upgrades
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.desired import loading, locality
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.model.spec import nodes as spec_nodes
from ceres_supervisor.observation import probes
from ceres_supervisor.observation.observer import Inflight, with_run
from ceres_supervisor.observation.prober import Prober


async def decide_locality(loaded: loading.Loaded, host: str | None) -> locality.Locality:
    hosts = [n.host for n in spec_nodes(loaded.spec)]
    return await asyncio.to_thread(locality.decide, hosts, locality.Locality(host))


async def plan_once(
    loaded: loading.Loaded, place: locality.Locality, docker_url: str | None = None
) -> tuple[DesiredCluster, Observation, Plan]:
    """What `run` (or a reload of this file) would do now, without doing it: observe once, plan once."""
    supervisor = Supervisor(loaded, place, docker_url=docker_url)
    settings = supervisor.loop.probe_settings()
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            containers = {c.node: c for c in await supervisor.observer.containers()}
            # Meta as it runs: in the middle of an upgrade, another release's health route and leader key.
            paths, leader_key = upgrades.probed_as(
                loaded.spec.release,
                {name: c.release for name, c in containers.items()},
                [m.name for m in supervisor.desired.meta],
            )
            settings = replace(settings, health_paths=paths, leader_key=leader_key.encode())
            prober = Prober(session, settings, lambda: None)
            prober.nodes = {n.name: n for n in supervisor.desired.nodes}
            meta = supervisor.desired.meta
            answers = await asyncio.gather(
                *(
                    probes.probe_member(session, n, settings.health_path_of(n.name), settings.timeout_s)
                    for n in meta
                )
            )
            prober.meta = {
                n.name: with_run(a, containers.get(n.name)) for n, a in zip(meta, answers, strict=True)
            }
            prober.probes.update({name: member.alive for name, member in prober.meta.items()})
            prober.leader = await probes.read_leader(
                session, prober.members(), settings.leader_key, settings.cluster, settings.timeout_s
            )
            running = [
                (node, c)
                for node in supervisor.desired.ceresdb
                if node.is_local and (c := containers.get(node.name)) is not None and c.is_running
            ]
            answered = await asyncio.gather(  # at once: a hung node costs one timeout, not one each
                *(
                    probes.probe_ceresdb(session, node, settings.timeout_s, c.run_key, settings.shards_route)
                    for node, c in running
                )
            )
            prober.probes.update({node.name: a for (node, _), a in zip(running, answered, strict=True)})
            chief = prober.nodes.get(prober.leader.member or "")
            prober.leases = await probes.read_leases(
                session, prober.members(), chief, settings.root, settings.cluster, settings.timeout_s
            )
            observation = await supervisor.observer.observe(supervisor.desired, prober, Inflight({}, {}))
            if observation.engine_error is not None:
                raise EngineError(observation.engine_error)
            budget = planning.Budget(supervisor.spec.supervisor.max_unavailable)
            policy = supervisor.setting.policy

            def once(records: dict[str, NodeRecord]) -> Plan:
                return planning.plan(
                    supervisor.desired, observation, records, observation.at, lambda: 0.0, policy, budget
                )

            # Twice: the first pass sees every node for the first time (never healthy yet); the
            # second judges them as a running daemon that had seen this observation would.
            return supervisor.desired, observation, once(once({}).records)
    finally:
        supervisor.engine.close()
