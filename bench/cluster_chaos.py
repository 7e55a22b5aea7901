"""Several machines under chaos: zero stops by choice beyond the budget.

    .venv/bin/python bench/cluster_chaos.py [SECONDS] [SEED]        (default 600 s, seed from the clock)

The layout of bench/cluster.py: three supervisors with `--host 127.0.0.1/2/3` on one file, three
meta members and six CeresDB nodes, `max_unavailable = 1`. For SECONDS, every 3-8 s, one fault
among those possible at that moment:

- kill: SIGKILL of a container's main process (a crash);
- pause: `docker pause` (the node stops answering; only a stop by choice ends it);
- freeze: the stand-in's fault hook, a CeresDB node's etcd keep-alives (its shard locks lapse)
  or a meta member's HTTP;
- agent: SIGKILL of one supervisor; started again 2-10 s later (it adopts its containers).

At most one meta member is harmed at a time (a fault goes to meta only while all three run and
none is paused or frozen) and at most one agent is down: three members tolerate one failure, and
with two gone no design can restart them safely. CeresDB nodes get no such care.

Judged from Docker's own events, never from the supervisors' logs (testkit/dockerevents.py): a stop
by choice is a `kill` with SIGTERM; a node is down by choice from it to its next `start`.
- overlapping: the most nodes of a role down by choice at one moment (budget: 1 each);
- stopped beside a crash: stops by choice of a node while another node of its role had been not
  running (a `die`, no `start` yet) for more than 1 s, the time a decision takes to reach another
  agent (budget: none; a CeresDB node may be stopped beside nodes that are merely unhealthy, see
  README's disruption budget, and that is not visible in Docker's events).
Then every agent runs again, and the time is measured until every pause and freeze has been ended
and all three agents see the whole cluster healthy.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter

import cluster
import common
import docker
import docker.errors
from stats import summary

from testkit.dockerevents import DockerEvent, DockerEvents
from testkit.standins import kill_main_process

MAX_UNAVAILABLE = 1
DECISION_S = 1.0
RECOVERY_S = 600.0


def crashed_since(events: list[DockerEvent], node: str, at: float) -> float | None:
    """When `node`, not running at `at`, died by itself (its last `die` with no `start` after it, and
    no stop by choice since its last start); None when it was running or stopped by choice."""
    since_start = [e for e in events if e.node == node and e.at < at]
    starts = [i for i, e in enumerate(since_start) if e.action == "start"]
    tail = since_start[starts[-1] + 1:] if starts else since_start
    dies = [e for e in tail if e.action == "die"]
    chosen = [e for e in tail if e.action == "kill" and e.signal in ("15", "SIGTERM")]
    return dies[-1].at if dies and not chosen else None


def beside_crashes(recorded: DockerEvents) -> list[tuple[str, str]]:
    """(role, what) of each stop by choice made while another node of its role had been down by
    itself (crashed, not restarted yet) for more than DECISION_S."""
    found = []
    events = sorted(recorded.of(), key=lambda e: e.at)
    nodes = {(e.node, e.role) for e in events}
    for stop in recorded.chosen_stops():
        for other, role in sorted(nodes):
            if other == stop.node or role != stop.role:
                continue
            since = crashed_since(events, other, stop.at)
            if since is not None and stop.at - since > DECISION_S:
                found.append((role, f"{stop.node} stopped at {stop.at:.2f} while {other} had been down "
                                    f"{stop.at - since:.1f} s"))
    return found


def outcomes(recorded: DockerEvents, harms: list[tuple[float, str]]) -> tuple[Counter[str], list[float]]:
    """What ended each pause or freeze: a stop by choice (and after how long), a crash injected
    later, or nothing (yet)."""
    ended: Counter[str] = Counter()
    delays = []
    for at, container in harms:
        after = [e for e in recorded.of() if e.container == container and e.at > at and e.action in ("kill", "die")]
        if not after:
            ended["nothing"] += 1
        elif after[0].action == "kill" and after[0].signal in ("15", "SIGTERM"):
            ended["a stop by choice"] += 1
            delays.append(after[0].at - at)
        else:
            ended["a crash injected later"] += 1
    return ended, delays


class Chaos:
    def __init__(self, m: cluster.Machines, rng: random.Random) -> None:
        self.m = m
        self.rng = rng
        self.client = docker.from_env()
        self.faults: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        self.idle = 0
        """Steps with nothing the rules allow to harm."""
        self.frozen_meta: set[str] = set()
        self.agent_down: tuple[str, float] | None = None
        """(host, when to start it again)."""
        self.harms: list[tuple[float, str]] = []
        """(time.time(), container id) of each pause and freeze: what ended it is judged afterwards."""

    def containers(self) -> list[docker.models.containers.Container]:
        return self.client.containers.list(all=True, filters={"label": f"io.ceres-supervisor.cluster={self.m.name}"})

    def step(self) -> None:
        if self.agent_down is not None and time.monotonic() >= self.agent_down[1]:
            self.m.start_agent(self.agent_down[0])
            self.say(f"agent {self.agent_down[0]} started again")
            self.agent_down = None
        everything = self.containers()
        running = [c for c in everything if c.status == "running"]
        meta = [c for c in everything if c.labels.get("io.ceres-supervisor.role") == "meta"]
        self.frozen_meta &= {c.id for c in meta if c.status == "running"}  # a new start clears the hook
        meta_whole = len(meta) == 3 and all(c.status == "running" for c in meta) and not self.frozen_meta
        targets = [c for c in running if c.labels.get("io.ceres-supervisor.role") == "ceresdb" or meta_whole]
        kinds = ["kill", "pause", "freeze"] * bool(targets) + ["agent"] * (self.agent_down is None)
        if not kinds:  # nothing to harm that the rules allow: an agent is down, nothing else runs
            self.idle += 1
            self.say("idle: nothing to harm")
            return
        kind = self.rng.choices(kinds, weights=[{"kill": 4, "pause": 2, "freeze": 2, "agent": 1}[k] for k in kinds])[0]
        if kind == "agent":
            host = self.rng.choice(cluster.HOSTS)
            agent = self.m.agents[host]
            agent.process.kill()
            agent.process.wait(10)
            self.agent_down = (host, time.monotonic() + self.rng.uniform(2, 10))
            self.faults["agent"] += 1
            self.say(f"agent {host} killed")
            return
        target = self.rng.choice(targets)
        role = target.labels.get("io.ceres-supervisor.role")
        try:
            if kind == "kill":
                kill_main_process(target)
            elif kind == "pause":
                target.pause()
            else:
                hook = "freeze-lease" if role == "ceresdb" else "freeze-http"
                result = target.exec_run(["ceres-emulator-fault", hook])
                if result.exit_code != 0:
                    raise docker.errors.APIError(f"the fault hook failed: {result.output!r}")
        except (docker.errors.APIError, ProcessLookupError) as err:
            self.missed[kind] += 1  # it died or changed under us
            self.say(f"missed {kind} of {target.name}: {err}")
            return
        if kind != "kill":
            self.harms.append((time.time(), target.id[:12]))
            if role == "meta":
                self.frozen_meta.add(target.id)  # paused or frozen until its agent stops it
        self.faults[f"{kind} {role}"] += 1
        self.say(f"{kind} {target.name}")

    def say(self, what: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()
            time.sleep(self.rng.uniform(3, 8))
        if self.agent_down is not None:
            self.m.start_agent(self.agent_down[0])
            self.agent_down = None

    def close(self) -> None:
        self.client.close()


def main(seconds: int, seed: int) -> None:
    run = common.Run("cluster_chaos", [str(seconds), str(seed)])
    settings = common.changed_settings(cluster.SETTINGS)
    print(f"chaos seed {seed} (replay: bench/cluster_chaos.py {seconds} {seed})", flush=True)
    m = cluster.Machines()
    recovered_s: float | None = None
    stuck = ""
    try:
        m.start()
        m.wait_healthy()
        with DockerEvents(docker.from_env(), m.name) as recorded:
            chaos = Chaos(m, random.Random(seed))
            try:
                chaos.run(seconds)
            finally:
                chaos.close()
            ended = time.monotonic()
            try:
                # Healthy as the agents see it is not enough: a pause made just before the end is
                # not noticed yet. Every pause and freeze must have been ended (by a stop) first.
                common.wait_for(lambda: not outcomes(recorded, chaos.harms)[0]["nothing"] and m.healthy_everywhere(),
                                RECOVERY_S, "every pause and freeze ended, every agent seeing the cluster healthy",
                                0.25)
                recovered_s = time.monotonic() - ended
            except TimeoutError as err:
                left = outcomes(recorded, chaos.harms)[0]["nothing"]
                stuck = (f"{err}; pauses and freezes not ended: {left}; states: "
                         f"{[cluster.View(d.url).states() for d in m.agents.values()]}")
            recorded.check()
            overlap = {role: recorded.most_down_at_once(role)[0] for role in ("meta", "ceresdb")}
            stops = Counter(e.role for e in recorded.chosen_stops())
            crashes = Counter(e.role for e in recorded.of(actions=("die",)))
            beside = beside_crashes(recorded)
            ended, delays = outcomes(recorded, chaos.harms)
    finally:
        m.close()

    faults = ", ".join(f"{k} {v}" for k, v in sorted(chaos.faults.items()))
    missed = ", ".join(f"{k} {v}" for k, v in sorted(chaos.missed.items())) or "none"
    run.table(
        f"Several machines: {seconds} s of chaos, stops by choice against the budget (max_unavailable = 1)",
        ["role", "stops by choice", "containers died", "most down by choice at once", "stops beside a crash"],
        [[role, stops[role], crashes[role], overlap[role], sum(1 for r, _ in beside if r == role)]
         for role in ("meta", "ceresdb")],
        settings,
        f"Seed {seed}. Faults injected: {faults}; missed (the target died or changed under the step): {missed}; "
        f"idle steps (an agent down and nothing else allowed to harm): {chaos.idle}. "
        "Judged from Docker's events: a stop by choice is a `kill` with SIGTERM, down from it to the node's next "
        f"`start`; 'beside a crash': another node of the role not running for more than {DECISION_S:g} s at the "
        "stop (a death younger than that may not have reached the deciding agent). Pauses and freezes ended by: "
        + (", ".join(f"{k} {v}" for k, v in sorted(ended.items())) or "none injected")
        + (f" (the stop came {summary(delays)['median']:.1f} s after the fault, median; {max(delays):.1f} s at most)"
           if delays else "")
        + ". Recovery after the chaos: "
        + (f"every pause and freeze was ended and every agent saw the whole cluster healthy {recovered_s:.1f} s "
           "after the last fault."
           if recovered_s is not None else f"NOT within {RECOVERY_S:g} s: {stuck}")
        + ("" if not beside else " Stops beside a crash: " + "; ".join(what for _, what in beside)),
    )
    met = all(v <= MAX_UNAVAILABLE for v in overlap.values()) and not beside and recovered_s is not None
    run.target("cluster-chaos",
               f"{sum(stops.values())} stops by choice in {seconds} s ({sum(chaos.faults.values())} faults): "
               f"at most {max(overlap.values())} node(s) of a role down by choice at once, {len(beside)} beside "
               "a crash; " + (f"healthy {recovered_s:.0f} s after" if recovered_s is not None else "not recovered"),
               met, settings)
    run.save()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600,
         int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time()))
